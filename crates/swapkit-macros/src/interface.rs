//! `#[interface]`: the typed client, the guest dispatch and the hash of a trait.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use syn::spanned::Spanned;

use crate::canonical;
use syn::{FnArg, ItemTrait, LitStr, Pat, ReturnType, TraitItem, Type};

/// One method, as both sides see it.
struct Method {
    sig: syn::Signature,
    attrs: Vec<syn::Attribute>,
    args: Vec<(syn::Ident, Type)>,
    ret: Type,
    /// An `async fn`: its future lives in the plugin, driven through `call_async`.
    is_async: bool,
}

pub fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let Attr {
        name: name_override,
        plain,
    } = parse_attr(attr)?;
    let mut trait_: ItemTrait = syn::parse2(item)?;
    if !trait_.generics.params.is_empty() || trait_.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            trait_.generics.span(),
            "a swapkit interface cannot be generic: its methods must have one fixed wire signature",
        ));
    }
    let methods = trait_
        .items
        .iter()
        .map(method)
        .collect::<syn::Result<Vec<_>>>()?;

    let abi = crate::abi_path()?;
    let ident = &trait_.ident;
    let vis = &trait_.vis;
    let name = name_override.unwrap_or_else(|| ident.to_string());
    let client = format_ident!("{}Client", ident);
    let signature = methods
        .iter()
        .map(|m| {
            let args: Vec<String> = m.args.iter().map(|(_, t)| canonical(t)).collect();
            let prefix = if m.is_async { "async " } else { "" };
            format!(
                "{prefix}{}({})->{}",
                m.sig.ident,
                args.join(","),
                canonical(&m.ret)
            )
        })
        .collect::<Vec<_>>()
        .join(";");
    let method_names: Vec<String> = methods.iter().map(|m| m.sig.ident.to_string()).collect();
    let plain_names: Vec<String> = plain.iter().map(canonical).collect();
    let lanes: Vec<bool> = methods
        .iter()
        .map(|m| !m.is_async && has_lane(m, &plain_names))
        .collect();
    // An async method whose arguments are plain values (no borrows: its future outlives the
    // call that starts it) and whose result a lane returns starts through an async lane.
    let async_lanes: Vec<bool> = methods
        .iter()
        .map(|m| {
            m.is_async
                && has_lane(m, &plain_names)
                && m.args.iter().all(|(_, t)| !matches!(t, Type::Reference(_)))
        })
        .collect();
    let any_async = methods.iter().any(|m| m.is_async);
    // An async method's future must be `Send`, whichever thread polls the call: the trait
    // says so (`fn m(..) -> impl Future<Output = R> + Send`), and an implementation writes
    // `async fn m(..)`. Its plugin is shared by the calls in flight, so it is `Sync`.
    if any_async {
        for item in &mut trait_.items {
            if let TraitItem::Fn(f) = item {
                if f.sig.asyncness.take().is_some() {
                    let ret = match &f.sig.output {
                        ReturnType::Default => quote!(()),
                        ReturnType::Type(_, t) => t.to_token_stream(),
                    };
                    f.sig.output = syn::parse_quote!(
                        -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send
                    );
                    // Out of the trait object's vtable, so `dyn Trait` stays a type: the
                    // host calls it through the ABI, never through a vtable.
                    f.sig
                        .generics
                        .make_where_clause()
                        .predicates
                        .push(syn::parse_quote!(Self: ::core::marker::Sized));
                }
            }
        }
        trait_
            .supertraits
            .push(syn::parse_quote!(::core::marker::Sync));
    }
    // The layouts of the plain structs cross the lanes as bytes, so they are part of the
    // interface: a field added, removed, renamed or retyped changes the hash. An interface
    // that names none keeps the hash of its signature alone.
    let hash = if plain.is_empty() {
        quote!(#abi::hash::interface_hash(#name, #signature))
    } else {
        quote!(#abi::lane::mix(
            #abi::hash::interface_hash(#name, #signature),
            &[#(<#plain as #abi::lane::Plain>::LAYOUT),*],
        ))
    };

    let client_methods = methods.iter().enumerate().map(|(i, m)| {
        let index = i as u32;
        let fn_name = &m.sig.ident;
        let ret = &m.ret;
        let params = m.args.iter().map(|(a, t)| quote!(#a: #t));
        let names: Vec<_> = m.args.iter().map(|(a, _)| a).collect();
        let attrs = &m.attrs;
        if m.is_async {
            if !async_lanes[i] {
                return quote! {
                    #(#attrs)*
                    pub async fn #fn_name(&self, #(#params),*) -> ::core::result::Result<#ret, T::Error>
                    where
                        T: ::core::marker::Sync,
                        #ret: ::core::marker::Send,
                    {
                        self.transport.call_async::<_, #ret>(#index, (#(#names,)*)).await
                    }
                };
            }
            let call =
                quote!(self.transport.call_async_lane::<_, #ret>(#index, (#(#names,)*)));
            // A method with an async lane takes its arguments by value (they borrow nothing):
            // the transport's future itself, with no `async` block around it to copy them into
            // first, awaited as an `async fn` is, and `Send`, as it says.
            return quote! {
                #(#attrs)*
                pub fn #fn_name(&self, #(#params),*) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#ret, T::Error>,
                > + ::core::marker::Send + '_
                where
                    T: ::core::marker::Sync,
                    #ret: ::core::marker::Send,
                {
                    #call
                }
            };
        }
        let call = if lanes[i] {
            quote!(self.transport.call_lane::<_, #ret>(#index, (#(#names,)*)))
        } else {
            quote!(self.transport.call::<_, #ret>(#index, &(#(#names,)*)))
        };
        quote! {
            #(#attrs)*
            pub fn #fn_name(&self, #(#params),*) -> ::core::result::Result<#ret, T::Error> {
                #call
            }
        }
    });

    let lane_fns = methods
        .iter()
        .enumerate()
        .filter(|(i, _)| lanes[*i] || async_lanes[*i])
        .map(|(i, m)| native_lane(&abi, ident, i, m));
    let lane_entries = methods
        .iter()
        .enumerate()
        .filter(|(i, _)| lanes[*i] || async_lanes[*i])
        .map(|(i, _)| {
            let index = i as u32;
            let f = lane_fn_ident(i);
            quote!(#abi::lane::LaneEntry {
                hash: #abi::lane::method_hash(<dyn #ident as #abi::Interface>::HASH, #index),
                entry: #f::<__I, __G> as *const (),
            })
        });
    // Each method's wasm lane is a function of its own, so that a call pays for its own
    // method's frame, not for the largest of the interface.
    let wasm_fns = methods
        .iter()
        .enumerate()
        .filter(|(i, _)| lanes[*i])
        .map(|(i, m)| {
            let f = format_ident!("__swapkit_wasm_lane_{}", i);
            let fn_name = &m.sig.ident;
            let ret = &m.ret;
            let names: Vec<_> = m.args.iter().map(|(a, _)| a).collect();
            let unpack = m.args.iter().enumerate().map(|(k, (a, t))| {
                quote! {
                    // SAFETY: the host staged this method's arguments (the caller's contract).
                    let #a = unsafe { <#t as #abi::lane::LaneArg>::from_wasm(args[#k]) };
                }
            });
            quote! {
                #[inline(never)]
                #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
                unsafe fn #f<__I: #ident, __G: #abi::lane::Glue>(
                    imp: &__I,
                    args: &[u64; #abi::lane::WASM_ARGS],
                ) -> u64 {
                    #(#unpack)*
                    let result: #ret = <__I as #ident>::#fn_name(imp, #(#names),*);
                    __G::wasm_result(result)
                }
            }
        });
    let wasm_arms = methods
        .iter()
        .enumerate()
        .filter(|(i, _)| lanes[*i])
        .map(|(i, _)| {
            let index = i as u32;
            let f = format_ident!("__swapkit_wasm_lane_{}", i);
            quote! {
                // SAFETY: forwarded from the caller.
                #index => ::core::option::Option::Some(unsafe { #f::<__I, __G>(imp, args) }),
            }
        });

    let dispatch_arms = methods.iter().enumerate().map(|(i, m)| {
        let index = i as u32;
        if m.is_async {
            // Called synchronously: it must complete without awaiting.
            return quote! {
                #index => {
                    let call = <dyn #ident as #abi::Dispatch<__I>>::start(imp, #index, input)
                        .ok_or(#abi::DispatchError::UnknownMethod(#index))??;
                    out.extend_from_slice(&#abi::future::now(call)?);
                    ::core::result::Result::Ok(())
                }
            };
        }
        let fn_name = &m.sig.ident;
        let (decode_tys, passes): (Vec<_>, Vec<_>) =
            m.args.iter().map(|(a, t)| decode_plan(&abi, a, t)).unzip();
        let names = m.args.iter().map(|(a, _)| a);
        quote! {
            #index => {
                let (#(#names,)*): (#(#decode_tys,)*) = #abi::wire::from_bytes(input)
                    .map_err(#abi::DispatchError::BadInput)?;
                let result = <__I as #ident>::#fn_name(imp, #(#passes),*);
                #abi::wire::encode_into(&result, out).map_err(#abi::DispatchError::Encode)
            }
        }
    });

    let start_arms = methods
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_async)
        .map(|(i, m)| {
            let index = i as u32;
            let fn_name = &m.sig.ident;
            let (decode_tys, passes): (Vec<_>, Vec<_>) =
                m.args.iter().map(|(a, t)| owned_plan(&abi, a, t)).unzip();
            let names = m.args.iter().map(|(a, _)| a);
            quote! {
                #index => ::core::option::Option::Some((|| {
                    let (#(#names,)*): (#(#decode_tys,)*) = #abi::wire::from_bytes(input)
                        .map_err(#abi::DispatchError::BadInput)?;
                    let call: #abi::future::BoxedCall<'a> = #abi::__private::Box::pin(async move {
                        let result = <__I as #ident>::#fn_name(imp, #(#passes),*).await;
                        let mut out = #abi::__private::Vec::new();
                        #abi::wire::encode_into(&result, &mut out).map_err(#abi::DispatchError::Encode)?;
                        ::core::result::Result::Ok(out)
                    });
                    ::core::result::Result::Ok(call)
                })()),
            }
        });
    let start_fn = any_async.then(|| {
        quote! {
            #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
            fn start<'a>(
                imp: &'a __I,
                method: u32,
                input: &[u8],
            ) -> ::core::option::Option<::core::result::Result<#abi::future::BoxedCall<'a>, #abi::DispatchError>> {
                match method {
                    #(#start_arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    });
    // An async method's future borrows the plugin across threads, and its method is callable
    // on a sized type only.
    let sync_bound = any_async.then(|| quote!(+ ::core::marker::Sync));
    let maybe_unsized = (!any_async).then(|| quote!(+ ?Sized));

    let doc = format!(
        "Host-side typed client for [`{ident}`], generated by `#[interface]`. Each method calls \
         the implementation through the transport and returns its result, or the transport's \
         error."
    );
    Ok(quote! {
        #trait_

        impl #abi::Interface for dyn #ident {
            const NAME: &'static str = #name;
            const SIGNATURE: &'static str = #signature;
            const HASH: u64 = #hash;
            const METHODS: &'static [&'static str] = &[#(#method_names),*];
            type Client<T: #abi::Transport> = #client<T>;
            fn client<T: #abi::Transport>(transport: T) -> #client<T> {
                #client { transport }
            }
        }

        impl<__I: #ident #sync_bound #maybe_unsized> #abi::Dispatch<__I> for dyn #ident {
            #start_fn

            #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
            fn dispatch(
                imp: &__I,
                method: u32,
                input: &[u8],
                out: &mut #abi::__private::Vec<u8>,
            ) -> ::core::result::Result<(), #abi::DispatchError> {
                match method {
                    #(#dispatch_arms)*
                    other => ::core::result::Result::Err(#abi::DispatchError::UnknownMethod(other)),
                }
            }
        }

        const _: () = {
            #(#lane_fns)*
            #(#wasm_fns)*

            // SAFETY: each entry is the lane of the method its hash names, made above from
            // that method's own argument and result types.
            unsafe impl<__I: #ident, __G: #abi::lane::Glue> #abi::lane::Lanes<__I, __G> for dyn #ident {
                const NATIVE: &'static [#abi::lane::LaneEntry] = &[#(#lane_entries),*];

                #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
                unsafe fn wasm(
                    imp: &__I,
                    method: u32,
                    args: &[u64; #abi::lane::WASM_ARGS],
                ) -> ::core::option::Option<u64> {
                    match method {
                        #(#wasm_arms)*
                        _ => ::core::option::Option::None,
                    }
                }
            }
        };

        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #client<T> {
            transport: T,
        }

        impl<T: #abi::Transport> #client<T> {
            #(#client_methods)*

            /// The transport this client calls through.
            pub fn transport(&self) -> &T {
                &self.transport
            }
        }
    })
}

