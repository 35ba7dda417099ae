//! `#[kernel]` and `#[device]`: Kiln's attribute macros. They are thin: parse the function,
//! let `kiln-codegen` check it (errors become `compile_error!` at the offending span), and
//! emit the function's descriptor, its specialisation builder and the rustc checks of
//! device-function calls.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote, quote_spanned};

use kiln_codegen::front::{check_function, Checked, KernelAttrs};
use kiln_codegen::ir::{FnKind, Generic};
use kiln_codegen::types::{Scalar, Ty};
use kiln_codegen::FnDef;

/// Marks a function as a GPU kernel written in the Kiln language.
///
/// The body is checked at build time and lowered to CUDA when the kernel is specialised:
/// `name::spec()` returns a builder with one method per comptime parameter.
/// `#[kernel(threads = 256)]` promises the block size (emitted as `__launch_bounds__`).
#[proc_macro_attribute]
pub fn kernel(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into(), FnKind::Kernel).into()
}

/// Marks a function as a device function: callable from kernels (also in other crates),
/// inlined into each kernel that uses it.
#[proc_macro_attribute]
pub fn device(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into(), FnKind::Device).into()
}

fn expand(attr: Tokens, item: Tokens, kind: FnKind) -> Tokens {
    match try_expand(attr, item, kind) {
        Ok(t) => t,
        Err(e) => e.to_compile_error(),
    }
}

fn try_expand(attr: Tokens, item: Tokens, kind: FnKind) -> syn::Result<Tokens> {
    let item: syn::ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("#[kernel] and #[device] apply to functions: {e}"),
        )
    })?;
    let (attrs, examples) = parse_attrs(attr, kind)?;
    for a in &item.attrs {
        if !a.path().is_ident("doc") {
            return Err(syn::Error::new_spanned(
                a,
                "attributes other than doc comments are not supported on Kiln functions\n  = hint: options go inside the macro: `#[kernel(threads = 256)]`",
            ));
        }
    }
    let checked = check_function(&item, kind, &attrs).map_err(|d| d.to_syn_error())?;
    let vis = Visibility::of(&item.vis)?;
    let examples = check_examples(&examples, &checked.function)?;
    Ok(match kind {
        FnKind::Kernel => emit_kernel(&item, &checked, &vis, &examples),
        FnKind::Device => emit_device(&item, &checked, &vis, &examples),
    })
}

/// One `example(NAME = value, …)`: (name, value text, span) triples.
type Example = Vec<(String, String, proc_macro2::Span)>;

