//! `#[patchable]`, `target!` and `patch!`: route a function through a patch slot, and name
//! that slot.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, ToTokens};
use syn::spanned::Spanned;

use crate::canonical;
use syn::visit_mut::VisitMut;
use syn::{
    parse_quote, FnArg, GenericParam, ImplItem, ImplItemFn, Item, ItemFn, ItemImpl, Pat,
    ReturnType, Signature, Type, Visibility,
};

/// The function being made patchable, whatever kind it is.
pub(crate) struct Fun<'a> {
    pub sig: &'a Signature,
    /// The concrete `Self` type and the trait, for methods.
    pub owner: Option<(&'a Type, Option<&'a syn::Path>)>,
    /// `#[patchable(plugin)]`: plugins may patch it, so its arguments and result cross a
    /// plugin boundary.
    pub remote: bool,
}

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let attr = parse_attr(attr)?;
    let krate = crate::host_path()?;
    let item = syn::parse2::<Item>(item)?;
    if attr.skip {
        // Only meaningful inside a patchable module or impl block, which strip it; alone, the
        // item stays as it is.
        return Ok(item.into_token_stream());
    }
    match item {
        Item::Fn(f) => free_fn(&krate, f, attr.remote),
        Item::Impl(i) => impl_block(&krate, i, attr.remote, None),
        Item::Mod(m) if attr.remote => Err(syn::Error::new(
            m.ident.span(),
            "#[patchable(plugin)] goes on the functions plugins may patch, not on a module: each \
             needs arguments and a result that serde can encode",
        )),
        Item::Mod(m) => crate::module::expand(&krate, m),
        other => Err(syn::Error::new(
            other.span(),
            "#[patchable] goes on a function, an impl block (to make its methods patchable) or an \
             inline module (to make every function and method in it patchable)",
        )),
    }
}

/// The arguments of `#[patchable(..)]`.
#[derive(Default, Clone, Copy)]
pub(crate) struct Attr {
    /// `plugin`: plugins may patch the function too.
    pub remote: bool,
    /// `skip`: leave this item out of a patchable module or impl block.
    pub skip: bool,
}

/// `#[patchable]`, `#[patchable(plugin)]` or `#[patchable(skip)]`.
pub(crate) fn parse_attr(attr: TokenStream) -> syn::Result<Attr> {
    let mut out = Attr::default();
    if attr.is_empty() {
        return Ok(out);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("plugin") {
            out.remote = true;
            Ok(())
        } else if meta.path.is_ident("skip") {
            out.skip = true;
            Ok(())
        } else {
            Err(meta.error(
                "unknown argument; `plugin` lets plugins patch the function, `skip` leaves an \
                 item of a patchable module or impl block as it is",
            ))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    if out.remote && out.skip {
        return Err(syn::Error::new(
            Span::call_site(),
            "`skip` and `plugin` contradict each other",
        ));
    }
    Ok(out)
}

/// Where an item's own `#[patchable(..)]` attribute is among `attrs`, if it has one.
fn own_attr_at(attrs: &[syn::Attribute]) -> Option<usize> {
    attrs.iter().position(|a| {
        a.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "patchable")
    })
}

/// The arguments of an item's own `#[patchable(..)]` attribute, if it has one, left in place.
pub(crate) fn own_attr(attrs: &[syn::Attribute]) -> syn::Result<Option<Attr>> {
    let Some(at) = own_attr_at(attrs) else {
        return Ok(None);
    };
    let args = match &attrs[at].meta {
        syn::Meta::Path(_) => TokenStream::new(),
        syn::Meta::List(l) => l.tokens.clone(),
        syn::Meta::NameValue(nv) => {
            return Err(syn::Error::new(
                nv.span(),
                "write #[patchable], #[patchable(plugin)] or #[patchable(skip)]",
            ))
        }
    };
    parse_attr(args).map(Some)
}

/// Takes a `#[patchable(..)]` attribute off an item nested in a patchable module or impl block,
/// and returns its arguments: the outer macro handles the item, so it must not expand again.
pub(crate) fn take_own_attr(attrs: &mut Vec<syn::Attribute>) -> syn::Result<Option<Attr>> {
    let own = own_attr(attrs)?;
    if let Some(at) = own_attr_at(attrs) {
        attrs.remove(at);
    }
    Ok(own)
}

/// The `#[cfg(..)]` attributes of an item, for the items generated beside it: they must come
/// and go with it.
pub(crate) fn cfgs(attrs: &[syn::Attribute]) -> Vec<syn::Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .cloned()
        .collect()
}

