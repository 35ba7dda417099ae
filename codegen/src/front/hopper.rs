//! The Hopper builtins (sm_90; warpgroup MMA and register reallocation need sm_90a): the
//! copy engine, transaction barriers and warpgroup matrix multiply-accumulate.
//!
//! | call | what |
//! |---|---|
//! | `wgmma::<T>(&mut acc, a_desc, b_desc)` | `acc += A·B`, A `64 × 16` and B `16 × N` in shared memory, B K-major |
//! | `wgmma_tb::<T>(&mut acc, a_desc, b_desc)` | the same with B N-major (a row-major `16 × N` tile) |
//! | `wgmma_rs::<T>(&mut acc, a, b_desc)`, `wgmma_rs_tb` | A from registers: a `FragA<T>` per warp (rows `16w..16w+15`, `mma.sync`'s A layout) |
//! | `wgmma_fence()`, `wgmma_commit()`, `wgmma_wait::<N>(&mut acc)` | order, group and wait for warpgroup MMAs (then `acc` may be read) |
//! | `wgmma_desc(&tile[i], lbo, sbo)` | `u64`: the descriptor of a 128-byte-swizzled shared tile |
//! | `mbarrier_init(&mut bar[i], count)` | a transaction barrier expecting `count` arrivals |
//! | `mbarrier_arrive(&mut bar[i])`, `mbarrier_expect_tx(&mut bar[i], bytes)` | arrivals (the second also expects `bytes` of copies) |
//! | `mbarrier_wait(&mut bar[i], parity)` | waits for the phase of parity `parity` to complete |
//! | `fence_barrier_init()`, `fence_proxy_async()` | make barrier inits / ordinary shared writes visible to the copy engine and tensor cores |
//! | `tma_load_2d(&mut tile[j], &map[0], src, &mut bar[i], x, y)` | the copy engine loads the box at column `x`, row `y` of `src` |
//! | `setmaxnreg_inc::<N>()`, `setmaxnreg_dec::<N>()` | the warpgroup's register budget per thread |
//!
//! `acc` is a register array of `N / 2` f32 (N = 8, 16, …, 256): the warpgroup's `64 × N`
//! accumulator tile, laid out as `mma.sync`'s C fragments side by side (warp `w` holds rows
//! `16w..16w+15`). Barriers are `u64` elements of a `shared` array; a TMA tile is an element
//! of a `shared` or `dyn_shared` array; the tensor map is a 128-byte `&[u64]` built on the host
//! (`kiln::TensorMap`). Every call here is checked for its operand kinds and types at build
//! time; a specialisation for an architecture below sm_90 is refused.

use super::calls::place_root;
use super::Checker;
use crate::diag::{err_hint, Res};
use crate::ir::{Expr, ExprKind, Intrinsic};
use crate::types::{FragKind, Len, Scalar, Space, Ty};

/// The DSL name of a Hopper intrinsic (for errors).
pub(crate) fn dsl_name(i: Intrinsic) -> &'static str {
    use Intrinsic::*;
    match i {
        WgmmaFence => "wgmma_fence",
        WgmmaCommit => "wgmma_commit",
        WgmmaWait => "wgmma_wait",
        Wgmma { trans_b: false, .. } => "wgmma",
        Wgmma { trans_b: true, .. } => "wgmma_tb",
        WgmmaRs { trans_b: false, .. } => "wgmma_rs",
        WgmmaRs { trans_b: true, .. } => "wgmma_rs_tb",
        WgmmaDesc => "wgmma_desc",
        MbarrierInit => "mbarrier_init",
        MbarrierArrive => "mbarrier_arrive",
        MbarrierExpectTx => "mbarrier_expect_tx",
        MbarrierWait => "mbarrier_wait",
        FenceBarrierInit => "fence_barrier_init",
        FenceProxyAsync => "fence_proxy_async",
        TmaLoad2d => "tma_load_2d",
        SetMaxNReg { inc: true } => "setmaxnreg_inc",
        SetMaxNReg { inc: false } => "setmaxnreg_dec",
        _ => "this instruction",
    }
}

/// The accumulator lengths `wgmma` accepts: `N / 2` for N = 8, 16, …, 256.
pub(crate) fn wgmma_acc_len_ok(len: u64) -> bool {
    (4..=128).contains(&len) && len.is_multiple_of(4)
}

/// The register budgets `setmaxnreg` accepts: multiples of 8 in 24..=256.
pub(crate) fn maxnreg_ok(n: u64) -> bool {
    (24..=256).contains(&n) && n.is_multiple_of(8)
}

const ACC_HINT: &str = "declare the accumulator as a register array of N/2 f32, `let mut acc = [0.0f32; 64];` for N = 128 (N = 8, 16, …, 256)";