fn parse_attrs(attr: Tokens, kind: FnKind) -> syn::Result<(KernelAttrs, Vec<Example>)> {
    let mut attrs = KernelAttrs::default();
    let mut examples = Vec::new();
    if attr.is_empty() {
        return Ok((attrs, examples));
    }
    if kind == FnKind::Device {
        return Err(syn::Error::new_spanned(
            attr,
            "#[device] takes no options\n  = hint: write `#[device]`",
        ));
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("threads") {
            let lit: syn::LitInt = meta.value()?.parse()?;
            let n: u32 = lit.base10_parse()?;
            if n == 0 || n > 1024 {
                return Err(syn::Error::new(
                    lit.span(),
                    "`threads` must be in 1..=1024 (the CUDA block-size limit)",
                ));
            }
            attrs.max_threads = Some(n);
            Ok(())
        } else if meta.path.is_ident("example") {
            let mut example = Example::new();
            meta.parse_nested_meta(|inner| {
                let name = inner
                    .path
                    .get_ident()
                    .ok_or_else(|| inner.error("expected a comptime parameter name"))?
                    .to_string();
                let value: syn::Expr = inner.value()?.parse()?;
                let text = quote!(#value).to_string().replace(' ', "");
                example.push((name, text, syn::spanned::Spanned::span(&value)));
                Ok(())
            })?;
            examples.push(example);
            Ok(())
        } else {
            Err(meta.error("unknown #[kernel] option\n  = hint: the options are `threads = N` (the block size the kernel is launched with) and `example(NAME = value, …)` (a specialisation that `kiln check` compiles)"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok((attrs, examples))
}

/// Validates each example against the function's comptime parameters.
fn check_examples(
    examples: &[Example],
    f: &kiln_codegen::ir::Function,
) -> syn::Result<Vec<Vec<(String, String)>>> {
    let mut out = Vec::new();
    for ex in examples {
        let pairs: Vec<(&str, &str)> = ex
            .iter()
            .map(|(n, v, _)| (n.as_str(), v.as_str()))
            .collect();
        if let Err(msg) = kiln_codegen::Bindings::parse_pairs(f, pairs) {
            let span = ex
                .first()
                .map(|e| e.2)
                .unwrap_or_else(proc_macro2::Span::call_site);
            return Err(syn::Error::new(span, format!("{msg}\n  = hint: an example binds every comptime parameter, e.g. `example(N = 4, T = bf16)`")));
        }
        for g in &f.generics {
            if !ex.iter().any(|(n, _, _)| n == g.name()) {
                let span = ex
                    .first()
                    .map(|e| e.2)
                    .unwrap_or_else(proc_macro2::Span::call_site);
                return Err(syn::Error::new(span, format!("this example does not bind `{}`\n  = hint: an example binds every comptime parameter", g.name())));
            }
        }
        out.push(ex.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect());
    }
    Ok(out)
}

/// The visibilities of the emitted items, from the function's.
struct Visibility {
    item: Tokens,
    reexport: Tokens,
}

impl Visibility {
    fn of(vis: &syn::Visibility) -> syn::Result<Visibility> {
        match vis {
            syn::Visibility::Public(_) => Ok(Visibility { item: quote!(pub), reexport: quote!(pub) }),
            syn::Visibility::Inherited => Ok(Visibility { item: quote!(), reexport: quote!(pub(super)) }),
            syn::Visibility::Restricted(r) if r.path.is_ident("crate") && r.in_token.is_none() => {
                Ok(Visibility { item: quote!(pub(crate)), reexport: quote!(pub(crate)) })
            }
            other => Err(syn::Error::new_spanned(other, "Kiln functions are `pub`, `pub(crate)` or private\n  = hint: use one of those visibilities")),
        }
    }
}

fn docs(item: &syn::ItemFn) -> Vec<&syn::Attribute> {
    item.attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect()
}

/// The descriptor static: IR, file, module and the device functions called.
fn descriptor(
    item: &syn::ItemFn,
    checked: &Checked,
    vis: &Visibility,
    examples: &[Vec<(String, String)>],
) -> (syn::Ident, Tokens) {
    let name = &item.sig.ident;
    let static_ident = format_ident!("__kiln_fn_{}", name);
    let name_str = name.to_string();
    let ir = FnDef::encode(&checked.function);
    let mut seen = Vec::new();
    let mut deps = Vec::new();
    for call in &checked.device_calls {
        let text = kiln_codegen::front::expr_path_text(&call.path);
        if seen.contains(&text) {
            continue;
        }
        seen.push(text.clone());
        let mut path = call.path.clone();
        if let Some(last) = path.segments.last_mut() {
            last.arguments = syn::PathArguments::None;
        }
        deps.push(
            quote_spanned!(call.span=> ::kiln::__private::Dep { path: #text, def: &#path::DEF }),
        );
    }
    let v = &vis.item;
    let examples = examples.iter().map(|pairs| {
        let pairs = pairs.iter().map(|(n, val)| quote!((#n, #val)));
        quote!(&[#(#pairs),*])
    });
    let tokens = quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #v static #static_ident: ::kiln::__private::FnDef = ::kiln::__private::FnDef {
            name: #name_str,
            module: ::core::module_path!(),
            file: ::core::file!(),
            ir_json: #ir,
            deps: &[#(#deps),*],
            examples: &[#(#examples),*],
        };
    };
    (static_ident, tokens)
}

/// rustc checks that each device-function call matches the callee's signature.
fn call_checks(item: &syn::ItemFn, checked: &Checked) -> Tokens {
    if checked.device_calls.is_empty() {
        return quote!();
    }
    let generics = &item.sig.generics;
    let names = &checked.function.generics;
    // a closure with one typed parameter per argument, spanned at that argument, calling
    // the device function: rustc then points at the argument whose type is wrong
    // calls that pass array references are checked at specialisation instead: their lengths
    // are comptime expressions that Rust's array types cannot spell
    let plain = checked
        .device_calls
        .iter()
        .filter(|c| !c.args.iter().any(|t| matches!(t, Ty::Ref { .. })));
    let lets = plain.map(|c| {
        let params = c
            .args
            .iter()
            .zip(&c.arg_spans)
            .enumerate()
            .map(|(i, (t, span))| {
                let name = format_ident!("arg{}", i, span = *span);
                let ty = rust_type(t, names);
                quote_spanned!(*span=> #name: #ty)
            });
        let names_used = c
            .arg_spans
            .iter()
            .enumerate()
            .map(|(i, span)| format_ident!("arg{}", i, span = *span));
        let ret = rust_type(&c.ret, names);
        let path = &c.path;
        quote_spanned!(c.span=> let _ = |#(#params),*| -> #ret { #path(#(#names_used),*) };)
    });
    quote! {
        const _: () = {
            #[allow(dead_code, unused_variables, clippy::type_complexity)]
            fn __kiln_check_device_calls #generics () { #(#lets)* }
        };
    }
}

fn scalar_type(s: Scalar, generics: &[Generic]) -> Tokens {
    match s {
        Scalar::F16 => quote!(::kiln::__private::f16),
        Scalar::Bf16 => quote!(::kiln::__private::bf16),
        Scalar::Param(i) => {
            let name = generics
                .get(i as usize)
                .map(|g| g.name().to_string())
                .unwrap_or_default();
            let ident = format_ident!("{}", name);
            quote!(#ident)
        }
        other => {
            let ident = format_ident!("{}", other.rust_name());
            quote!(#ident)
        }
    }
}

fn rust_type(t: &Ty, generics: &[Generic]) -> Tokens {
    match t {
        Ty::Scalar(s) => scalar_type(*s, generics),
        Ty::Slice {
            elem,
            mutable: false,
        } => {
            let e = scalar_type(*elem, generics);
            quote!(&[#e])
        }
        Ty::Slice {
            elem,
            mutable: true,
        } => {
            let e = scalar_type(*elem, generics);
            quote!(&mut [#e])
        }
        Ty::Frag { kind, elem } => {
            let name = format_ident!("{}", kind.rust_name());
            if *kind == kiln_codegen::types::FragKind::C {
                quote!(::kiln::__private::#name)
            } else {
                let e = scalar_type(*elem, generics);
                quote!(::kiln::__private::#name<#e>)
            }
        }
        _ => quote!(()),
    }
}

fn method_ident(name: &str) -> syn::Ident {
    let lower = name.to_lowercase();
    match syn::parse_str::<syn::Ident>(&lower) {
        Ok(id)
            if !matches!(
                lower.as_str(),
                "cuda" | "program" | "bindings" | "build" | "with_const" | "with_type" | "def"
            ) =>
        {
            id
        }
        _ => format_ident!("{}_", lower),
    }
}

fn emit_kernel(
    item: &syn::ItemFn,
    checked: &Checked,
    vis: &Visibility,
    examples: &[Vec<(String, String)>],
) -> Tokens {
    let name = &item.sig.ident;
    let (static_ident, descriptor) = descriptor(item, checked, vis, examples);
    let checks = call_checks(item, checked);
    let docs = docs(item);
    let (v, re) = (&vis.item, &vis.reexport);
    let setters = checked.function.generics.iter().map(|g| match g {
        Generic::Const { name, ty } => {
            let m = method_ident(name);
            let t = scalar_type(*ty, &[]);
            let doc = format!("Sets the comptime value `{name}`.");
            quote! {
                #[doc = #doc]
                pub fn #m(self, value: #t) -> Self { Spec(self.0.with_const(#name, value as i128)) }
            }
        }
        Generic::Type { name } => {
            let m = method_ident(name);
            let doc = format!("Sets the element type `{name}` (f32, f16, bf16 or f64).");
            quote! {
                #[doc = #doc]
                pub fn #m(self, dtype: ::kiln::__private::Dtype) -> Self { Spec(self.0.with_type(#name, dtype)) }
            }
        }
    });
    let launcher = launcher(item, checked);
    quote! {
        #descriptor
        #(#docs)*
        #v mod #name {
            #re use super::#static_ident as DEF;

            /// The comptime values of one specialisation of this kernel.
            #[derive(Clone, Debug)]
            pub struct Spec(pub ::kiln::__private::SpecBuilder);

            /// Starts a specialisation: set every comptime parameter, then build it.
            pub fn spec() -> Spec {
                Spec(::kiln::__private::SpecBuilder::new(&DEF))
            }

            impl Spec {
                #(#setters)*

                /// Specialises for `device`, compiles (or loads from the cache) and loads the kernel.
                pub fn build(&self, device: &::kiln::__private::Device) -> ::core::result::Result<::kiln::__private::Kernel, ::kiln::__private::RuntimeError> {
                    ::kiln::__private::Build::build(&self.0, device)
                }
            }

            #launcher

            impl ::core::ops::Deref for Spec {
                type Target = ::kiln::__private::SpecBuilder;
                fn deref(&self) -> &Self::Target { &self.0 }
            }
        }
        ::kiln::__private::inventory::submit! { ::kiln::__private::Registered(&#static_ident) }
        #checks
    }
}

/// The typed `launch` function: rustc checks each argument against the parameter's type.
fn launcher(item: &syn::ItemFn, checked: &Checked) -> Tokens {
    let f = &checked.function;
    // only the element types some parameter mentions (the others are bound by `spec()` alone)
    let mentioned = |i: usize| {
        f.params.iter().any(
            |p| matches!(p.ty.elem().or(p.ty.scalar()), Some(Scalar::Param(j)) if j as usize == i),
        )
    };
    let type_params: Vec<syn::Ident> = f
        .generics
        .iter()
        .enumerate()
        .filter_map(|(i, g)| match g {
            Generic::Type { name } if mentioned(i) => Some(format_ident!("{}", name)),
            _ => None,
        })
        .collect();
    let mut params = Vec::new();
    let mut args = Vec::new();
    for (p, input) in f.params.iter().zip(item.sig.inputs.iter()) {
        let ident = format_ident!("{}", p.name, span = syn::spanned::Spanned::span(input));
        match &p.ty {
            Ty::Slice {
                elem,
                mutable: false,
            } => {
                let e = scalar_type(*elem, &f.generics);
                params.push(quote!(#ident: &impl ::kiln::__private::AsKernelSlice<#e>));
                args.push(quote!(::kiln::__private::AsKernelSlice::<#e>::kernel_arg(#ident)));
            }
            Ty::Slice {
                elem,
                mutable: true,
            } => {
                let e = scalar_type(*elem, &f.generics);
                params.push(quote!(#ident: &mut impl ::kiln::__private::AsKernelSliceMut<#e>));
                args.push(
                    quote!(::kiln::__private::AsKernelSliceMut::<#e>::kernel_arg_mut(#ident)),
                );
            }
            other => {
                let t = rust_type(other, &f.generics);
                params.push(quote!(#ident: #t));
                args.push(quote!(::kiln::__private::KernelArg::scalar(#ident)));
            }
        }
    }
    let names: Vec<syn::Ident> = f
        .params
        .iter()
        .map(|p| format_ident!("{}", p.name))
        .collect();
    let doc = format!(
        "Launches `{}` on `kernel`'s device (its default stream) with `config`. Buffers may be `DeviceBuffer`s, `MappedBuffer`s or cudarc `CudaSlice`s; element types, lengths and the launch shape are checked before the launch.",
        f.name
    );
    let doc_on = format!(
        "Launches `{}` on `stream`, otherwise like `launch`.",
        f.name
    );
    quote! {
        #[doc = #doc]
        #[allow(clippy::too_many_arguments)]
        pub fn launch<#(#type_params: ::kiln::__private::Element),*>(
            __kiln_kernel: &::kiln::__private::Kernel,
            __kiln_config: &::kiln::__private::LaunchConfig,
            #(#params),*
        ) -> ::core::result::Result<(), ::kiln::__private::RuntimeError> {
            launch_on(__kiln_kernel, &__kiln_kernel.device.default_stream(), __kiln_config, #(#names),*)
        }

        #[doc = #doc_on]
        #[allow(clippy::too_many_arguments)]
        pub fn launch_on<#(#type_params: ::kiln::__private::Element),*>(
            __kiln_kernel: &::kiln::__private::Kernel,
            __kiln_stream: &::kiln::__private::Stream,
            __kiln_config: &::kiln::__private::LaunchConfig,
            #(#params),*
        ) -> ::core::result::Result<(), ::kiln::__private::RuntimeError> {
            let mut args = [#(#args),*];
            __kiln_kernel.launch_args_on(__kiln_stream, __kiln_config, &mut args)
        }
    }
}

/// The signature rustc sees for a device function: array references (`&mut [E; N]`, whose
/// `u32` lengths Rust cannot spell as array types) become an opaque marker.
fn stub_signature(sig: &syn::Signature) -> syn::Signature {
    let mut sig = sig.clone();
    for input in sig.inputs.iter_mut() {
        if let syn::FnArg::Typed(pt) = input {
            if let syn::Type::Reference(r) = &*pt.ty {
                let shared = matches!(&*r.elem, syn::Type::Path(tp) if tp.path.segments.last().is_some_and(|s| s.ident == "Shared"));
                if shared || matches!(&*r.elem, syn::Type::Array(_)) {
                    *pt.ty = syn::parse_quote!(::kiln::__private::ArrayRef);
                }
            }
        }
    }
    sig
}

fn emit_device(
    item: &syn::ItemFn,
    checked: &Checked,
    vis: &Visibility,
    examples: &[Vec<(String, String)>],
) -> Tokens {
    let name = &item.sig.ident;
    let (static_ident, descriptor) = descriptor(item, checked, vis, examples);
    let checks = call_checks(item, checked);
    let docs = docs(item);
    let (v, re) = (&vis.item, &vis.reexport);
    let sig = stub_signature(&item.sig);
    let name_str = name.to_string();
    quote! {
        #descriptor
        #[doc(hidden)]
        #v mod #name {
            #re use super::#static_ident as DEF;
        }
        #(#docs)*
        #[allow(unused_variables, clippy::too_many_arguments)]
        #v #sig {
            ::kiln::__private::device_only(#name_str)
        }
        #checks
    }
}