pub(crate) fn free_fn(
    krate: &TokenStream,
    mut f: ItemFn,
    remote: bool,
) -> syn::Result<TokenStream> {
    if let Some(FnArg::Receiver(r)) = f.sig.inputs.first() {
        return Err(syn::Error::new(
            r.span(),
            "put #[patchable] on the impl block: a method's patch slot needs its concrete Self type",
        ));
    }
    let fun = Fun {
        sig: &f.sig,
        owner: None,
        remote,
    };
    let plan = plan(krate, &fun)?;
    drop_mut(&mut f.sig, &plan.rebound);
    let prologue = &plan.prologue;
    let body = &f.block;
    let new_body: syn::Block = parse_quote!({ #prologue #body });
    *f.block = new_body;
    let accessors = accessors(krate, &plan, &f.vis, &cfgs(&f.attrs));
    Ok(quote! { #f #accessors })
}

/// A method left as it is by a patchable module: its name (an expression) and why.
pub(crate) struct Skipped {
    pub name: TokenStream,
    pub reason: String,
}

/// `#[patchable]` on an impl block: every method. Inside a patchable module (`skipped` is
/// `Some`), a method that cannot be patched is left as it is and noted, unless it carries its
/// own `#[patchable]`; alone, it is an error.
pub(crate) fn impl_block(
    krate: &TokenStream,
    mut block: ItemImpl,
    remote: bool,
    mut skipped: Option<&mut Vec<Skipped>>,
) -> syn::Result<TokenStream> {
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "a generic impl block cannot be patched: each patch slot needs one concrete signature",
        ));
    }
    let self_ty = (*block.self_ty).clone();
    let trait_path = block.trait_.as_ref().map(|(_, p, _)| p.clone());
    let mut accessor_items = vec![];
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else { continue };
        let own = take_own_attr(&mut method.attrs)?;
        if own.is_some_and(|a| a.skip) {
            continue;
        }
        let ImplItemFn {
            sig,
            block: body,
            vis,
            attrs,
            ..
        } = method;
        let fun = Fun {
            sig,
            owner: Some((&self_ty, trait_path.as_ref())),
            remote: remote || own.is_some_and(|a| a.remote),
        };
        let plan = match (plan(krate, &fun), skipped.as_deref_mut()) {
            (Ok(plan), _) => plan,
            (Err(e), Some(notes)) if own.is_none() => {
                let (_, _, name, _) = naming(&fun);
                notes.push(Skipped {
                    name,
                    reason: e.to_string(),
                });
                continue;
            }
            (Err(e), _) => return Err(e),
        };
        drop_mut(sig, &plan.rebound);
        let prologue = &plan.prologue;
        let new_body: syn::Block = parse_quote!({ #prologue #body });
        *body = new_body;
        let vis = if trait_path.is_some() {
            parse_quote!(pub)
        } else {
            vis.clone()
        };
        accessor_items.push(accessors(krate, &plan, &vis, &cfgs(attrs)));
    }
    let block_cfgs = cfgs(&block.attrs);
    Ok(quote! {
        #block
        #(#block_cfgs)*
        #[allow(private_interfaces, private_bounds)]
        impl #self_ty {
            #(#accessor_items)*
        }
    })
}

/// Takes `mut` off the named arguments: the prologue binds them again with it.
fn drop_mut(sig: &mut Signature, names: &[syn::Ident]) {
    for arg in &mut sig.inputs {
        if let FnArg::Typed(pt) = arg {
            if let Pat::Ident(p) = &mut *pt.pat {
                if names.contains(&p.ident) {
                    p.mutability = None;
                }
            }
        }
    }
}

/// Everything generated for one function.
struct Plan {
    prologue: TokenStream,
    /// `dyn Fn(..) -> R + Send + Sync`, with `for<'a>` when the function names lifetimes.
    dyn_fn: TokenStream,
    target_fn: syn::Ident,
    patch_fn: syn::Ident,
    /// The call that returns the target, from inside or outside the impl.
    accessor: TokenStream,
    name: TokenStream,
    signature: String,
    /// For `#[patchable(plugin)]`: the function that wraps a plugin's export as a replacement.
    remote: Option<TokenStream>,
    /// How `patch!` boxes a replacement.
    builder: Builder,
    /// Arguments the prologue moves and binds again under their own names (with their `mut`),
    /// so their `mut` comes off the signature.
    rebound: Vec<syn::Ident>,
}

/// The parts of the generated patch constructor that differ between sync and async targets.
struct Builder {
    /// Its generic parameters.
    generics: TokenStream,
    /// Its where-clause predicates, which check the replacement's signature.
    bounds: TokenStream,
    /// The expression that boxes `replacement` as the target's `dyn Fn`.
    boxed: TokenStream,
}

fn plan(krate: &TokenStream, fun: &Fun<'_>) -> syn::Result<Plan> {
    let sig = fun.sig;
    if sig.asyncness.is_some() {
        return plan_async(krate, fun);
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span(),
            "a const fn cannot be patched: it may run at compile time",
        ));
    }
    let mut lifetimes = vec![];
    for g in &sig.generics.params {
        match g {
            GenericParam::Lifetime(l) => lifetimes.push(l.lifetime.clone()),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a generic function cannot be patched: a patch slot has one signature; make a \
                     non-generic function it calls patchable",
                ))
            }
        }
    }
    if sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.where_clause.span(),
            "a patchable function cannot have a where clause",
        ));
    }

    let mut subst = SelfToConcrete {
        self_ty: fun.owner.map(|(t, _)| t),
        trait_path: fun.owner.and_then(|(_, p)| p),
    };
    let mut arg_tys: Vec<Type> = vec![];
    // How the caller hands each argument to the outlined patched path: a copy or reborrow it
    // keeps using afterwards, or a move it gets back when the patch does not run.
    let mut pass: Vec<TokenStream> = vec![];
    let mut owned: Vec<(syn::Ident, bool, Type)> = vec![];
    let mut retryable = true;
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                let self_ty = fun.owner.map(|(t, _)| t).expect("receivers only in impls");
                let ty: Type = match (&r.reference, r.mutability) {
                    (Some((_, lt)), Some(_)) => parse_quote!(&#lt mut #self_ty),
                    (Some((_, lt)), None) => parse_quote!(&#lt #self_ty),
                    (None, _) => {
                        return Err(syn::Error::new(
                            r.span(),
                            "a method taking `self` by value cannot be patched; take `&self` or `&mut self`",
                        ))
                    }
                };
                pass.push(if r.mutability.is_some() {
                    quote!(&mut *self)
                } else {
                    quote!(self)
                });
                arg_tys.push(ty);
            }
            FnArg::Typed(pt) => {
                let Pat::Ident(p) = &*pt.pat else {
                    return Err(syn::Error::new(
                        pt.pat.span(),
                        "patchable functions need plain argument names, not patterns",
                    ));
                };
                if let Type::ImplTrait(_) = &*pt.ty {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "`impl Trait` arguments make a function generic; it cannot be patched",
                    ));
                }
                let mut ty = (*pt.ty).clone();
                subst.visit_type_mut(&mut ty);
                let ident = &p.ident;
                if reusable(&ty) {
                    let is_mut_ref = matches!(&ty, Type::Reference(r) if r.mutability.is_some());
                    pass.push(if is_mut_ref {
                        quote!(&mut *#ident)
                    } else {
                        quote!(#ident)
                    });
                } else {
                    retryable = false;
                    pass.push(quote!(#ident));
                    owned.push((ident.clone(), p.mutability.is_some(), ty.clone()));
                }
                arg_tys.push(ty);
            }
        }
    }
    let mut ret: Type = match &sig.output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    if let Type::ImplTrait(_) = &ret {
        return Err(syn::Error::new(
            ret.span(),
            "a function returning `impl Trait` cannot be patched",
        ));
    }
    subst.visit_type_mut(&mut ret);

    let for_lt = if lifetimes.is_empty() {
        quote!()
    } else {
        quote!(for<#(#lifetimes),*>)
    };
    let fn_bound = quote!(#for_lt Fn(#(#arg_tys),*) -> #ret);
    let dyn_fn = quote!(dyn #fn_bound + ::core::marker::Send + ::core::marker::Sync);

    let (target_fn, patch_fn, name, accessor) = naming(fun);
    let signature = crate::patch_signature(&arg_tys, &ret);
    let remote = if fun.remote {
        Some(remote_adapter(krate, sig, &arg_tys, &ret, &dyn_fn)?)
    } else {
        None
    };

    let private = quote!(#krate::patch::__private);
    let params: Vec<syn::Ident> = (0..arg_tys.len())
        .map(|i| format_ident!("__swapkit_a{}", i))
        .collect();
    // Inside the outlined path: reborrow `&mut` arguments so that they survive the call.
    let invoke: Vec<TokenStream> = params
        .iter()
        .zip(&arg_tys)
        .map(|(p, t)| match t {
            Type::Reference(r) if r.mutability.is_some() => quote!(&mut *#p),
            _ => quote!(#p),
        })
        .collect();
    // The outlined path's parameters that carry owned arguments, which it hands back when
    // the patch does not run.
    let owned_params: Vec<&syn::Ident> = params
        .iter()
        .zip(&arg_tys)
        .filter(|(_, t)| !reusable(t))
        .map(|(p, _)| p)
        .collect();
    let owned_tys: Vec<&Type> = owned.iter().map(|(_, _, t)| t).collect();
    let owned_names: Vec<&syn::Ident> = owned.iter().map(|(i, _, _)| i).collect();
    let owned_bind: Vec<TokenStream> = owned
        .iter()
        .map(|(i, is_mut, _)| if *is_mut { quote!(mut #i) } else { quote!(#i) })
        .collect();
    let give_back = quote!(#private::Outcome::Original((#(#owned_params,)*)));
    let after_panic = if retryable {
        quote! {
            __swapkit_patch.fall_back(__swapkit_panic);
            #give_back
        }
    } else {
        quote!(__swapkit_patch.propagate(__swapkit_panic))
    };
    let to_error = panic_to_error(
        &private,
        &ret,
        quote!(#private::Outcome::Done(::core::result::Result::Err(__swapkit_e))),
    );
    let generics = if lifetimes.is_empty() {
        quote!()
    } else {
        quote!(<#(#lifetimes),*>)
    };
    // The fast path is one load and a branch. Everything else lives in a cold, out-of-line
    // function, so an unpatched call pays no stack frame for it.
    let outlined = quote! {
        #[cold]
        #[inline(never)]
        #[allow(clippy::too_many_arguments, clippy::needless_lifetimes, clippy::unused_unit, unused_mut)]
        fn __swapkit_patched #generics (#(#params: #arg_tys),*)
            -> #private::Outcome<#ret, (#(#owned_tys,)*)>
        {
            let ::core::option::Option::Some(__swapkit_call) = #accessor.enter() else {
                return #give_back;
            };
            let ::core::option::Option::Some(__swapkit_patch) = __swapkit_call.choose() else {
                return #give_back;
            };
            match __swapkit_patch.try_call(|__swapkit_f| __swapkit_f(#(#invoke),*)) {
                ::core::result::Result::Ok(__swapkit_r) => #private::Outcome::Done(__swapkit_r),
                ::core::result::Result::Err(__swapkit_panic) => {
                    #to_error
                    #after_panic
                }
            }
        }
    };
    // The fast path is one load and a branch. Everything else lives in a cold, out-of-line
    // function, so an unpatched call pays no stack frame for it.
    let prologue = if owned.is_empty() {
        quote! {
            if #accessor.is_patched() {
                #outlined
                if let #private::Outcome::Done(__swapkit_r) = __swapkit_patched(#(#pass),*) {
                    return __swapkit_r;
                }
            }
        }
    } else {
        // Owned arguments move into the outlined path and come back when the patch does not
        // run, rebound under their own names for the original body.
        quote! {
            #[allow(unused_mut)]
            let (#(#owned_bind,)*) = if #accessor.is_patched() {
                #outlined
                match __swapkit_patched(#(#pass),*) {
                    #private::Outcome::Done(__swapkit_r) => return __swapkit_r,
                    #private::Outcome::Original(__swapkit_owned) => __swapkit_owned,
                }
            } else {
                (#(#owned_names,)*)
            };
        }
    };
    Ok(Plan {
        prologue,
        dyn_fn,
        target_fn,
        patch_fn,
        accessor,
        name,
        signature,
        remote,
        builder: Builder {
            generics: quote!(<__C>),
            bounds: quote!(__C: #fn_bound + ::core::marker::Send + ::core::marker::Sync + 'static,),
            boxed: quote!(::std::boxed::Box::new(replacement)),
        },
        rebound: owned.iter().map(|(i, _, _)| i.clone()).collect(),
    })
}

/// The hidden accessor names of a function, its registry name, and the call that returns its
/// target from inside or outside the impl.
pub(crate) fn naming(fun: &Fun<'_>) -> (syn::Ident, syn::Ident, TokenStream, TokenStream) {
    let sig = fun.sig;
    let method = &sig.ident;
    let (target_fn, patch_fn, name) = match fun.owner {
        None => (
            format_ident!("__swapkit_target_{}", method),
            format_ident!("__swapkit_patch_{}", method),
            quote!(::core::concat!(
                ::core::module_path!(),
                "::",
                ::core::stringify!(#method)
            )),
        ),
        Some((self_ty, None)) => {
            let ty = canonical(self_ty);
            (
                format_ident!("__swapkit_target_{}", method),
                format_ident!("__swapkit_patch_{}", method),
                quote!(
                    ::core::concat!(::core::module_path!(), "::", #ty, "::", ::core::stringify!(#method))
                ),
            )
        }
        Some((self_ty, Some(trait_path))) => {
            let ty = canonical(self_ty);
            let tr = trait_path
                .segments
                .last()
                .expect("a trait path has a segment")
                .ident
                .clone();
            let tr_text = canonical(trait_path);
            (
                format_ident!("__swapkit_target_{}_{}", tr, method),
                format_ident!("__swapkit_patch_{}_{}", tr, method),
                quote!(
                    ::core::concat!(::core::module_path!(), "::<", #ty, " as ", #tr_text, ">::", ::core::stringify!(#method))
                ),
            )
        }
    };
    let accessor = match fun.owner {
        None => quote!(#target_fn()),
        Some((self_ty, _)) => quote!(<#self_ty>::#target_fn()),
    };
    (target_fn, patch_fn, name, accessor)
}

/// The function that turns a plugin's exported patch into a replacement: a closure that
/// encodes its arguments, calls the plugin, and decodes the result. A failure inside the plugin
/// unwinds, so the patch's panic policy handles it like a panic in any replacement.
fn remote_adapter(
    krate: &TokenStream,
    sig: &Signature,
    arg_tys: &[Type],
    ret: &Type,
    dyn_fn: &TokenStream,
) -> syn::Result<TokenStream> {
    for (ty, arg) in arg_tys.iter().zip(&sig.inputs) {
        if matches!(ty, Type::Reference(r) if r.mutability.is_some()) {
            return Err(syn::Error::new(
                arg.span(),
                "#[patchable(plugin)]: a plugin cannot write through `&mut`, because arguments \
                 cross to it as copies; take the argument by value or by `&`",
            ));
        }
    }
    if borrows(ret) {
        return Err(syn::Error::new(
            sig.output.span(),
            "#[patchable(plugin)]: a plugin's result crosses back by value, so the function \
             cannot return a borrow",
        ));
    }
    let private = quote!(#krate::patch::__private);
    let params: Vec<syn::Ident> = (0..arg_tys.len())
        .map(|i| format_ident!("__swapkit_a{}", i))
        .collect();
    let elided: Vec<Type> = arg_tys
        .iter()
        .map(|t| {
            let mut t = t.clone();
            ElideLifetimes.visit_type_mut(&mut t);
            t
        })
        .collect();
    Ok(quote! {
        fn __swapkit_remote(__swapkit_remote: #private::RemoteFn) -> ::std::boxed::Box<#dyn_fn> {
            ::std::boxed::Box::new(move |#(#params: #elided),*| {
                __swapkit_remote.invoke::<_, #ret>(&(#(#params,)*))
            })
        }
    })
}

/// Code that turns `__swapkit_panic` into the target's error and returns `returns` (which
/// names `__swapkit_e`), when the target returns `Result<_, E>` with `E: From<PatchPanic>`;
/// otherwise it leaves `__swapkit_panic` bound for what follows.
fn panic_to_error(private: &TokenStream, ret: &Type, returns: TokenStream) -> TokenStream {
    match result_error(ret) {
        Some(err) => quote! {
            #[allow(unused_imports)]
            use #private::{NoFrom as _, ViaFrom as _};
            let mut __swapkit_slot = ::core::option::Option::Some(__swapkit_panic);
            if let ::core::option::Option::Some(__swapkit_e) =
                (&&#private::Wrap::<#err>::new()).convert(&mut __swapkit_slot)
            {
                return #returns;
            }
            let __swapkit_panic = __swapkit_slot.expect("not converted");
        },
        None => quote!(),
    }
}

/// `#[patchable]` on an `async fn`. The replacement is a closure returning a future; the
/// future is boxed and polled inside `catch_unwind`, and holds the patch until it completes.
/// Arguments must be owned, because the replacement's future owns them past the call.
fn plan_async(krate: &TokenStream, fun: &Fun<'_>) -> syn::Result<Plan> {
    let sig = fun.sig;
    if fun.remote {
        return Err(syn::Error::new(
            sig.asyncness.span(),
            "#[patchable(plugin)] cannot be async: a plugin call is synchronous; make a \
             synchronous function the async one calls patchable by plugins",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a generic async function cannot be patched: a patch slot has one signature",
        ));
    }
    let mut subst = SelfToConcrete {
        self_ty: fun.owner.map(|(t, _)| t),
        trait_path: fun.owner.and_then(|(_, p)| p),
    };
    let mut names = vec![];
    let mut rebound = vec![];
    let mut binds = vec![];
    let mut tys: Vec<Type> = vec![];
    for arg in &sig.inputs {
        let FnArg::Typed(pt) = arg else {
            return Err(syn::Error::new(
                arg.span(),
                "an async method taking `self` cannot be patched: the replacement's future would \
                 borrow it; make an async function with owned arguments patchable",
            ));
        };
        let Pat::Ident(p) = &*pt.pat else {
            return Err(syn::Error::new(
                pt.pat.span(),
                "patchable functions need plain argument names, not patterns",
            ));
        };
        let mut ty = (*pt.ty).clone();
        subst.visit_type_mut(&mut ty);
        if borrows(&ty) || matches!(ty, Type::ImplTrait(_)) {
            return Err(syn::Error::new(
                pt.ty.span(),
                "an async patchable function takes owned arguments: the replacement's future \
                 owns them after the call returns",
            ));
        }
        let ident = &p.ident;
        names.push(quote!(#ident));
        rebound.push(ident.clone());
        binds.push(if p.mutability.is_some() {
            quote!(mut #ident)
        } else {
            quote!(#ident)
        });
        tys.push(ty);
    }
    let mut ret: Type = match &sig.output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    subst.visit_type_mut(&mut ret);
    let private = quote!(#krate::patch::__private);
    let fn_bound = quote!(Fn(#(#tys),*) -> #private::BoxFuture<#ret>);
    let dyn_fn = quote!(dyn #fn_bound + ::core::marker::Send + ::core::marker::Sync);
    let (target_fn, patch_fn, name, accessor) = naming(fun);
    let signature = format!("async {}", crate::patch_signature(&tys, &ret));
    let params: Vec<syn::Ident> = (0..tys.len())
        .map(|i| format_ident!("__swapkit_a{}", i))
        .collect();
    let to_error = panic_to_error(
        &private,
        &ret,
        quote!(::core::result::Result::Err(__swapkit_e)),
    );
    let prologue = quote! {
        #[allow(unused_mut)]
        let (#(#binds,)*) = if #accessor.is_patched() {
            #[cold]
            #[inline(never)]
            #[allow(clippy::too_many_arguments, clippy::unused_unit)]
            fn __swapkit_patched(#(#params: #tys),*)
                -> #private::Outcome<#private::PatchFuture<#ret>, (#(#tys,)*)>
            {
                let ::core::option::Option::Some(__swapkit_call) = #accessor.enter() else {
                    return #private::Outcome::Original((#(#params,)*));
                };
                let ::core::option::Option::Some(__swapkit_patch) = __swapkit_call.choose() else {
                    return #private::Outcome::Original((#(#params,)*));
                };
                #private::Outcome::Done(__swapkit_patch.call_async(|__swapkit_f| __swapkit_f(#(#params),*)))
            }
            match __swapkit_patched(#(#names),*) {
                #private::Outcome::Done(__swapkit_future) => {
                    match __swapkit_future.await {
                        ::core::result::Result::Ok(__swapkit_r) => return __swapkit_r,
                        ::core::result::Result::Err(__swapkit_panic) => {
                            #to_error
                            #private::resume_panic(__swapkit_panic)
                        }
                    }
                }
                #private::Outcome::Original(__swapkit_owned) => __swapkit_owned,
            }
        } else {
            (#(#names,)*)
        };
    };
    let builder = Builder {
        generics: quote!(<__C, __Fut>),
        bounds: quote! {
            __C: Fn(#(#tys),*) -> __Fut + ::core::marker::Send + ::core::marker::Sync + 'static,
            __Fut: ::core::future::Future<Output = #ret> + ::core::marker::Send + 'static,
        },
        boxed: quote! {
            ::std::boxed::Box::new(move |#(#params: #tys),*| -> #private::BoxFuture<#ret> {
                ::std::boxed::Box::pin(replacement(#(#params),*))
            })
        },
    };
    Ok(Plan {
        prologue,
        dyn_fn,
        target_fn,
        patch_fn,
        accessor,
        name,
        signature,
        remote: None,
        builder,
        rebound,
    })
}

/// Whether a type holds a reference or a lifetime anywhere.
fn borrows(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// Turns every named lifetime into `'_`, so a closure's parameters can spell the type.
struct ElideLifetimes;

impl VisitMut for ElideLifetimes {
    fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
        *l = syn::Lifetime::new("'_", l.span());
    }
}

/// The hidden functions that return a function's target and make its patches. They carry the
/// function's `#[cfg]`s, so that they exist exactly when it does.
fn accessors(
    krate: &TokenStream,
    plan: &Plan,
    vis: &Visibility,
    cfgs: &[syn::Attribute],
) -> TokenStream {
    let Plan {
        dyn_fn,
        target_fn,
        patch_fn,
        accessor,
        name,
        signature,
        remote,
        builder: Builder {
            generics,
            bounds,
            boxed,
        },
        ..
    } = plan;
    let private = quote!(#krate::patch::__private);
    let info = quote!(#private::TargetInfo {
        name: #name,
        signature: #signature,
        signature_hash: #private::fnv1a64(#signature.as_bytes()),
    });
    let (adapter, make) = match remote {
        Some(adapter) => (
            adapter.clone(),
            quote!(#private::Target::with_remote(#info, __swapkit_remote)),
        ),
        None => (quote!(), quote!(#private::Target::new(#info))),
    };
    quote! {
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_snake_case)]
        #[inline(always)]
        #vis fn #target_fn() -> &'static #private::Target<#dyn_fn> {
            #adapter
            static TARGET: #private::Target<#dyn_fn> = #make;
            #[#private::linkme::distributed_slice(#private::TARGETS)]
            #[linkme(crate = #private::linkme)]
            static REGISTERED: &'static dyn #private::AnyTarget = &TARGET;
            &TARGET
        }

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_snake_case)]
        #vis fn #patch_fn #generics (replacement: __C, source: #private::PatchSource) -> #private::PatchBuilder<#dyn_fn>
        where
            #bounds
        {
            #private::PatchBuilder::new(#accessor, #boxed, source)
        }
    }
}

/// Whether a value of this type can be handed to the replacement and still be used for the
/// original afterwards: references (shared, or reborrowed `&mut`) and primitives.
fn reusable(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) => true,
        Type::Path(p) if p.qself.is_none() => {
            let text = canonical(ty);
            matches!(
                text.as_str(),
                "u8" | "u16"
                    | "u32"
                    | "u64"
                    | "u128"
                    | "usize"
                    | "i8"
                    | "i16"
                    | "i32"
                    | "i64"
                    | "i128"
                    | "isize"
                    | "f32"
                    | "f64"
                    | "bool"
                    | "char"
            )
        }
        Type::Tuple(t) => t.elems.iter().all(reusable),
        _ => false,
    }
}

/// `E` when the return type is written `Result<T, E>`.
fn result_error(ret: &Type) -> Option<Type> {
    let Type::Path(p) = ret else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    (types.len() == 2).then(|| types[1].clone())
}

/// Replaces `Self` with the concrete type (and `Self::X` with `<Type as Trait>::X`), because a
/// `static` inside a method cannot name `Self`.
struct SelfToConcrete<'a> {
    self_ty: Option<&'a Type>,
    trait_path: Option<&'a syn::Path>,
}

impl VisitMut for SelfToConcrete<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let (Type::Path(tp), Some(self_ty)) = (&*ty, self.self_ty) {
            if tp.qself.is_none() && tp.path.segments.first().is_some_and(|s| s.ident == "Self") {
                let rest: Vec<_> = tp.path.segments.iter().skip(1).collect();
                *ty = if rest.is_empty() {
                    self_ty.clone()
                } else if let Some(tr) = self.trait_path {
                    parse_quote!(<#self_ty as #tr>::#(#rest)::*)
                } else {
                    parse_quote!(<#self_ty>::#(#rest)::*)
                };
                return;
            }
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
}

/// `target!(path)`: the `&'static Target` of a patchable function.
pub fn target(input: TokenStream) -> syn::Result<TokenStream> {
    let (prefix, name) = accessor_path(input, "target")?;
    Ok(quote!(#prefix #name()))
}

/// `patch!(path, replacement)`: a `PatchBuilder` for the function at `path`.
pub fn patch(input: TokenStream) -> syn::Result<TokenStream> {
    let parser = |stream: syn::parse::ParseStream| {
        let path: syn::ExprPath = stream.parse()?;
        stream.parse::<syn::Token![,]>()?;
        let replacement: syn::Expr = stream.parse()?;
        let _ = stream.parse::<Option<syn::Token![,]>>()?;
        Ok((path, replacement))
    };
    let (path, replacement) = syn::parse::Parser::parse2(parser, input)?;
    let (prefix, name) = accessor_path(path.to_token_stream(), "patch")?;
    let krate = crate::host_path()?;
    Ok(quote! {
        #prefix #name(#replacement, #krate::patch::PatchSource::InProcess {
            file: ::core::file!(),
            line: ::core::line!(),
        })
    })
}

/// Splits `a::b::f`, `Type::method` or `<Type as Trait>::method` into the path the generated
/// accessor lives at and the accessor's name.
fn accessor_path(input: TokenStream, kind: &str) -> syn::Result<(TokenStream, syn::Ident)> {
    let path: syn::ExprPath = syn::parse2(input)?;
    let last = path
        .path
        .segments
        .last()
        .ok_or_else(|| syn::Error::new(Span::call_site(), "expected a path"))?;
    let method = &last.ident;
    match &path.qself {
        Some(q) => {
            let trait_ident = path
                .path
                .segments
                .iter()
                .nth(q.position.saturating_sub(1))
                .ok_or_else(|| syn::Error::new(path.span(), "expected `<Type as Trait>::method`"))?
                .ident
                .clone();
            let ty = &q.ty;
            Ok((
                quote!(<#ty>::),
                format_ident!("__swapkit_{}_{}_{}", kind, trait_ident, method),
            ))
        }
        None => {
            let mut prefix = TokenStream::new();
            if path.path.leading_colon.is_some() {
                prefix.extend(quote!(::));
            }
            for seg in path.path.segments.iter().take(path.path.segments.len() - 1) {
                let s = &seg.ident;
                prefix.extend(quote!(#s::));
            }
            Ok((prefix, format_ident!("__swapkit_{}_{}", kind, method)))
        }
    }
}
