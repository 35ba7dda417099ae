//! Calls: Kiln's built-in functions (indices, barriers, warp collectives, atomics, async
//! copies, math), scalar/slice/vector methods, and calls of `#[device]` functions.

use proc_macro2::Span;

use super::builtins::{self, Returns, METHODS};
use super::divergence::is_comptime;
use super::expr::{path_text, strip, untyped_literal};
use super::Checker;
use crate::diag::{err, err_hint, span_of, Diagnostic, Res};
use crate::ir::{Expr, ExprKind, GenericArg, Intrinsic};
use crate::types::{Len, Scalar, Space, Ty};

/// A call of a device function, recorded so that the proc macro can have rustc check the
/// callee's signature (the callee may live in another crate).
#[derive(Clone, Debug)]
pub struct DeviceCallSite {
    /// The path as written, with its generic arguments.
    pub path: syn::Path,
    /// The argument types Kiln inferred.
    pub args: Vec<Ty>,
    /// Where each argument is written.
    pub arg_spans: Vec<Span>,
    /// The result type the call's context expects.
    pub ret: Ty,
    /// The whole call expression (where rustc reports a mismatch).
    pub span: Span,
}

const SHUFFLE_TYPES: &str = "i32, u32, i64, u64, f32, f64, f16, bf16";

fn shuffle_ok(s: Scalar) -> bool {
    matches!(
        s,
        Scalar::I32
            | Scalar::U32
            | Scalar::I64
            | Scalar::U64
            | Scalar::F32
            | Scalar::F64
            | Scalar::F16
            | Scalar::Bf16
            | Scalar::Param(_)
    )
}

impl Checker {
    /// `f(args)`: a built-in, `f32::from_bits`, or a device function.
    pub fn call(&mut self, c: &syn::ExprCall, expected: Option<&Ty>) -> Res<Expr> {
        let syn::Expr::Path(p) = strip(&c.func) else {
            return err_hint(
                &c.func,
                "only named functions can be called",
                "closures and function pointers are not supported",
            );
        };
        if p.qself.is_some() {
            return err(p, "qualified paths are not supported");
        }
        let segs = &p.path.segments;
        let last = segs
            .last()
            .ok_or_else(|| Diagnostic::new(span_of(p), "empty path"))?;
        let name = last.ident.to_string();
        let args: Vec<&syn::Expr> = c.args.iter().collect();
        if segs.len() == 1 && p.path.leading_colon.is_none() && self.lookup(&name).is_none() {
            if let Some(result) = self.builtin_call(c, &name, &last.arguments, &args) {
                return result;
            }
        }
        if segs.len() == 2 && name == "from_bits" {
            let first = segs[0].ident.to_string();
            if let Some(s) = Scalar::from_rust(&first) {
                let Some(bits) = s.bits_type() else {
                    return err(
                        c,
                        format!("`{first}::from_bits` exists only for float types"),
                    );
                };
                let [a] = args.as_slice() else {
                    return err(c, "`from_bits` takes one argument");
                };
                let v = self.typed_arg(a, &Ty::s(bits))?;
                return Ok(Expr::new(
                    ExprKind::Intrinsic(Intrinsic::FromBits, vec![v]),
                    Ty::s(s),
                ));
            }
        }
        self.device_call(c, p, &args, expected)
    }

