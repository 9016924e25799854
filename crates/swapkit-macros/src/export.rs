//! `export_plugin!`: the ABI v1 header and dispatch table of one plugin type.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{bracketed, Ident, LitStr, Path, Token, Type};

struct Spec {
    plugin: Type,
    name: Option<LitStr>,
    version: Option<LitStr>,
    interfaces: Vec<Path>,
    dependencies: Vec<Dep>,
    patches: Vec<Path>,
    live: Vec<Path>,
    reloadable: Option<syn::LitBool>,
}

/// `"plugin"` or `"plugin" => [path::Trait, ..]`.
struct Dep {
    plugin: LitStr,
    interfaces: Vec<Path>,
}

impl Parse for Dep {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let plugin = input.parse()?;
        let mut interfaces = vec![];
        if input.peek(Token![=>]) {
            input.parse::<Token![=>]>()?;
            let content;
            bracketed!(content in input);
            interfaces = Punctuated::<Path, Token![,]>::parse_terminated(&content)?
                .into_iter()
                .collect();
        }
        Ok(Dep { plugin, interfaces })
    }
}

impl Parse for Spec {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut plugin = None;
        let mut name = None;
        let mut version = None;
        let mut interfaces = None;
        let mut dependencies = vec![];
        let mut patches = vec![];
        let mut live = vec![];
        let mut reloadable = None;
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            match key.to_string().as_str() {
                "plugin" => plugin = Some(input.parse()?),
                "name" => name = Some(input.parse()?),
                "version" => version = Some(input.parse()?),
                "reloadable" => reloadable = Some(input.parse()?),
                "interfaces" => {
                    let content;
                    bracketed!(content in input);
                    let list = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
                    interfaces = Some(list.into_iter().collect());
                }
                "dependencies" => {
                    let content;
                    bracketed!(content in input);
                    let list = Punctuated::<Dep, Token![,]>::parse_terminated(&content)?;
                    dependencies = list.into_iter().collect();
                }
                "patches" => {
                    let content;
                    bracketed!(content in input);
                    let list = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
                    patches = list.into_iter().collect();
                }
                "live" => {
                    let content;
                    bracketed!(content in input);
                    let list = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
                    live = list.into_iter().collect();
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown key `{other}`; expected plugin, name, version, interfaces, dependencies, patches, live or reloadable"
                        ),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        let missing = |what: &str| {
            syn::Error::new(Span::call_site(), format!("export_plugin! needs `{what}`"))
        };
        let plugin = plugin.ok_or_else(|| missing("plugin: YourType"))?;
        let interfaces: Vec<Path> = interfaces.unwrap_or_default();
        if interfaces.is_empty() && patches.is_empty() && live.is_empty() {
            return Err(missing(
                "interfaces: [path::Trait, ...], patches: [path::function, ...] or live: [path::function, ...]",
            ));
        }
        Ok(Spec {
            plugin,
            name,
            version,
            interfaces,
            dependencies,
            patches,
            live,
            reloadable,
        })
    }
}

