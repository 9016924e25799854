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
mod patchable;

/// Turns a trait into a swapkit interface. See `swapkit_abi::interface`.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    interface::expand(attr.into(), item.into())
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