/// The arguments of `#[interface(..)]`.
struct Attr {
    name: Option<String>,
    /// `plain = [Type, ..]`: the `#[derive(Plain)]` structs whose methods get a lane.
    plain: Vec<syn::Path>,
}

fn parse_attr(attr: TokenStream) -> syn::Result<Attr> {
    let mut out = Attr {
        name: None,
        plain: vec![],
    };
    if attr.is_empty() {
        return Ok(out);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            out.name = Some(lit.value());
            Ok(())
        } else if meta.path.is_ident("plain") {
            let list: syn::ExprArray = meta.value()?.parse()?;
            for e in list.elems {
                match e {
                    syn::Expr::Path(p) if p.qself.is_none() => out.plain.push(p.path),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`plain` lists struct types: `plain = [Point, Quote]`",
                        ))
                    }
                }
            }
            Ok(())
        } else {
            Err(meta.error("unknown argument; expected `name = \"...\"` or `plain = [Type, ..]`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(out)
}

/// The numbers and `bool` and `char`: what a lane passes as one value. Pointer-sized integers
/// are left out, since a wasm guest's differ from the host's.
const SCALARS: [&str; 12] = [
    "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "bool", "char",
];

/// Whether every argument and the result of `m` are plain data, so that it gets a lane.
fn has_lane(m: &Method, plain: &[String]) -> bool {
    let scalar = |t: &Type| SCALARS.contains(&canonical(t).as_str());
    let element = |t: &Type| scalar(t) || plain.contains(&canonical(t));
    let arg = |t: &Type| match t {
        Type::Reference(r) => match &*r.elem {
            Type::Slice(s) => element(&s.elem),
            inner => canonical(inner) == "str" || plain.contains(&canonical(inner)),
        },
        t => element(t),
    };
    let ret = |t: &Type| {
        let text = canonical(t);
        if element(t) || text == "()" || text == "String" {
            return true;
        }
        match t {
            Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
                let seg = &p.path.segments[0];
                match &seg.arguments {
                    syn::PathArguments::AngleBracketed(a)
                        if seg.ident == "Vec" && a.args.len() == 1 =>
                    {
                        matches!(&a.args[0], syn::GenericArgument::Type(e) if element(e))
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    };
    m.args.len() <= 6 && m.args.iter().all(|(_, t)| arg(t)) && ret(&m.ret)
}

fn lane_fn_ident(i: usize) -> syn::Ident {
    format_ident!("__swapkit_lane_{}", i)
}

/// The native lane of method `i`: an `extern "C"` function taking the instance, each argument
/// in its raw form, and the message slot, and returning the status with the result. An async
/// method's lane takes a slot for its handle too, and starts its future (ABI.md §11).
fn native_lane(abi: &TokenStream, ident: &syn::Ident, i: usize, m: &Method) -> TokenStream {
    let f = lane_fn_ident(i);
    let fn_name = &m.sig.ident;
    let ret = &m.ret;
    let names: Vec<_> = m.args.iter().map(|(a, _)| a).collect();
    let params = m
        .args
        .iter()
        .map(|(a, t)| quote!(#a: <#t as #abi::lane::LaneArg>::Raw));
    let unpack = m.args.iter().map(|(a, t)| {
        quote! {
            // SAFETY: the host passed this argument's raw form, for the call.
            let #a = unsafe { <#t as #abi::lane::LaneArg>::from_raw(#a) };
        }
    });
    if m.is_async {
        return quote! {
            #[allow(improper_ctypes_definitions, clippy::unit_arg, clippy::let_unit_value)]
            unsafe extern "C" fn #f<__I: #ident, __G: #abi::lane::Glue>(
                instance: *mut ::core::ffi::c_void,
                #(#params,)*
                handle: *mut u64,
                out: *mut #abi::RawSlice,
            ) -> #abi::lane::LaneRet<<#ret as #abi::lane::LaneResult>::Raw> {
                #(#unpack)*
                // SAFETY: the host passes the instance `load` made for this plugin type, live
                // for the call, and writable `handle` and `out`.
                unsafe {
                    __G::native_async::<__I, _, #ret>(instance, handle, out, move |imp| {
                        <__I as #ident>::#fn_name(imp, #(#names),*)
                    })
                }
            }
        };
    }
    quote! {
        #[allow(improper_ctypes_definitions, clippy::unit_arg, clippy::let_unit_value)]
        unsafe extern "C" fn #f<__I: #ident, __G: #abi::lane::Glue>(
            instance: *mut ::core::ffi::c_void,
            #(#params,)*
            out: *mut #abi::RawSlice,
        ) -> #abi::lane::LaneRet<<#ret as #abi::lane::LaneResult>::Raw> {
            // SAFETY: the host passes the instance `load` made, whose plugin object it points
            // at, live for the call.
            let imp = unsafe { &*(instance as *const __I) };
            #(#unpack)*
            __G::native::<#ret>(out, move || <__I as #ident>::#fn_name(imp, #(#names),*))
        }
    }
}

fn method(item: &TraitItem) -> syn::Result<Method> {
    let TraitItem::Fn(f) = item else {
        return Err(syn::Error::new(
            item.span(),
            "a swapkit interface may contain only methods (no associated types or consts)",
        ));
    };
    let sig = &f.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "interface methods cannot be generic",
        ));
    }
    if f.default.is_some() {
        return Err(syn::Error::new(
            f.default.span(),
            "interface methods cannot have a default body: the plugin provides every method",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        _ => {
            return Err(syn::Error::new(
                sig.span(),
                "interface methods take `&self`: calls run concurrently on one shared instance",
            ))
        }
    }
    let mut args = vec![];
    for (i, arg) in inputs.enumerate() {
        let FnArg::Typed(pt) = arg else {
            unreachable!("receiver only comes first")
        };
        if let Type::Reference(r) = &*pt.ty {
            if r.mutability.is_some() {
                return Err(syn::Error::new(
                    pt.ty.span(),
                    "`&mut` arguments cannot cross the plugin boundary",
                ));
            }
        }
        if let Type::ImplTrait(_) = &*pt.ty {
            return Err(syn::Error::new(
                pt.ty.span(),
                "`impl Trait` arguments cannot cross the plugin boundary",
            ));
        }
        let ident = match &*pt.pat {
            Pat::Ident(p) => p.ident.clone(),
            _ => format_ident!("arg{}", i),
        };
        args.push((ident, (*pt.ty).clone()));
    }
    let ret = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    let attrs = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    Ok(Method {
        is_async: sig.asyncness.is_some(),
        sig: sig.clone(),
        attrs,
        args,
        ret,
    })
}

/// [`decode_plan`] for an async method, whose future outlives the input: every argument is
/// decoded as an owned value (`&str` as a `String`, `&[T]` as a `Vec<T>`) and lent from the
/// future.
fn owned_plan(abi: &TokenStream, name: &syn::Ident, ty: &Type) -> (TokenStream, TokenStream) {
    if let Type::Reference(r) = ty {
        let inner = &*r.elem;
        return match inner {
            Type::Slice(s) => {
                let elem = &s.elem;
                (quote!(#abi::__private::Vec<#elem>), quote!(&#name))
            }
            _ if canonical(inner) == "str" => (quote!(#abi::__private::String), quote!(&#name)),
            _ => (quote!(#inner), quote!(&#name)),
        };
    }
    (ty.to_token_stream(), quote!(#name))
}

/// The type to decode an argument as, and the expression that passes it to the method:
/// `&str` and `&[u8]` borrow from the input; any other `&T` decodes a `T` and lends it.
pub(crate) fn decode_plan(
    abi: &TokenStream,
    name: &syn::Ident,
    ty: &Type,
) -> (TokenStream, TokenStream) {
    if let Type::Reference(r) = ty {
        let inner = &*r.elem;
        let borrowable = matches!(canonical(inner).as_str(), "str" | "[u8]");
        if borrowable {
            return (quote!(&#inner), quote!(#name));
        }
        if let Type::Slice(s) = inner {
            let elem = &s.elem;
            return (quote!(#abi::__private::Vec<#elem>), quote!(&#name));
        }
        return (quote!(#inner), quote!(&#name));
    }
    (ty.to_token_stream(), quote!(#name))
}