impl Checker {
    /// A Hopper builtin; `None` when `name` is not one.
    pub(super) fn hopper_call(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Option<Res<Expr>> {
        use Intrinsic::*;
        let nullary = |i| Some((i, Ty::Unit));
        let plain = match name {
            "wgmma_fence" => nullary(WgmmaFence),
            "wgmma_commit" => nullary(WgmmaCommit),
            "fence_barrier_init" => nullary(FenceBarrierInit),
            "fence_proxy_async" => nullary(FenceProxyAsync),
            _ => None,
        };
        if let Some((i, ty)) = plain {
            return Some(
                self.arity(c, name, args, 0, &format!("{name}()"))
                    .map(|()| Expr::new(ExprKind::Intrinsic(i, vec![]), ty)),
            );
        }
        let result = match name {
            "wgmma" | "wgmma_tb" | "wgmma_rs" | "wgmma_rs_tb" => {
                self.wgmma(c, name, turbofish, args)
            }
            "wgmma_wait" => self.wgmma_wait(c, turbofish, args),
            "setmaxnreg_inc" | "setmaxnreg_dec" => self.setmaxnreg(c, name, turbofish, args),
            "wgmma_desc" => self.wgmma_desc(c, args),
            "mbarrier_init" => self.mbarrier(c, name, MbarrierInit, args, Some("count")),
            "mbarrier_arrive" => self.mbarrier(c, name, MbarrierArrive, args, None),
            "mbarrier_expect_tx" => self.mbarrier(c, name, MbarrierExpectTx, args, Some("bytes")),
            "mbarrier_wait" => self.mbarrier(c, name, MbarrierWait, args, Some("parity")),
            "tma_load_2d" => self.tma_load_2d(c, args),
            _ => return None,
        };
        Some(result)
    }

    /// `setmaxnreg_{inc,dec}::<N>()` (a `const` parameter is checked when specialised).
    fn setmaxnreg(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let n = self.comptime_count(c, name, "240", turbofish, args)?;
        if let ExprKind::Int(v) = n.kind {
            if !maxnreg_ok(v) {
                return err_hint(
                    turbofish,
                    format!("`{name}::<{v}>` is out of range"),
                    format!("the register count must be a multiple of 8 from 24 to 256: write `{name}::<240>()`"),
                );
            }
        }
        let inc = name == "setmaxnreg_inc";
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::SetMaxNReg { inc }, vec![n]),
            Ty::Unit,
        ))
    }

    /// `wgmma_wait::<N>(&mut acc)`: the count, then the accumulator the caller reads next
    /// (the generated code keeps the compiler from moving its reads above the wait).
    fn wgmma_wait(
        &mut self,
        c: &syn::ExprCall,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let usage = "wgmma_wait::<0>(&mut acc)";
        self.arity(c, "wgmma_wait", args, 1, usage)?;
        let n = self.comptime_count(c, "wgmma_wait", "0", turbofish, &[])?;
        if let ExprKind::Int(v) = n.kind {
            if v > 7 {
                return err_hint(
                    turbofish,
                    format!("`wgmma_wait::<{v}>` is out of range"),
                    format!("0 to 7 groups may stay in flight: write `{usage}`"),
                );
            }
        }
        let acc = self.accumulator(args[0], "wgmma_wait", usage)?;
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::WgmmaWait, vec![n, acc]),
            Ty::Unit,
        ))
    }

    /// `&mut acc`: a one-dimensional register array of f32 of a wgmma shape.
    fn accumulator(&mut self, a: &syn::Expr, name: &str, usage: &str) -> Res<Expr> {
        let syn::Expr::Reference(r) = super::expr::strip(a) else {
            return err_hint(
                a,
                format!("`{name}` takes the accumulator, a register array"),
                format!("pass it as `&mut acc`; {ACC_HINT}"),
            );
        };
        if r.mutability.is_none() {
            return err_hint(
                a,
                format!("`{name}` needs the accumulator as `&mut`"),
                format!("write `{usage}`"),
            );
        }
        let acc = self.array_arg(r)?;
        let Ty::Ref { to, .. } = &acc.ty else {
            unreachable!("array_arg returns a reference")
        };
        let Ty::Array {
            space: Space::Local,
            elem: Scalar::F32,
            dims,
        } = &**to
        else {
            return err_hint(
                a,
                format!("`{name}`'s accumulator must be a register array of f32"),
                ACC_HINT,
            );
        };
        if dims.len() != 1 {
            return err_hint(
                a,
                format!("`{name}`'s accumulator must be a one-dimensional array"),
                ACC_HINT,
            );
        }
        if let Len::Lit(v) = dims[0] {
            if !wgmma_acc_len_ok(v) {
                return err_hint(
                    a,
                    format!("an accumulator of {v} f32 is no wgmma shape"),
                    ACC_HINT,
                );
            }
        }
        Ok(acc)
    }

    fn wgmma(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let registers = name.starts_with("wgmma_rs");
        let usage = match registers {
            true => format!("{name}::<bf16>(&mut acc, a_frag, b_desc)"),
            false => format!("{name}::<bf16>(&mut acc, a_desc, b_desc)"),
        };
        self.arity(c, name, args, 3, &usage)?;
        let Some(elem) = self.half_turbofish(name, turbofish, &usage)? else {
            return err_hint(
                c,
                format!("`{name}` needs the element type of its operands"),
                format!("write `{usage}` (bf16 or f16; the descriptors do not carry it)"),
            );
        };
        let acc = self.accumulator(args[0], name, &usage)?;
        let u64t = Ty::s(Scalar::U64);
        let a = match registers {
            true => {
                let frag = Ty::Frag {
                    kind: FragKind::A,
                    elem,
                };
                self.typed_arg(args[1], &frag)?
            }
            false => self.typed_arg(args[1], &u64t)?,
        };
        let b_desc = self.typed_arg(args[2], &u64t)?;
        let trans_b = name.ends_with("_tb");
        let i = match registers {
            true => Intrinsic::WgmmaRs { elem, trans_b },
            false => Intrinsic::Wgmma { elem, trans_b },
        };
        Ok(Expr::new(
            ExprKind::Intrinsic(i, vec![acc, a, b_desc]),
            Ty::Unit,
        ))
    }

    /// A place in shared memory (`what` names it in errors).
    fn shared_place(
        &mut self,
        a: &syn::Expr,
        name: &str,
        usage: &str,
        writable: bool,
        what: &str,
    ) -> Res<Expr> {
        let place = self.memory_place(a, name, usage, writable)?;
        match &place_root(&place).ty {
            Ty::Array {
                space: Space::Shared,
                ..
            }
            | Ty::DynShared { .. } => Ok(place),
            _ => err_hint(
                a,
                format!("`{name}`'s {what} must be in shared memory"),
                "use an element of a `shared` or `dyn_shared` array",
            ),
        }
    }

    /// A barrier: a `u64` element of a shared array.
    fn barrier_place(&mut self, a: &syn::Expr, name: &str, usage: &str) -> Res<Expr> {
        let place = self.shared_place(a, name, usage, true, "barrier")?;
        if place.ty != Ty::s(Scalar::U64) {
            return err_hint(
                a,
                format!("`{name}` takes a barrier, a `u64` in shared memory"),
                "declare the barriers as `let bar = shared::<[u64; STAGES]>();`",
            );
        }
        Ok(place)
    }

    fn wgmma_desc(&mut self, c: &syn::ExprCall, args: &[&syn::Expr]) -> Res<Expr> {
        let usage = "wgmma_desc(&tile[i], lbo_bytes, sbo_bytes)";
        self.arity(c, "wgmma_desc", args, 3, usage)?;
        let tile = self.shared_place(args[0], "wgmma_desc", usage, false, "tile")?;
        let u32t = Ty::s(Scalar::U32);
        let lbo = self.typed_arg(args[1], &u32t)?;
        let sbo = self.typed_arg(args[2], &u32t)?;
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::WgmmaDesc, vec![tile, lbo, sbo]),
            Ty::s(Scalar::U64),
        ))
    }

    fn mbarrier(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        i: Intrinsic,
        args: &[&syn::Expr],
        operand: Option<&str>,
    ) -> Res<Expr> {
        let usage = match operand {
            Some(o) => format!("{name}(&mut bar[i], {o})"),
            None => format!("{name}(&mut bar[i])"),
        };
        self.arity(c, name, args, 1 + operand.is_some() as usize, &usage)?;
        let mut ir = vec![self.barrier_place(args[0], name, &usage)?];
        if operand.is_some() {
            ir.push(self.typed_arg(args[1], &Ty::s(Scalar::U32))?);
        }
        Ok(Expr::new(ExprKind::Intrinsic(i, ir), Ty::Unit))
    }

    fn tma_load_2d(&mut self, c: &syn::ExprCall, args: &[&syn::Expr]) -> Res<Expr> {
        let usage = "tma_load_2d(&mut tile[j], &map[0], src, &mut bar[i], x, y)";
        self.arity(c, "tma_load_2d", args, 6, usage)?;
        let tile = self.shared_place(args[0], "tma_load_2d", usage, true, "destination")?;
        let map = self.memory_place(args[1], "tma_load_2d", usage, false)?;
        if !matches!(
            place_root(&map).ty,
            Ty::Slice {
                elem: Scalar::U64,
                ..
            }
        ) {
            return err_hint(
                args[1],
                "`tma_load_2d` takes its tensor map as the first element of a `&[u64]` parameter",
                "build the map on the host with `kiln::TensorMap` and pass it as `map: &[u64]`",
            );
        }
        let src = self.expr(args[2], None)?;
        let Ty::Slice { elem, .. } = src.ty else {
            return err_hint(
                args[2],
                "`tma_load_2d` names the tensor it loads from: a slice parameter",
                "pass the slice the map was built over, e.g. `a`",
            );
        };
        self.expect_ty(args[2], &tile.ty, &Ty::s(elem))?;
        let bar = self.barrier_place(args[3], "tma_load_2d", usage)?;
        let u32t = Ty::s(Scalar::U32);
        let x = self.typed_arg(args[4], &u32t)?;
        let y = self.typed_arg(args[5], &u32t)?;
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::TmaLoad2d, vec![tile, map, src, bar, x, y]),
            Ty::Unit,
        ))
    }
}