    fn device_call(
        &mut self,
        c: &syn::ExprCall,
        p: &syn::ExprPath,
        args: &[&syn::Expr],
        expected: Option<&Ty>,
    ) -> Res<Expr> {
        let callee = path_text(&p.path);
        if callee == self.fn_name {
            return err_hint(
                c,
                format!("`{callee}` calls itself: recursion is not supported on the GPU"),
                "rewrite it as a loop",
            );
        }
        if self.lookup(&callee).is_some() {
            return err(&c.func, format!("`{callee}` is a variable, not a function"));
        }
        let mut generics = Vec::new();
        for seg in p.path.segments.iter() {
            if let syn::PathArguments::AngleBracketed(a) = &seg.arguments {
                if seg.ident != p.path.segments.last().expect("non-empty").ident {
                    return err(
                        a,
                        "generic arguments are only allowed on the function itself",
                    );
                }
                for g in &a.args {
                    generics.push(match g {
                        syn::GenericArgument::Type(t) => {
                            // a bare identifier may be a const parameter written as a type
                            match t {
                                syn::Type::Path(tp)
                                    if tp.path.get_ident().is_some_and(|i| {
                                        self.const_param(&i.to_string()).is_some()
                                    }) =>
                                {
                                    GenericArg::Const(Len::Param(
                                        tp.path.get_ident().expect("checked").to_string(),
                                    ))
                                }
                                _ => GenericArg::Type(self.scalar_type(t)?),
                            }
                        }
                        syn::GenericArgument::Const(syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Bool(b),
                            ..
                        })) => GenericArg::Const(Len::Lit(b.value as u64)),
                        syn::GenericArgument::Const(e) => GenericArg::Const(self.len_expr(e)?),
                        other => return err(other, "unsupported generic argument"),
                    });
                }
            } else if let syn::PathArguments::Parenthesized(a) = &seg.arguments {
                return err(a, "unexpected parenthesised arguments");
            }
        }
        let mut ir_args = Vec::new();
        for a in args {
            if untyped_literal(a).is_some() {
                return err_hint(
                    a,
                    "the type of a literal passed to a device function cannot be inferred here",
                    "suffix it (`2u32`, `1.0f32`) or bind it with a typed `let`",
                );
            }
            if let syn::Expr::Reference(r) = a {
                ir_args.push(self.array_arg(r)?);
                continue;
            }
            let v = self.expr(a, None)?;
            match &v.ty {
                Ty::Scalar(_) | Ty::Slice { .. } | Ty::Frag { .. } => {}
                Ty::Array { .. } | Ty::FragArray { .. } => {
                    return err_hint(
                        a,
                        "arrays are passed to device functions by reference",
                        "write `&mut name` (or `&name` when the callee only reads it)",
                    )
                }
                other => {
                    return err_hint(
                        a,
                        format!(
                            "device functions take scalars, slices, fragments and array references, not `{}`",
                            self.ty_name(other)
                        ),
                        "pass the elements you need, or a global slice",
                    )
                }
            }
            ir_args.push(v);
        }
        let ret = match expected {
            Some(t) => t.clone(),
            None => {
                return err_hint(
                    c,
                    format!("cannot tell what `{callee}` returns here"),
                    format!("give the result a type: `let v: f32 = {callee}(…);`"),
                )
            }
        };
        self.device_calls.push(DeviceCallSite {
            path: p.path.clone(),
            args: ir_args.iter().map(|a| a.ty.clone()).collect(),
            arg_spans: args.iter().map(|a| span_of(a)).collect(),
            ret: ret.clone(),
            span: span_of(c),
        });
        Ok(Expr::new(
            ExprKind::Call {
                callee,
                generics,
                args: ir_args,
            },
            ret,
        ))
    }

    /// `&name` / `&mut name` passed to a device function: a whole register or shared array,
    /// or array of fragments. A callee that may write marks the array thread-varying.
    pub(super) fn array_arg(&mut self, r: &syn::ExprReference) -> Res<Expr> {
        let target = strip(&r.expr);
        // the variable at the root of `tiles[stage]`
        let mut root = target;
        while let syn::Expr::Index(ix) = root {
            root = strip(&ix.expr);
        }
        let Some(name) = (match root {
            syn::Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
            _ => None,
        }) else {
            return err_hint(
                r,
                "only arrays and their rows can be passed by reference",
                "pass the array variable (`&mut tile`) or a row of it (`&mut tiles[stage]`)",
            );
        };
        let v = self.expr(target, None)?;
        if !matches!(v.ty, Ty::Array { .. } | Ty::FragArray { .. }) {
            return err_hint(
                r,
                format!(
                    "only arrays are passed by reference, not `{}`",
                    self.ty_name(&v.ty)
                ),
                "pass scalars and fragments by value and global slices as they are",
            );
        }
        let mutable = r.mutability.is_some();
        if mutable {
            let Some(var) = self.lookup(&name).filter(|var| var.mutable) else {
                return err_hint(
                    r,
                    format!("`{name}` is not mutable"),
                    format!("declare it `let mut {name}`, or pass `&{name}` if the callee only reads it"),
                );
            };
            let cname = var.cname.clone();
            self.mark_varying(&cname);
        }
        Ok(Expr::new(
            v.kind,
            Ty::Ref {
                to: Box::new(v.ty),
                mutable,
            },
        ))
    }

    /// A built-in free function; `None` when `name` is not one.
    fn builtin_call(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Option<Res<Expr>> {
        use Intrinsic::*;
        let u32t = Ty::s(Scalar::U32);
        let unit = Ty::Unit;
        let simple = |i: Intrinsic, ty: Ty| Some((i, ty));
        let nullary = match name {
            "thread_idx" => simple(ThreadIdx, Ty::Dim3),
            "block_idx" => simple(BlockIdx, Ty::Dim3),
            "block_dim" => simple(BlockDim, Ty::Dim3),
            "grid_dim" => simple(GridDim, Ty::Dim3),
            "lane_id" => simple(LaneId, u32t.clone()),
            "warp_id" => simple(WarpId, u32t.clone()),
            "warp_size" => simple(WarpSize, u32t.clone()),
            "sync_threads" => simple(SyncThreads, unit.clone()),
            "sync_warp" => simple(SyncWarp, unit.clone()),
            "thread_fence" => simple(ThreadFence, unit.clone()),
            "thread_fence_block" => simple(ThreadFenceBlock, unit.clone()),
            "activemask" => simple(ActiveMask, u32t.clone()),
            "cp_async_commit" => simple(CpAsyncCommit, unit.clone()),
            "cp_async_wait_all" => simple(CpAsyncWaitAll, unit.clone()),
            _ => None,
        };
        if let Some((intrinsic, ty)) = nullary {
            return Some(self.nullary(c, name, intrinsic, ty, args));
        }
        let result = match name {
            "shfl_sync" | "shfl_xor_sync" | "shfl_down_sync" | "shfl_up_sync" => {
                let i = match name {
                    "shfl_sync" => ShflSync,
                    "shfl_xor_sync" => ShflXorSync,
                    "shfl_down_sync" => ShflDownSync,
                    _ => ShflUpSync,
                };
                self.shuffle(c, name, i, args)
            }
            "ballot_sync" | "all_sync" | "any_sync" => {
                let (i, ty) = match name {
                    "ballot_sync" => (BallotSync, u32t.clone()),
                    "all_sync" => (AllSync, Ty::s(Scalar::Bool)),
                    _ => (AnySync, Ty::s(Scalar::Bool)),
                };
                self.vote(c, name, i, ty, args)
            }
            "atomic_add" | "atomic_sub" | "atomic_min" | "atomic_max" | "atomic_and"
            | "atomic_or" | "atomic_xor" | "atomic_exch" | "atomic_cas" => {
                self.atomic(c, name, args)
            }
            "cp_async" => self.cp_async(c, args),
            "size_of" => self.size_of(c, turbofish, args),
            "cp_async_wait" => self.cp_async_wait(c, turbofish, args),
            "shared" | "dyn_shared" => err_hint(
                c,
                format!("`{name}` must initialise a `let`"),
                format!("write `let tile = {name}::<…>();` at the top of the kernel body"),
            ),
            "fma" => self.math_fn(c, MulAdd, args, 3),
            "rsqrt" => self.math_fn(c, Rsqrt, args, 1),
            "min" => self.math_fn(c, Min, args, 2),
            "max" => self.math_fn(c, Max, args, 2),
            _ => match self.tensor_call(c, name, turbofish, args) {
                Some(r) => r,
                None => return self.hopper_call(c, name, turbofish, args),
            },
        };
        Some(result)
    }

    fn nullary(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        intrinsic: Intrinsic,
        ty: Ty,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        if !args.is_empty() {
            return err(&c.args, format!("`{name}` takes no arguments"));
        }
        if intrinsic == Intrinsic::SyncThreads {
            self.check_barrier(c)?;
            let d = crate::diag::at(c, "");
            for frame in self.loops.iter_mut() {
                frame.barrier.get_or_insert((d.span, d.end));
            }
        }
        Ok(Expr::new(ExprKind::Intrinsic(intrinsic, vec![]), ty))
    }

    /// A `sync_threads()` must be reached by every thread of the block.
    fn check_barrier(&self, c: &syn::ExprCall) -> Res<()> {
        if self.varying_control > 0 {
            return err_hint(
                c,
                "`sync_threads()` is under a condition that differs between threads: part of the block would wait forever",
                "move the barrier out of the `if`/loop, or make the condition depend only on block indices and comptime values",
            );
        }
        if let Some(line) = self.loops.iter().find_map(|f| f.divergent_exit) {
            return err_hint(
                c,
                format!("`sync_threads()` can be skipped by threads that took the thread-dependent `break`/`continue` at line {line}"),
                "make the `break`/`continue` condition the same for the whole block, or move the barrier out of the loop",
            );
        }
        if let Some(line) = self.divergent_return {
            return err_hint(
                c,
                format!("`sync_threads()` can be skipped by threads that returned early at line {line}"),
                "instead of returning early, guard the work with `if i < n { … }` and keep the barrier outside it",
            );
        }
        Ok(())
    }

    /// An argument checked against a known type.
    pub(super) fn typed_arg(&mut self, a: &syn::Expr, ty: &Ty) -> Res<Expr> {
        let v = self.expr(a, Some(ty))?;
        self.expect_ty(a, ty, &v.ty)?;
        Ok(v)
    }

    pub(super) fn arity(
        &self,
        c: &syn::ExprCall,
        name: &str,
        args: &[&syn::Expr],
        n: usize,
        usage: &str,
    ) -> Res<()> {
        if args.len() != n {
            return err_hint(
                c,
                format!("`{name}` takes {n} argument(s), found {}", args.len()),
                format!("write `{usage}`"),
            );
        }
        Ok(())
    }

    fn shuffle(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        i: Intrinsic,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        self.arity(
            c,
            name,
            args,
            3,
            &format!("{name}(0xffff_ffff, value, lane)"),
        )?;
        let mask = self.typed_arg(args[0], &Ty::s(Scalar::U32))?;
        let v = self.expr(args[1], None)?;
        match v.ty.scalar() {
            Some(s) if shuffle_ok(s) => {}
            _ => {
                return err_hint(
                    args[1],
                    format!("cannot shuffle `{}`", self.ty_name(&v.ty)),
                    format!("shuffles move {SHUFFLE_TYPES}"),
                )
            }
        }
        let lane = self.typed_arg(args[2], &Ty::s(Scalar::U32))?;
        let ty = v.ty.clone();
        Ok(Expr::new(ExprKind::Intrinsic(i, vec![mask, v, lane]), ty))
    }

    fn vote(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        i: Intrinsic,
        ty: Ty,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        self.arity(c, name, args, 2, &format!("{name}(0xffff_ffff, predicate)"))?;
        let mask = self.typed_arg(args[0], &Ty::s(Scalar::U32))?;
        let pred = self.typed_arg(args[1], &Ty::s(Scalar::Bool))?;
        Ok(Expr::new(ExprKind::Intrinsic(i, vec![mask, pred]), ty))
    }

    fn atomic(&mut self, c: &syn::ExprCall, name: &str, args: &[&syn::Expr]) -> Res<Expr> {
        use Intrinsic::*;
        let (i, types, n): (Intrinsic, &[Scalar], usize) = match name {
            "atomic_add" => (
                AtomicAdd,
                &[
                    Scalar::I32,
                    Scalar::U32,
                    Scalar::U64,
                    Scalar::F32,
                    Scalar::F64,
                ],
                2,
            ),
            "atomic_sub" => (AtomicSub, &[Scalar::I32, Scalar::U32], 2),
            "atomic_min" => (
                AtomicMin,
                &[Scalar::I32, Scalar::U32, Scalar::I64, Scalar::U64],
                2,
            ),
            "atomic_max" => (
                AtomicMax,
                &[Scalar::I32, Scalar::U32, Scalar::I64, Scalar::U64],
                2,
            ),
            "atomic_and" => (AtomicAnd, &[Scalar::I32, Scalar::U32, Scalar::U64], 2),
            "atomic_or" => (AtomicOr, &[Scalar::I32, Scalar::U32, Scalar::U64], 2),
            "atomic_xor" => (AtomicXor, &[Scalar::I32, Scalar::U32, Scalar::U64], 2),
            "atomic_exch" => (
                AtomicExch,
                &[Scalar::I32, Scalar::U32, Scalar::U64, Scalar::F32],
                2,
            ),
            _ => (AtomicCas, &[Scalar::I32, Scalar::U32, Scalar::U64], 3),
        };
        let usage = if n == 3 {
            format!("{name}(&mut x[i], expected, new)")
        } else {
            format!("{name}(&mut x[i], value)")
        };
        self.arity(c, name, args, n, &usage)?;
        let place = self.memory_place(args[0], name, &usage, true)?;
        let elem = place.ty.scalar().expect("memory places are scalars");
        if !types.contains(&elem) {
            let list: Vec<String> = types.iter().map(|s| s.rust_name()).collect();
            return err_hint(
                args[0],
                format!("`{name}` is not available for `{}`", self.scalar_name(elem)),
                format!("`{name}` works on {}", list.join(", ")),
            );
        }
        let mut ir = vec![place];
        for a in &args[1..] {
            ir.push(self.typed_arg(a, &Ty::s(elem))?);
        }
        Ok(Expr::new(ExprKind::Intrinsic(i, ir), Ty::s(elem)))
    }

    /// `&mut x[i]` (or `&x[i]` when `writable` is false) into global or shared memory.
    pub(super) fn memory_place(
        &mut self,
        a: &syn::Expr,
        name: &str,
        usage: &str,
        writable: bool,
    ) -> Res<Expr> {
        let syn::Expr::Reference(r) = strip(a) else {
            return err_hint(
                a,
                format!("`{name}` needs a reference to an element here"),
                format!("write `{usage}`"),
            );
        };
        if writable && r.mutability.is_none() {
            return err_hint(
                a,
                format!("`{name}` writes memory: the reference must be `&mut`"),
                format!("write `{usage}`"),
            );
        }
        let syn::Expr::Index(ix) = strip(&r.expr) else {
            return err_hint(
                &r.expr,
                "expected an element of a slice or shared array",
                format!("write `{usage}`"),
            );
        };
        let place = self.index(ix)?;
        match &place_root(&place).ty {
            Ty::Slice { mutable: false, .. } if writable => err_hint(
                a,
                format!("`{name}` writes to a read-only slice"),
                "declare the parameter as `&mut [T]`",
            ),
            Ty::Array {
                space: Space::Local,
                ..
            } => err_hint(
                a,
                "register arrays are private to a thread",
                format!("`{name}` works on global slices and shared arrays"),
            ),
            Ty::Vector { .. } => err(a, format!("`{name}` cannot address a vector lane")),
            Ty::Frag { .. } => err_hint(
                a,
                format!("`{name}` cannot address a fragment register"),
                "fragment registers are private to a lane; read them with `frag[i]`",
            ),
            _ if place.ty.scalar().is_none() => err(a, "expected one element"),
            _ => Ok(place),
        }
    }

    fn cp_async(&mut self, c: &syn::ExprCall, args: &[&syn::Expr]) -> Res<Expr> {
        let usage = "cp_async(&mut tile[j], &src[i])";
        self.arity(c, "cp_async", args, 2, usage)?;
        let dst = self.memory_place(args[0], "cp_async", usage, true)?;
        let src = self.memory_place(args[1], "cp_async", usage, false)?;
        match &place_root(&dst).ty {
            Ty::Array {
                space: Space::Shared,
                ..
            }
            | Ty::DynShared { .. } => {}
            _ => {
                return err_hint(
                    args[0],
                    "`cp_async` copies into shared memory",
                    "the destination must be an element of a `shared` or `dyn_shared` array",
                )
            }
        }
        if !matches!(place_root(&src).ty, Ty::Slice { .. }) {
            return err_hint(
                args[1],
                "`cp_async` copies from global memory",
                "the source must be an element of a slice parameter",
            );
        }
        self.expect_ty(args[1], &dst.ty, &src.ty)?;
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::CpAsync, vec![dst, src]),
            Ty::Unit,
        ))
    }

    fn cp_async_wait(
        &mut self,
        c: &syn::ExprCall,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let e = self.comptime_count(c, "cp_async_wait", "1", turbofish, args)?;
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::CpAsyncWait, vec![e]),
            Ty::Unit,
        ))
    }

    /// The comptime count of `name::<N>()` (no run-time arguments), as a `u32` expression:
    /// a literal or a `const` parameter. `example` is a count shown in hints.
    pub(super) fn comptime_count(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        example: &str,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        if !args.is_empty() {
            return err_hint(
                c,
                format!("`{name}` takes its count as a comptime argument"),
                format!("write `{name}::<{example}>()`"),
            );
        }
        let syn::PathArguments::AngleBracketed(a) = turbofish else {
            return err_hint(
                c,
                format!("`{name}` needs a comptime count"),
                format!("write `{name}::<{example}>()`"),
            );
        };
        let [arg] = a.args.iter().collect::<Vec<_>>()[..] else {
            return err(a, format!("`{name}` takes one comptime argument"));
        };
        let len = match arg {
            syn::GenericArgument::Const(e) => self.len_expr_or_zero(e, name)?,
            syn::GenericArgument::Type(syn::Type::Path(tp)) if tp.path.get_ident().is_some() => {
                let id = tp.path.get_ident().expect("checked").to_string();
                if self.const_param(&id).is_none() {
                    return err_hint(
                        arg,
                        format!("`{id}` is not a comptime value"),
                        "pass a literal or a `const` generic parameter",
                    );
                }
                Len::Param(id)
            }
            other => {
                return err_hint(
                    other,
                    "expected a comptime count",
                    format!("write `{name}::<{example}>()`"),
                )
            }
        };
        match len {
            Len::Lit(v) => Ok(Expr::new(ExprKind::Int(v), Ty::s(Scalar::U32))),
            Len::Param(p) => Ok(Expr::new(ExprKind::ConstParam(p), Ty::s(Scalar::U32))),
            Len::Bin(..) => err_hint(
                arg,
                "expected a literal or a `const` parameter",
                "bind the value to a `const` generic parameter",
            ),
        }
    }

    fn size_of(
        &mut self,
        c: &syn::ExprCall,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let usage = "size_of::<T>()";
        if !args.is_empty() {
            return err_hint(
                c,
                "`size_of` takes no arguments",
                format!("write `{usage}`"),
            );
        }
        let syn::PathArguments::AngleBracketed(a) = turbofish else {
            return err_hint(c, "`size_of` needs a type", format!("write `{usage}`"));
        };
        let [syn::GenericArgument::Type(t)] = a.args.iter().collect::<Vec<_>>()[..] else {
            return err_hint(a, "`size_of` takes one type", format!("write `{usage}`"));
        };
        let s = self.scalar_type(t)?;
        Ok(Expr::new(ExprKind::SizeOf(s), Ty::s(Scalar::U32)))
    }

    fn len_expr_or_zero(&self, e: &syn::Expr, name: &str) -> Res<Len> {
        if let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) = e
        {
            if i.base10_digits() == "0" {
                return Ok(Len::Lit(0));
            }
        }
        if let syn::Expr::Path(p) = e {
            if let Some(id) = p.path.get_ident() {
                if self.lookup(&id.to_string()).is_some() {
                    return err_hint(
                        e,
                        format!("`{id}` is a run-time value; `{name}` needs a comptime count"),
                        "use a literal or a `const` generic parameter",
                    );
                }
            }
        }
        self.len_expr(e)
    }

    fn math_fn(
        &mut self,
        c: &syn::ExprCall,
        i: Intrinsic,
        args: &[&syn::Expr],
        n: usize,
    ) -> Res<Expr> {
        let name = match i {
            Intrinsic::MulAdd => "fma",
            Intrinsic::Rsqrt => "rsqrt",
            Intrinsic::Min => "min",
            _ => "max",
        };
        self.arity(
            c,
            name,
            args,
            n,
            &format!("{name}({})", vec!["x"; n].join(", ")),
        )?;
        let first_typed = args
            .iter()
            .position(|a| untyped_literal(a).is_none())
            .unwrap_or(0);
        let first = self.expr(args[first_typed], None)?;
        let Some(s) = first.ty.scalar() else {
            return err(args[first_typed], format!("`{name}` needs numbers"));
        };
        let float_only = !matches!(i, Intrinsic::Min | Intrinsic::Max);
        if (float_only && !s.is_float()) || !(s.is_float() || s.is_int()) {
            return err_hint(
                args[first_typed],
                format!("`{name}` is not defined for `{}`", self.scalar_name(s)),
                "convert with `as f32`",
            );
        }
        let mut ir = Vec::new();
        for (k, a) in args.iter().enumerate() {
            ir.push(if k == first_typed {
                first.clone()
            } else {
                self.typed_arg(a, &first.ty)?
            });
        }
        Ok(Expr::new(ExprKind::Intrinsic(i, ir), first.ty))
    }

    /// `receiver.method(args)`.
    pub fn method_call(&mut self, mc: &syn::ExprMethodCall, expected: Option<&Ty>) -> Res<Expr> {
        let name = mc.method.to_string();
        if let Some(t) = &mc.turbofish {
            return err(t, format!("`.{name}` takes no generic arguments"));
        }
        let recv_expected = if untyped_literal(&mc.receiver).is_some() {
            expected
        } else {
            None
        };
        let recv = self.expr(&mc.receiver, recv_expected)?;
        let args: Vec<&syn::Expr> = mc.args.iter().collect();
        match recv.ty.clone() {
            Ty::Scalar(s) => self.scalar_method(mc, &name, recv, s, &args),
            Ty::Slice { .. } | Ty::DynShared { .. } | Ty::Array { .. } => {
                self.memory_method(mc, &name, recv, &args)
            }
            Ty::Vector { .. } if name == "lanes" && args.is_empty() => Ok(Expr::new(
                ExprKind::Intrinsic(Intrinsic::Lanes, vec![recv]),
                Ty::s(Scalar::U32),
            )),
            other => err_hint(
                mc,
                format!("no method `{name}` on `{}`", self.ty_name(&other)),
                "see the language tour in README.md for the methods Kiln provides",
            ),
        }
    }

    fn scalar_method(
        &mut self,
        mc: &syn::ExprMethodCall,
        name: &str,
        recv: Expr,
        s: Scalar,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let wrapping = match name {
            "wrapping_add" => Some(crate::ir::BinOp::Add),
            "wrapping_sub" => Some(crate::ir::BinOp::Sub),
            "wrapping_mul" => Some(crate::ir::BinOp::Mul),
            _ => None,
        };
        if let Some(op) = wrapping {
            if !s.is_int() {
                return err(mc, format!("`{name}` is defined for integers"));
            }
            let [a] = args else {
                return err(mc, format!("`{name}` takes one argument"));
            };
            let v = self.typed_arg(a, &recv.ty)?;
            let ty = recv.ty.clone();
            return Ok(Expr::new(
                ExprKind::Binary(op, Box::new(recv), Box::new(v)),
                ty,
            ));
        }
        let Some(m) = builtins::method(name, s) else {
            let mut names: Vec<&str> = METHODS
                .iter()
                .filter(|m| m.recv.accepts(s))
                .map(|m| m.name)
                .collect();
            if s.is_int() {
                names.extend(["wrapping_add", "wrapping_sub", "wrapping_mul"]);
            }
            return err_hint(
                &mc.method,
                format!("unknown intrinsic `.{name}()` on `{}`", self.scalar_name(s)),
                format!(
                    "the methods of `{}` are: {}",
                    self.scalar_name(s),
                    names.join(", ")
                ),
            );
        };
        if !m.recv.accepts(s) {
            return err_hint(
                &mc.method,
                format!("`.{name}()` is not defined for `{}`", self.scalar_name(s)),
                if name == "abs" {
                    "`.abs()` works on floats and signed integers".to_string()
                } else {
                    format!("`.{name}()` works on {}", m.recv.describe())
                },
            );
        }
        if args.len() != m.args {
            return err(
                mc,
                format!(
                    "`.{name}()` takes {} argument(s), found {}",
                    m.args,
                    args.len()
                ),
            );
        }
        let mut ir = vec![recv.clone()];
        for a in args {
            ir.push(self.typed_arg(a, &recv.ty)?);
        }
        let ty = match m.returns {
            Returns::Same => recv.ty.clone(),
            Returns::Bool => Ty::s(Scalar::Bool),
            Returns::U32 => Ty::s(Scalar::U32),
            Returns::Bits => Ty::s(s.bits_type().expect("concrete float")),
        };
        Ok(Expr::new(ExprKind::Intrinsic(m.intrinsic, ir), ty))
    }

    fn memory_method(
        &mut self,
        mc: &syn::ExprMethodCall,
        name: &str,
        recv: Expr,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let elem = recv.ty.elem().expect("indexable");
        match name {
            "len" => {
                if !args.is_empty() {
                    return err(mc, "`.len()` takes no arguments");
                }
                match &recv.ty {
                    Ty::Slice { .. } | Ty::Array { .. } => Ok(Expr::new(
                        ExprKind::Intrinsic(Intrinsic::Len, vec![recv]),
                        Ty::s(Scalar::U32),
                    )),
                    _ => err_hint(
                        mc,
                        "the length of dynamic shared memory is not known in the kernel",
                        "pass it as a parameter",
                    ),
                }
            }
            "vload" | "vstore" => {
                if let Ty::Array {
                    space: Space::Local,
                    ..
                } = recv.ty
                {
                    return err(
                        mc,
                        format!("`.{name}` works on slices and shared arrays, not register arrays"),
                    );
                }
                if let Ty::Array { dims, .. } = &recv.ty {
                    if dims.len() != 1 {
                        return err_hint(
                            mc,
                            format!("`.{name}` needs a one-dimensional array"),
                            "index a row first: `tile[r].vload(c)`",
                        );
                    }
                }
                if elem == Scalar::Bool {
                    return err(mc, "vectors of bool are not supported");
                }
                let want = if name == "vload" { 1 } else { 2 };
                if args.len() != want {
                    let usage = if name == "vload" {
                        "x.vload(i)"
                    } else {
                        "x.vstore(i, v)"
                    };
                    return err_hint(
                        mc,
                        format!("`.{name}` takes {want} argument(s)"),
                        format!("write `{usage}`"),
                    );
                }
                let idx = self.typed_arg(args[0], &Ty::s(Scalar::U32))?;
                let vty = Ty::Vector { elem };
                if name == "vload" {
                    return Ok(Expr::new(
                        ExprKind::Intrinsic(Intrinsic::VLoad, vec![recv, idx]),
                        vty,
                    ));
                }
                if let Ty::Slice { mutable: false, .. } = recv.ty {
                    return err_hint(
                        mc,
                        "`.vstore` writes to a read-only slice",
                        "declare the parameter as `&mut [T]`",
                    );
                }
                let v = self.typed_arg(args[1], &vty)?;
                Ok(Expr::new(
                    ExprKind::Intrinsic(Intrinsic::VStore, vec![recv, idx, v]),
                    Ty::Unit,
                ))
            }
            "iter" | "iter_mut" | "into_iter" => err_hint(
                mc,
                "iterators are not supported",
                "loop over indices: `for i in 0..x.len()`",
            ),
            _ => err_hint(
                &mc.method,
                format!("no method `{name}` on `{}`", self.ty_name(&recv.ty)),
                "slices and arrays have len(), vload(i) and vstore(i, v)",
            ),
        }
    }
}

/// The array, slice or vector a place (`x[i][j]`) indexes.
pub(super) fn place_root(place: &Expr) -> &Expr {
    let mut root = place;
    while let ExprKind::Index(base, _) = &root.kind {
        root = base;
    }
    root
}

/// Whether an expression is known at compile time (re-exported for the statement checker).
pub fn comptime(e: &Expr) -> bool {
    is_comptime(e)
}
