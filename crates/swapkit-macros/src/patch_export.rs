//! `#[swapkit_guest::patch("target")]` and `#[swapkit_guest::live]`: export a plugin function
//! by name, as a replacement for a host's `#[patchable(plugin)]` function, or as a live
//! function or live-type factory. Both get the same shim: decode the argument tuple, call,
//! encode the result.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Pat, ReturnType, Type, Visibility};

use crate::interface::decode_plan;

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let target: LitStr = syn::parse2(attr).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[patch] needs the target's full name: #[patch(\"host_crate::module::function\")]",
        )
    })?;
    let f: ItemFn = syn::parse2(item)?;
    let Shim {
        invoke,
        signature,
        export,
        vis,
    } = shim(&f, "a patch")?;
    let abi = crate::abi_path()?;
    Ok(quote! {
        #f

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #export: ::swapkit_guest::__rt::PatchExport = {
            #invoke
            ::swapkit_guest::__rt::PatchExport {
                target: #target,
                signature: #signature,
                hash: #abi::hash::fnv1a64(#signature.as_bytes()),
                invoke,
            }
        };
    })
}

/// `#[live]`, `#[live(name = "..")]` or `#[live(factory = "TypeName")]`.
pub fn expand_live(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let f: ItemFn = syn::parse2(item)?;
    let mut name = None;
    let mut factory = false;
    let parser = syn::meta::parser(|meta| {
        let key = if meta.path.is_ident("name") {
            false
        } else if meta.path.is_ident("factory") {
            true
        } else {
            return Err(meta.error("expected `name = \"..\"` or `factory = \"TypeName\"`"));
        };
        let lit: LitStr = meta.value()?.parse()?;
        name = Some(lit.value());
        factory = key;
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr)?;
    let name = name.unwrap_or_else(|| f.sig.ident.to_string());
    let Shim {
        invoke,
        signature,
        export,
        vis,
    } = shim(&f, "a live function")?;
    let abi = crate::abi_path()?;
    let kind = if factory {
        quote!(#abi::LiveKind::Factory)
    } else {
        quote!(#abi::LiveKind::Function)
    };
    Ok(quote! {
        #f

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #export: ::swapkit_guest::__rt::LiveExport = {
            #invoke
            ::swapkit_guest::__rt::LiveExport {
                name: #name,
                kind: #kind,
                signature: #signature,
                hash: #abi::hash::fnv1a64(#signature.as_bytes()),
                invoke,
            }
        };
    })
}

/// What both attributes generate around the function.
struct Shim {
    /// `fn invoke(input: &[u8], out: &mut Vec<u8>) -> Result<(), DispatchError>`.
    invoke: TokenStream,
    signature: String,
    export: syn::Ident,
    vis: TokenStream,
}

fn shim(f: &ItemFn, what: &str) -> syn::Result<Shim> {
    let sig = &f.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(a.span(), format!("{what} cannot be async")));
    }
    if sig
        .generics
        .params
        .iter()
        .any(|g| !matches!(g, syn::GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("{what} cannot be generic: callers find it by one signature"),
        ));
    }
    let abi = crate::abi_path()?;
    let mut names = vec![];
    let mut tys: Vec<Type> = vec![];
    let mut decode = vec![];
    let mut pass = vec![];
    for (i, arg) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = arg else {
            return Err(syn::Error::new(
                arg.span(),
                format!(
                    "{what} is a free function; for a patch of a method, take the receiver as \
                     the first argument, like `this: &Type`"
                ),
            ));
        };
        if matches!(&*pt.ty, Type::Reference(r) if r.mutability.is_some()) {
            return Err(syn::Error::new(
                pt.ty.span(),
                "`&mut` arguments cannot cross from the host to a plugin",
            ));
        }
        let name = match &*pt.pat {
            Pat::Ident(p) => p.ident.clone(),
            _ => quote::format_ident!("__swapkit_arg{}", i),
        };
        let (ty, passed) = decode_plan(&abi, &name, &pt.ty);
        names.push(name);
        decode.push(ty);
        pass.push(passed);
        tys.push((*pt.ty).clone());
    }
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let signature = crate::patch_signature(&tys, &ret);
    let ident = &sig.ident;
    let export = crate::patch_export_ident(ident);
    let vis = match &f.vis {
        Visibility::Public(_) => quote!(pub),
        _ => quote!(pub(crate)),
    };
    let invoke = quote! {
        #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
        fn invoke(
            input: &[u8],
            out: &mut ::swapkit_guest::__rt::Vec<u8>,
        ) -> ::core::result::Result<(), #abi::DispatchError> {
            let (#(#names,)*): (#(#decode,)*) = #abi::wire::from_bytes(input)
                .map_err(#abi::DispatchError::BadInput)?;
            let result = #ident(#(#pass),*);
            #abi::wire::encode_into(&result, out).map_err(#abi::DispatchError::Encode)
        }
    };
    Ok(Shim {
        invoke,
        signature,
        export,
        vis,
    })
}
