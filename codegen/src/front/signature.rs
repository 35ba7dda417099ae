//! Checking a function's signature: generics (comptime parameters), run-time parameters
//! and the result type.

use super::{Checker, KernelAttrs};
use crate::diag::{err, err_hint, Res};
use crate::ir::{FnKind, Function, Generic, Param};
use crate::types::{Scalar, Ty};

impl Checker {
    /// Checks the whole function.
    pub fn function(&mut self, item: &syn::ItemFn, attrs: &KernelAttrs) -> Res<Function> {
        let sig = &item.sig;
        self.fn_name = sig.ident.to_string();
        if let Some(u) = &sig.unsafety {
            return err_hint(
                u,
                "kernels and device functions cannot be `unsafe fn`",
                "remove `unsafe`: Kiln checks the body itself",
            );
        }
        if super::scope::is_reserved(&self.fn_name) {
            return err_hint(
                &sig.ident,
                format!("`{}` is a reserved name in the generated CUDA", self.fn_name),
                "rename the function (C/CUDA keywords, CUDA builtins such as `min`/`max`, and names starting with `kiln_` or `__` are reserved)",
            );
        }
        if let Some(c) = &sig.constness {
            return err(c, "kernels and device functions cannot be `const fn`");
        }
        if let Some(a) = &sig.asyncness {
            return err_hint(a, "kernels cannot be `async`", "remove `async`");
        }
        if let Some(a) = &sig.abi {
            return err_hint(
                a,
                "kernels cannot declare an ABI",
                "remove the `extern` ABI",
            );
        }
        if let Some(v) = &sig.variadic {
            return err(v, "variadic functions are not supported");
        }
        if let Some(w) = &sig.generics.where_clause {
            return err_hint(
                w,
                "`where` clauses are not supported",
                "write bounds inline: `T: Float`",
            );
        }
        for g in &sig.generics.params {
            let generic = self.generic_param(g)?;
            if self.generic(generic.name()).is_some() {
                return err(
                    g,
                    format!("generic parameter `{}` is declared twice", generic.name()),
                );
            }
            self.reserved_names.insert(generic.name().to_string());
            self.generics.push(generic);
        }
        // each slice `x` also passes `x_len`: no parameter or variable may take that name
        for input in &sig.inputs {
            if let syn::FnArg::Typed(pt) = input {
                if let (syn::Pat::Ident(pi), syn::Type::Reference(_)) = (&*pt.pat, &*pt.ty) {
                    self.reserved_names.insert(format!("{}_len", pi.ident));
                }
            }
        }
        let mut params = Vec::new();
        for input in &sig.inputs {
            params.push(self.param(input)?);
        }
        self.ret = match &sig.output {
            syn::ReturnType::Default => Ty::Unit,
            syn::ReturnType::Type(_, ty) => {
                if self.kind == FnKind::Kernel {
                    return err_hint(
                        ty,
                        "a kernel cannot return a value",
                        "write results through a `&mut [T]` parameter",
                    );
                }
                match &**ty {
                    syn::Type::Tuple(t) if t.elems.is_empty() => Ty::Unit,
                    other => match self.frag_type(other) {
                        Some(frag) => frag?,
                        None => Ty::Scalar(self.scalar_type(other)?),
                    },
                }
            }
        };
        let body = self.fn_body(&item.block)?;
        Ok(Function {
            name: self.fn_name.clone(),
            kind: self.kind,
            generics: self.generics.clone(),
            params,
            ret: self.ret.clone(),
            body,
            line: line_of(&sig.ident),
            max_threads: attrs.max_threads,
            file: String::new(),
        })
    }

    fn generic_param(&self, g: &syn::GenericParam) -> Res<Generic> {
        match g {
            syn::GenericParam::Lifetime(l) => err_hint(
                l,
                "lifetime parameters are not supported",
                "kernels need no lifetimes; remove it",
            ),
            syn::GenericParam::Const(c) => {
                if let Some(d) = &c.default {
                    return err(d, "comptime parameters cannot have defaults");
                }
                let ty = self.scalar_type(&c.ty)?;
                if !(ty.is_int() || ty == Scalar::Bool) {
                    return err_hint(
                        &c.ty,
                        "a `const` parameter must be an integer or bool",
                        "use `const N: u32`",
                    );
                }
                Ok(Generic::Const {
                    name: c.ident.to_string(),
                    ty,
                })
            }
            syn::GenericParam::Type(t) => {
                if let Some(d) = &t.default {
                    return err(d, "type parameters cannot have defaults");
                }
                let bounds: Vec<String> = t
                    .bounds
                    .iter()
                    .map(|b| match b {
                        syn::TypeParamBound::Trait(tb) => tb
                            .path
                            .segments
                            .last()
                            .map(|s| s.ident.to_string())
                            .unwrap_or_default(),
                        _ => String::new(),
                    })
                    .collect();
                if bounds != ["Float"] {
                    return err_hint(
                        t,
                        format!("type parameter `{}` must have exactly the bound `Float`", t.ident),
                        "write `T: Float`: it is bound to f32, f16, bf16 or f64 when the kernel is specialised",
                    );
                }
                Ok(Generic::Type {
                    name: t.ident.to_string(),
                })
            }
        }
    }

