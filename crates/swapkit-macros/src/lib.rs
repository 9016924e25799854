//! Procedural macros for swapkit. Use them through their re-exports:
//! `swapkit_abi::interface` in an interface crate, and `swapkit_guest::export_plugin!` in a
//! plugin crate.

#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::Span;
use proc_macro_crate::{crate_name, FoundCrate};
use quote::{format_ident, quote};

mod export;
mod interface;
mod module;
mod patch_export;
mod patchable;
mod plain;

/// Turns a trait into a swapkit interface. See `swapkit_abi::interface`.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    interface::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks a `#[repr(C)]` struct as plain data for the direct lane. See `swapkit_abi::Plain`.
#[proc_macro_derive(Plain)]
pub fn derive_plain(input: TokenStream) -> TokenStream {
    plain::derive(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Routes a function, or every method of an impl block, through a patch slot. See
/// `swapkit::patchable`.
#[proc_macro_attribute]
pub fn patchable(attr: TokenStream, item: TokenStream) -> TokenStream {
    patchable::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The `&'static Target` of a patchable function. See `swapkit::target`.
#[proc_macro]
pub fn target(input: TokenStream) -> TokenStream {
    patchable::target(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A patch builder for a patchable function. See `swapkit::patch`.
#[proc_macro]
pub fn patch(input: TokenStream) -> TokenStream {
    patchable::patch(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Exports a plugin function as a patch for a host function. See `swapkit_guest::patch`.
#[proc_macro_attribute]
pub fn patch_export(attr: TokenStream, item: TokenStream) -> TokenStream {
    patch_export::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Exports a plugin function as a live function or live-type factory. See
/// `swapkit_guest::live`.
#[proc_macro_attribute]
pub fn live_export(attr: TokenStream, item: TokenStream) -> TokenStream {
    patch_export::expand_live(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Exports a plugin type through ABI v1. See `swapkit_guest::export_plugin`.
#[proc_macro]
pub fn export_plugin(input: TokenStream) -> TokenStream {
    export::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The path to `swapkit-abi` as the calling crate can name it: directly, or through the
/// re-export of `swapkit` (host) or `swapkit-guest` (plugin), whichever it depends on.
fn abi_path() -> syn::Result<proc_macro2::TokenStream> {
    let found = |name: &str, tail: Option<&str>| {
        crate_name(name).ok().map(|found| {
            let root = match found {
                // Only the crate's own tests and doctests expand this macro "inside" it, and
                // they are separate crates that name it by its library name.
                FoundCrate::Itself => {
                    let ident = format_ident!("{}", name.replace('-', "_"));
                    quote!(::#ident)
                }
                FoundCrate::Name(n) => {
                    let ident = format_ident!("{}", n);
                    quote!(::#ident)
                }
            };
            match tail {
                Some(t) => {
                    let t = format_ident!("{}", t);
                    quote!(#root::#t)
                }
                None => root,
            }
        })
    };
    found("swapkit-abi", None)
        .or_else(|| found("swapkit", Some("abi")))
        .or_else(|| found("swapkit-guest", Some("abi")))
        .ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "#[interface] needs a dependency on swapkit-abi, swapkit or swapkit-guest",
            )
        })
}

/// The path to the host runtime `swapkit`, as the calling crate names it.
fn host_path() -> syn::Result<proc_macro2::TokenStream> {
    match crate_name("swapkit") {
        Ok(FoundCrate::Name(n)) => {
            let ident = format_ident!("{}", n);
            Ok(quote!(::#ident))
        }
        Ok(FoundCrate::Itself) => Ok(quote!(::swapkit)),
        Err(_) => Err(syn::Error::new(
            Span::call_site(),
            "#[patchable] needs a dependency on swapkit",
        )),
    }
}

/// Token text with all whitespace removed, so formatting never changes a signature or a hash.
fn canonical(t: &impl quote::ToTokens) -> String {
    t.to_token_stream()
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// The signature text of a patch target, `(A,B)->R`, as both `#[patchable]` and a plugin's
/// `#[patch]` compute it: lifetimes and path prefixes are dropped and whitespace removed, so
/// the host and a plugin may spell a type differently (`std::string::String` or `String`).
fn patch_signature(args: &[syn::Type], ret: &syn::Type) -> String {
    let norm = |t: &syn::Type| {
        let mut t = t.clone();
        syn::visit_mut::VisitMut::visit_type_mut(&mut Normalize, &mut t);
        canonical(&t)
    };
    let args: Vec<String> = args.iter().map(norm).collect();
    format!("({})->{}", args.join(","), norm(ret))
}

/// Drops lifetimes and path prefixes from a type.
struct Normalize;

impl syn::visit_mut::VisitMut for Normalize {
    fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
        r.lifetime = None;
        syn::visit_mut::visit_type_reference_mut(self, r);
    }

    fn visit_type_path_mut(&mut self, p: &mut syn::TypePath) {
        if p.qself.is_none() && p.path.segments.len() > 1 {
            let last = p.path.segments.pop().expect("non-empty").into_value();
            p.path.segments.clear();
            p.path.leading_colon = None;
            p.path.segments.push(last);
        }
        syn::visit_mut::visit_type_path_mut(self, p);
    }

    fn visit_angle_bracketed_generic_arguments_mut(
        &mut self,
        a: &mut syn::AngleBracketedGenericArguments,
    ) {
        a.args = std::mem::take(&mut a.args)
            .into_iter()
            .filter(|g| !matches!(g, syn::GenericArgument::Lifetime(_)))
            .collect();
        syn::visit_mut::visit_angle_bracketed_generic_arguments_mut(self, a);
    }
}

/// The hidden constant that `#[swapkit_guest::patch]` puts next to function `f`, and that
/// `export_plugin!` lists.
fn patch_export_ident(f: &syn::Ident) -> syn::Ident {
    format_ident!("__swapkit_export_{}", f)
}
