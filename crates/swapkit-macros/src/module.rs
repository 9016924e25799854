//! `#[patchable]` on an inline module: every function and impl block in it becomes patchable,
//! as Go's runtime patching works on any function with no change to it.
//!
//! An item that cannot have a patch slot (generic, `const`, `impl Trait`, `self` by value, ...)
//! is left as it is, and a note saying why goes into the registry
//! (`swapkit::patch::skipped()`), unless the item carries its own `#[patchable]`: then it is
//! the compile error it would be alone. `#[patchable(skip)]` leaves one item out. Default
//! methods of a trait defined in the same module are copied into the module's impls of that
//! trait that do not override them, and patched there.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::{ImplItem, ImplItemFn, Item, ItemMod, TraitItem, TraitItemFn};

use crate::patchable::{free_fn, impl_block, naming, own_attr, take_own_attr, Fun, Skipped};

pub fn expand(krate: &TokenStream, mut module: ItemMod) -> syn::Result<TokenStream> {
    let Some((brace, items)) = module.content.take() else {
        return Err(syn::Error::new(
            module.ident.span(),
            "#[patchable] on a module needs its items inline (`mod name { .. }`): a macro cannot \
             read a module kept in a file of its own",
        ));
    };
    let mut skipped = vec![];
    let items = patch_items(krate, items, &mut skipped)?;
    let notes = skipped.iter().map(|s| note(krate, s));
    let mut out: Vec<Item> = items;
    out.push(Item::Verbatim(quote!(#(#notes)*)));
    module.content = Some((brace, out));
    Ok(module.into_token_stream())
}

fn patch_items(
    krate: &TokenStream,
    items: Vec<Item>,
    skipped: &mut Vec<Skipped>,
) -> syn::Result<Vec<Item>> {
    let defaults = trait_defaults(&items);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(match item {
            Item::Fn(mut f) => {
                let own = take_own_attr(&mut f.attrs)?;
                match own {
                    Some(a) if a.skip => Item::Fn(f),
                    Some(a) => Item::Verbatim(free_fn(krate, f, a.remote)?),
                    None if is_test(&f.attrs) => Item::Fn(f),
                    None => {
                        match eligible(&f.sig).and_then(|()| free_fn(krate, f.clone(), false)) {
                            Ok(tokens) => Item::Verbatim(tokens),
                            Err(e) => {
                                let fun = Fun {
                                    sig: &f.sig,
                                    owner: None,
                                    remote: false,
                                };
                                let (_, _, name, _) = naming(&fun);
                                skipped.push(Skipped {
                                    name,
                                    reason: e.to_string(),
                                });
                                Item::Fn(f)
                            }
                        }
                    }
                }
            }
            Item::Impl(mut block) => {
                let own = take_own_attr(&mut block.attrs)?;
                match own {
                    Some(a) if a.skip => Item::Impl(block),
                    Some(a) => Item::Verbatim(impl_block(krate, block, a.remote, None)?),
                    None if !block.generics.params.is_empty() => {
                        let ty = crate::canonical(&block.self_ty);
                        skipped.push(Skipped {
                            name: quote!(::core::concat!(::core::module_path!(), "::", #ty)),
                            reason: "a generic impl block: each patch slot needs one concrete \
                                     signature"
                                .to_owned(),
                        });
                        Item::Impl(block)
                    }
                    None => {
                        add_defaults(&mut block, &defaults);
                        Item::Verbatim(impl_block(krate, block, false, Some(skipped))?)
                    }
                }
            }
            Item::Mod(mut inner) if inner.content.is_some() => {
                let own = take_own_attr(&mut inner.attrs)?;
                match own {
                    Some(a) if a.skip => Item::Mod(inner),
                    _ => {
                        let (brace, items) = inner.content.take().expect("inline");
                        inner.content = Some((brace, patch_items(krate, items, skipped)?));
                        Item::Mod(inner)
                    }
                }
            }
            Item::Trait(mut t) => {
                for item in &mut t.items {
                    if let TraitItem::Fn(f) = item {
                        take_own_attr(&mut f.attrs)?;
                    }
                }
                Item::Trait(t)
            }
            other => other,
        });
    }
    Ok(out)
}

/// What `plan` does not check because alone the compiler would: a variadic `extern` function.
fn eligible(sig: &syn::Signature) -> syn::Result<()> {
    match &sig.variadic {
        Some(v) => Err(syn::Error::new_spanned(
            v,
            "a variadic function cannot be patched: a closure cannot take `...`",
        )),
        None => Ok(()),
    }
}

/// Tests are not part of the program's behaviour; they are left as they are, without a note.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "test" || s.ident == "bench")
    })
}

/// The default methods of each trait defined in the module, by trait name.
fn trait_defaults(items: &[Item]) -> Vec<(syn::Ident, Vec<TraitItemFn>)> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Trait(t) => Some((
                t.ident.clone(),
                t.items
                    .iter()
                    .filter_map(|i| match i {
                        TraitItem::Fn(f) if f.default.is_some() => Some(f.clone()),
                        _ => None,
                    })
                    .filter(|f| !own_attr(&f.attrs).is_ok_and(|a| a.is_some_and(|a| a.skip)))
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Copies into an impl of a trait defined in this module the default methods it does not
/// override. The copy is the default's own body, so the method behaves as before; it is an
/// override only so that it has one concrete `Self` and can have a patch slot.
fn add_defaults(block: &mut syn::ItemImpl, defaults: &[(syn::Ident, Vec<TraitItemFn>)]) {
    let Some((_, path, _)) = &block.trait_ else {
        return;
    };
    let local = match path.segments.len() {
        1 => path.segments.first(),
        2 if path.segments[0].ident == "self" => path.segments.last(),
        _ => None,
    };
    let Some(name) = local.map(|s| &s.ident) else {
        return;
    };
    let Some((_, methods)) = defaults.iter().find(|(t, _)| t == name) else {
        return;
    };
    let overridden: Vec<syn::Ident> = block
        .items
        .iter()
        .filter_map(|i| match i {
            ImplItem::Fn(f) => Some(f.sig.ident.clone()),
            _ => None,
        })
        .collect();
    for m in methods {
        if overridden.contains(&m.sig.ident) {
            continue;
        }
        let body = m.default.clone().expect("filtered to defaults");
        block.items.push(ImplItem::Fn(ImplItemFn {
            attrs: m
                .attrs
                .iter()
                .filter(|a| !a.path().is_ident("doc"))
                .cloned()
                .collect(),
            vis: syn::Visibility::Inherited,
            defaultness: None,
            sig: m.sig.clone(),
            block: body,
        }));
    }
}

/// The registry entry of a skipped item.
fn note(krate: &TokenStream, skipped: &Skipped) -> TokenStream {
    let private = quote!(#krate::patch::__private);
    let Skipped { name, reason } = skipped;
    quote! {
        const _: () = {
            #[#private::linkme::distributed_slice(#private::SKIPPED)]
            #[linkme(crate = #private::linkme)]
            static SKIPPED: #private::Skipped = #private::Skipped {
                name: #name,
                reason: #reason,
            };
        };
    }
}
