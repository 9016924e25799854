//! `#[swapkit_guest::patch("target")]`: export a plugin function as a replacement for a host's
//! `#[patchable(plugin)]` function.

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
    let sig = &f.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(a.span(), "a patch cannot be async"));
    }
    if sig
        .generics
        .params
        .iter()
        .any(|g| !matches!(g, syn::GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a patch cannot be generic: its target has one signature",
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
                "a patch is a free function; for a method target, take the receiver as the first \
                 argument, like `this: &Type`",
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
    Ok(quote! {
        #f

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #export: ::swapkit_guest::__rt::PatchExport = {
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
            ::swapkit_guest::__rt::PatchExport {
                target: #target,
                signature: #signature,
                hash: #abi::hash::fnv1a64(#signature.as_bytes()),
                invoke,
            }
        };
    })
}