    fn param(&mut self, input: &syn::FnArg) -> Res<Param> {
        let syn::FnArg::Typed(pt) = input else {
            return err(input, "kernels and device functions take no `self`");
        };
        let syn::Pat::Ident(pi) = &*pt.pat else {
            return err_hint(
                &pt.pat,
                "parameters must be plain names",
                "write `name: type`",
            );
        };
        if let Some(r) = &pi.by_ref {
            return err(r, "`ref` parameters are not supported");
        }
        let name = pi.ident.to_string();
        if self.lookup(&name).is_some() {
            return err(&pi.ident, format!("parameter `{name}` is declared twice"));
        }
        if self.generic(&name).is_some() {
            return err(
                &pi.ident,
                format!("parameter `{name}` has the name of a generic parameter"),
            );
        }
        let ty = match &*pt.ty {
            syn::Type::Reference(r) => {
                if let Some(l) = &r.lifetime {
                    return err_hint(
                        l,
                        "lifetimes are not supported on kernel parameters",
                        "write `&[T]` or `&mut [T]`",
                    );
                }
                if matches!(&*r.elem, syn::Type::Array(_))
                    || matches!(&*r.elem, syn::Type::Path(tp) if tp.path.segments.last().is_some_and(|s| s.ident == "Shared"))
                {
                    if self.kind == FnKind::Kernel {
                        return err_hint(
                            &pt.ty,
                            "kernels cannot take arrays",
                            "pass a slice: `&[T]` or `&mut [T]`; `#[device]` functions take `&mut [E; N]` of register or shared arrays",
                        );
                    }
                    let to = self.array_param_type(&r.elem)?;
                    let mutable = r.mutability.is_some();
                    if let Some(m) = &pi.mutability {
                        return err_hint(
                            m,
                            "`mut` on an array reference has no meaning here",
                            "write `x: &mut [E; N]` to write through it",
                        );
                    }
                    let cname = self.declare_param(&name, to.clone(), mutable);
                    self.mark_varying(&cname);
                    return Ok(Param {
                        name,
                        cname,
                        ty: Ty::Ref {
                            to: Box::new(to),
                            mutable,
                        },
                    });
                }
                let syn::Type::Slice(s) = &*r.elem else {
                    return err_hint(
                        &r.elem,
                        "only slices and arrays can be passed by reference",
                        "pass scalars by value (`n: u32`), global memory as `&[T]` or `&mut [T]`, and (to device functions) register or shared arrays as `&mut [E; N]`",
                    );
                };
                let elem = self.scalar_type(&s.elem)?;
                if elem == Scalar::Bool {
                    return err_hint(
                        &s.elem,
                        "slices of bool are not supported",
                        "use `&[u8]` (0 or 1) or `&[u32]`",
                    );
                }
                Ty::Slice {
                    elem,
                    mutable: r.mutability.is_some(),
                }
            }
            syn::Type::Array(_) => {
                return err_hint(
                    &pt.ty,
                    "arrays cannot be parameters",
                    "pass a slice: `&[T]` or `&mut [T]`",
                )
            }
            syn::Type::Ptr(_) => {
                return err_hint(
                    &pt.ty,
                    "raw pointers are not supported",
                    "pass a slice: `&[T]` or `&mut [T]`",
                )
            }
            other => match self.frag_type(other) {
                Some(_) if self.kind == FnKind::Kernel => return err_hint(
                    other,
                    "kernels cannot take fragments",
                    "fragments live in one warp's registers; pass them to `#[device]` functions",
                ),
                Some(frag) => frag?,
                None => Ty::Scalar(self.scalar_type(other)?),
            },
        };
        let mutable = pi.mutability.is_some();
        if mutable && matches!(ty, Ty::Slice { .. }) {
            return err_hint(
                &pi.mutability,
                "`mut` on a slice parameter has no meaning here",
                "write `x: &mut [T]` to write through it",
            );
        }
        let cname = self.declare_param(&name, ty.clone(), mutable);
        Ok(Param { name, cname, ty })
    }
}

/// The source line of a token (0 when unknown).
pub fn line_of(tokens: &dyn quote::ToTokens) -> u32 {
    crate::diag::span_of(tokens).start().line as u32
}
