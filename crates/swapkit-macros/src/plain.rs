//! `#[derive(Plain)]`: a `#[repr(C)]` struct whose bytes a direct lane passes as they are.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

pub fn derive(input: TokenStream) -> syn::Result<TokenStream> {
    let item: DeriveInput = syn::parse2(input)?;
    let name = &item.ident;
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a Plain struct cannot be generic: its layout must be one fixed thing on both sides",
        ));
    }
    let Data::Struct(data) = &item.data else {
        return Err(syn::Error::new(
            item.span(),
            "only a struct can be Plain; an enum may hold values its type does not allow, so it \
             keeps the encoded path",
        ));
    };
    check_repr(&item)?;
    let (fields, tys): (Vec<TokenStream>, Vec<&syn::Type>) = match &data.fields {
        Fields::Named(f) => f
            .named
            .iter()
            .map(|f| (f.ident.to_token_stream(), &f.ty))
            .unzip(),
        Fields::Unnamed(f) => f
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| (syn::Index::from(i).to_token_stream(), &f.ty))
            .unzip(),
        Fields::Unit => (vec![], vec![]),
    };
    let abi = crate::abi_path()?;
    let text = format!(
        "{name}{{{}}}",
        fields
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let padding = format!(
        "`{name}` has padding bytes, which a lane would copy uninitialised: reorder its fields \
         from the largest to the smallest, or add explicit padding fields"
    );
    let empty = format!(
        "`{name}` has no bytes: a zero-sized struct carries nothing across a lane, and the \
         host could not count its elements in a result; give it a field or pass `()`"
    );
    Ok(quote! {
        const _: () = {
            assert!(
                ::core::mem::size_of::<#name>() == 0 #(+ ::core::mem::size_of::<#tys>())*,
                #padding
            );
            assert!(::core::mem::size_of::<#name>() != 0, #empty);
        };

        // SAFETY: `#[repr(C)]` (checked by the derive), no padding (asserted above), and every
        // field is `Plain`, so it has no pointers; `valid` checks every field.
        unsafe impl #abi::lane::Plain for #name {
            const LAYOUT: u64 = #abi::lane::mix(
                #abi::hash::fnv1a64(#text.as_bytes()),
                &[#(<#tys as #abi::lane::Plain>::LAYOUT),*],
            );
            const ANY_BITS: bool = true #(&& <#tys as #abi::lane::Plain>::ANY_BITS)*;
            #[inline]
            fn valid(bytes: &[u8]) -> bool {
                if bytes.len() != ::core::mem::size_of::<Self>() {
                    return false;
                }
                <Self as #abi::lane::Plain>::ANY_BITS
                    || (true #(&& <#tys as #abi::lane::Plain>::valid(
                        &bytes[::core::mem::offset_of!(Self, #fields)..]
                            [..::core::mem::size_of::<#tys>()],
                    ))*)
            }
        }

        #abi::__lane_struct!(#name);
    })
}

/// A Plain struct must be `#[repr(C)]` (field order and offsets fixed), and neither packed
/// (fields would be unaligned) nor over-aligned (padding at the end).
fn check_repr(item: &DeriveInput) -> syn::Result<()> {
    let mut c = false;
    for attr in item.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("C") {
                c = true;
                Ok(())
            } else {
                Err(meta.error(
                    "a Plain struct must be exactly `#[repr(C)]`: packed or aligned layouts \
                     are not plain",
                ))
            }
        })?;
    }
    if !c {
        return Err(syn::Error::new(
            item.ident.span(),
            "a Plain struct must be `#[repr(C)]`, so that its layout is the same in the host and \
             in every plugin",
        ));
    }
    Ok(())
}