pub fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let spec: Spec = syn::parse2(input)?;
    let crate_name = std::env::var("CARGO_CRATE_NAME").map_err(|_| {
        syn::Error::new(
            Span::call_site(),
            "export_plugin! must be expanded by cargo (CARGO_CRATE_NAME is unset)",
        )
    })?;
    let symbol = format!("swapkit_plugin__{crate_name}");
    let claims_symbol = format!("swapkit_claims__{crate_name}");
    let plugin = &spec.plugin;
    let name = match &spec.name {
        Some(n) => quote!(#n),
        None => quote!(env!("CARGO_PKG_NAME")),
    };
    let version = match &spec.version {
        Some(v) => quote!(#v),
        None => quote!(env!("CARGO_PKG_VERSION")),
    };
    let reloadable = spec.reloadable.as_ref().is_none_or(|b| b.value);
    let deps = spec.dependencies.iter().map(|d| {
        let plugin = &d.plugin;
        let ifaces = d.interfaces.iter().map(|p| {
            quote!((<dyn #p as ::swapkit_guest::abi::Interface>::NAME, <dyn #p as ::swapkit_guest::abi::Interface>::HASH))
        });
        quote!((#plugin, &[#(#ifaces),*]))
    });
    let decls = spec
        .interfaces
        .iter()
        .map(|p| quote!(::swapkit_guest::abi::InterfaceDecl::of::<dyn #p>()));
    let exported = |p: &Path| {
        let mut p = p.clone();
        if let Some(last) = p.segments.last_mut() {
            last.ident = crate::patch_export_ident(&last.ident);
        }
        p
    };
    let patches = spec.patches.iter().map(exported);
    let live = spec.live.iter().map(exported);
    let arms = spec.interfaces.iter().enumerate().map(|(i, p)| {
        let i = i as u32;
        quote!(#i => <dyn #p as ::swapkit_guest::abi::Dispatch<Self>>::dispatch(self, method, input, out),)
    });
    let start_arms = spec.interfaces.iter().enumerate().map(|(i, p)| {
        let i = i as u32;
        quote!(#i => <dyn #p as ::swapkit_guest::abi::Dispatch<Self>>::start(self, method, input),)
    });
    let lanes_of = |p: &Path| quote!(<dyn #p as ::swapkit_guest::abi::lane::Lanes<#plugin, ::swapkit_guest::__rt::LaneGlue>>);
    let lane_parts: Vec<TokenStream> = spec.interfaces.iter().map(lanes_of).collect();
    let lane_arms = spec.interfaces.iter().enumerate().map(|(i, p)| {
        let i = i as u32;
        let lanes = lanes_of(p);
        // SAFETY: forwarded from the caller.
        quote!(#i => unsafe { #lanes::wasm(self, method, args) },)
    });

    Ok(quote! {
        impl ::swapkit_guest::__rt::Exports for #plugin {
            const NAME: &'static str = #name;
            const VERSION: &'static str = #version;
            const CRATE_NAME: &'static str = #crate_name;
            const DEPENDENCIES: &'static [(&'static str, &'static [(&'static str, u64)])] = &[#(#deps),*];
            const PATCHES: &'static [::swapkit_guest::__rt::PatchExport] = &[#(#patches),*];
            const LIVE: &'static [::swapkit_guest::__rt::LiveExport] = &[#(#live),*];
            const RELOADABLE: bool = #reloadable;
            const LANES: &'static [::swapkit_guest::abi::lane::LaneEntry] =
                &::swapkit_guest::abi::lane::lane_table::<{ 0 #(+ #lane_parts::NATIVE.len())* }>(
                    &[#(#lane_parts::NATIVE),*],
                );

            fn interfaces() -> ::swapkit_guest::__rt::Vec<::swapkit_guest::abi::InterfaceDecl> {
                ::swapkit_guest::__rt::vec![#(#decls),*]
            }

            fn start(
                &self,
                interface: u32,
                method: u32,
                input: &[u8],
            ) -> ::core::option::Option<::core::result::Result<::swapkit_guest::abi::future::BoxedCall<'_>, ::swapkit_guest::abi::DispatchError>> {
                match interface {
                    #(#start_arms)*
                    _ => ::core::option::Option::None,
                }
            }

            fn dispatch(
                &self,
                interface: u32,
                method: u32,
                input: &[u8],
                out: &mut ::swapkit_guest::__rt::Vec<u8>,
            ) -> ::core::result::Result<(), ::swapkit_guest::abi::DispatchError> {
                match interface {
                    #(#arms)*
                    other => ::core::result::Result::Err(::swapkit_guest::abi::DispatchError::UnknownInterface(other)),
                }
            }

            unsafe fn lane_wasm(
                &self,
                interface: u32,
                method: u32,
                args: &[u64; ::swapkit_guest::abi::lane::WASM_ARGS],
            ) -> ::core::option::Option<u64> {
                match interface {
                    #(#lane_arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }

        /// The wasm32 entry points: the same glue, exported as module functions.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_abi_version() -> u32 {
                ::swapkit_guest::__rt::wasm::abi_version()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_out_slot() -> u32 {
                ::swapkit_guest::__rt::wasm::out_slot()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_input(len: u32) -> u32 {
                ::swapkit_guest::__rt::wasm::input(len)
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_manifest() -> u32 {
                ::swapkit_guest::__rt::wasm::manifest::<#plugin>()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_load() -> u32 {
                ::swapkit_guest::__rt::wasm::load::<#plugin>()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_init() -> u32 {
                ::swapkit_guest::__rt::wasm::init::<#plugin>()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_free() -> u32 {
                ::swapkit_guest::__rt::wasm::free::<#plugin>()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_call(interface: u32, method: u32, len: u32) -> u32 {
                ::swapkit_guest::__rt::wasm::call::<#plugin>(interface, method, len)
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_lanes() -> u32 {
                ::swapkit_guest::__rt::wasm::lanes::<#plugin>()
            }
            #[unsafe(no_mangle)]
            extern "C" fn swapkit_lane(
                interface: u32,
                method: u32,
                a0: u64,
                a1: u64,
                a2: u64,
                a3: u64,
                a4: u64,
                a5: u64,
            ) -> u64 {
                ::swapkit_guest::__rt::wasm::lane::<#plugin>(interface, method, [a0, a1, a2, a3, a4, a5])
            }
        };

        /// What this plugin says it is (name, version, build fingerprint), as plain bytes a
        /// tool reads from the file without running it: `swapkit sign` and `verify` do.
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(export_name = #claims_symbol)]
        #[used]
        pub static SWAPKIT_CLAIMS: [u8; ::swapkit_guest::abi::claims::CLAIMS_LEN] =
            ::swapkit_guest::abi::claims::encode(#name, #version);
        /// The same claims, as the wasm module's custom section `swapkit.claims`.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "swapkit.claims")]
        #[used]
        pub static SWAPKIT_CLAIMS: [u8; ::swapkit_guest::abi::claims::CLAIMS_LEN] =
            ::swapkit_guest::abi::claims::encode(#name, #version);

        /// The ABI v1 header of this plugin, with its lanes. A native host finds it by its exported symbol; a
        /// static host registers it directly.
        #[unsafe(export_name = #symbol)]
        pub static SWAPKIT_PLUGIN: ::swapkit_guest::abi::ExtendedHeader = ::swapkit_guest::__rt::header::<#plugin>();
    })
}
