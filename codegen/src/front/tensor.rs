//! The tensor-core builtins: warp-level matrix fragments of `mma.sync` m16n8k16 and the
//! instructions behind them.
//!
//! | call | result |
//! |---|---|
//! | `ldmatrix_x4::<T>(&tile[r][c])`, `ldmatrix_x4_trans` | `FragA<T>` (four 8×8 matrices) |
//! | `ldmatrix_x2::<T>(&tile[r][c])`, `ldmatrix_x2_trans` | `FragB<T>` (two) |
//! | `ldmatrix_x1::<T>(&tile[r][c])`, `ldmatrix_x1_trans` | `u32` (one) |
//! | `mma(a, b, c)` | `FragC`: `a·b + c`, f32 accumulation |
//! | `frag_a_zero::<T>()`, `frag_b_zero::<T>()`, `frag_c_zero()` | a fragment of zeros |
//! | `pack2::<T>(lo, hi)` | `u32`: two f32 rounded to nearest even into halves of `T` |
//! | `unpack_lo::<T>(r)`, `unpack_hi::<T>(r)` | `T`: one half of a `u32` |
//!
//! `frag[i]` reads or writes one register of a fragment: a `u32` of two halves for A and B,
//! an `f32` for C. `T` is f16, bf16, or a `T: Float` that specialisation must bind to one of
//! them. Every fragment value differs per lane, and `ldmatrix`/`mma` are warp collectives.

use super::calls::place_root;
use super::expr::strip;
use super::Checker;
use crate::diag::{err, err_hint, Res};
use crate::ir::{Expr, ExprKind, Intrinsic};
use crate::types::{FragKind, Scalar, Space, Ty};

const HALF_HINT: &str = "mma.sync m16n8k16 multiplies f16 or bf16 matrices and accumulates in f32: keep the tile in bf16 or f16 (convert with `as bf16`)";

const MMA_USAGE: &str = "mma(a, b, c): `a` a FragA<T> (ldmatrix_x4), `b` a FragB<T> (ldmatrix_x2 or ldmatrix_x2_trans), `c` a FragC (frag_c_zero() or an earlier mma)";

/// Whether `s` can be the element type of a fragment (`T: Float` is checked when bound).
fn fragment_elem_ok(s: Scalar) -> bool {
    matches!(s, Scalar::F16 | Scalar::Bf16 | Scalar::Param(_))
}

/// After specialisation: the element type of a tensor-core operand in `e` (a fragment, an
/// `ldmatrix` tile, a packed pair) when it is not f16 or bf16, e.g. a `T: Float` bound to f32.
pub(crate) fn non_half_operand(e: &Expr) -> Option<Scalar> {
    let elem = match (&e.kind, &e.ty) {
        (_, Ty::Frag { kind, elem }) if *kind != FragKind::C => *elem,
        (ExprKind::Intrinsic(Intrinsic::Pack2(s), _), _) => *s,
        (
            ExprKind::Intrinsic(Intrinsic::Wgmma { elem, .. } | Intrinsic::WgmmaRs { elem, .. }, _),
            _,
        ) => *elem,
        (ExprKind::Intrinsic(Intrinsic::UnpackLo | Intrinsic::UnpackHi, _), t) => t.scalar()?,
        (ExprKind::Intrinsic(Intrinsic::Ldmatrix { .. }, args), _) => args.first()?.ty.scalar()?,
        _ => return None,
    };
    (!elem.is_half()).then_some(elem)
}

/// `ldmatrix_x{1,2,4}[_trans]` → (matrices, transposed).
fn ldmatrix_variant(name: &str) -> Option<(u8, bool)> {
    let rest = name.strip_prefix("ldmatrix_x")?;
    let (num, trans) = match rest.strip_suffix("_trans") {
        Some(n) => (n, true),
        None => (rest, false),
    };
    match num {
        "1" => Some((1, trans)),
        "2" => Some((2, trans)),
        "4" => Some((4, trans)),
        _ => None,
    }
}

impl Checker {
    /// A tensor-core builtin; `None` when `name` is not one.
    pub(super) fn tensor_call(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Option<Res<Expr>> {
        let result = if let Some((num, trans)) = ldmatrix_variant(name) {
            self.ldmatrix(c, name, num, trans, turbofish, args)
        } else {
            match name {
                "mma" => self.mma(c, turbofish, args),
                "frag_a_zero" => self.frag_zero(c, name, FragKind::A, turbofish, args),
                "frag_b_zero" => self.frag_zero(c, name, FragKind::B, turbofish, args),
                "frag_c_zero" => self.frag_zero(c, name, FragKind::C, turbofish, args),
                "pack2" => self.pack2(c, turbofish, args),
                "unpack_lo" => self.unpack(c, name, Intrinsic::UnpackLo, turbofish, args),
                "unpack_hi" => self.unpack(c, name, Intrinsic::UnpackHi, turbofish, args),
                _ => return None,
            }
        };
        Some(result)
    }

    /// The element type in `name::<T>`, if given; it must be a 16-bit float.
    pub(super) fn half_turbofish(
        &self,
        name: &str,
        turbofish: &syn::PathArguments,
        usage: &str,
    ) -> Res<Option<Scalar>> {
        let a = match turbofish {
            syn::PathArguments::None => return Ok(None),
            syn::PathArguments::AngleBracketed(a) => a,
            syn::PathArguments::Parenthesized(p) => {
                return err_hint(p, "unexpected parenthesised arguments", usage.to_string())
            }
        };
        let [syn::GenericArgument::Type(t)] = a.args.iter().collect::<Vec<_>>()[..] else {
            return err_hint(
                a,
                format!("`{name}` takes one element type"),
                format!("write `{usage}`"),
            );
        };
        let s = self.scalar_type(t)?;
        self.check_half(t, s, name)?;
        Ok(Some(s))
    }

    /// Fails unless `s` can be a fragment's element type (`what` names the construct).
    fn check_half(&self, at: &dyn quote::ToTokens, s: Scalar, what: &str) -> Res<()> {
        if fragment_elem_ok(s) {
            return Ok(());
        }
        err_hint(
            at,
            format!(
                "`{what}` works on f16 or bf16, the tensor cores' input types, not `{}`",
                self.scalar_name(s)
            ),
            HALF_HINT,
        )
    }

    fn ldmatrix(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        num: u8,
        trans: bool,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let usage = format!("{name}::<T>(&tile[row][col])");
        let given = self.half_turbofish(name, turbofish, &usage)?;
        self.arity(c, name, args, 1, &usage)?;
        let a = args[0];
        let syn::Expr::Reference(r) = strip(a) else {
            return err_hint(
                a,
                format!("`{name}` takes the address of this lane's row"),
                format!(
                    "write `{usage}`: lanes 0-7 give the rows of matrix 0, 8-15 of matrix 1, …"
                ),
            );
        };
        let syn::Expr::Index(ix) = strip(&r.expr) else {
            return err_hint(
                &r.expr,
                "expected an element of a shared array",
                format!("write `{usage}`"),
            );
        };
        let place = self.index(ix)?;
        match &place_root(&place).ty {
            Ty::Array {
                space: Space::Shared,
                ..
            }
            | Ty::DynShared { .. } => {}
            Ty::Slice { .. } => {
                return err_hint(
                    a,
                    format!("`{name}` reads shared memory, not a global slice"),
                    "copy the tile into a `shared::<[[T; 16]; 16]>()` array first (e.g. with `cp_async`), `sync_threads()`, then load fragments from it",
                )
            }
            other => {
                return err_hint(
                    a,
                    format!("`{name}` cannot read `{}`", self.ty_name(other)),
                    "ldmatrix reads 16-byte rows of a `shared` or `dyn_shared` array",
                )
            }
        }
        let Some(elem) = place.ty.scalar() else {
            return err_hint(
                a,
                "expected one element: the first of this lane's 8-element row",
                format!("index every dimension: `{usage}`"),
            );
        };
        self.check_half(a, elem, name)?;
        if let Some(g) = given.filter(|g| *g != elem) {
            return err_hint(
                a,
                format!(
                    "`{name}::<{}>` reads a tile of `{}`",
                    self.scalar_name(g),
                    self.scalar_name(elem)
                ),
                "the turbofish names the tile's element type",
            );
        }
        let ty = match num {
            4 => Ty::Frag {
                kind: FragKind::A,
                elem,
            },
            2 => Ty::Frag {
                kind: FragKind::B,
                elem,
            },
            _ => Ty::s(Scalar::U32),
        };
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::Ldmatrix { num, trans }, vec![place]),
            ty,
        ))
    }

    fn mma(
        &mut self,
        c: &syn::ExprCall,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        if !matches!(turbofish, syn::PathArguments::None) {
            return err_hint(
                c,
                "`mma` takes no generic arguments",
                "the element type comes from the fragments",
            );
        }
        self.arity(c, "mma", args, 3, "mma(a, b, c)")?;
        let mut ir = Vec::new();
        for (k, (a, want)) in args
            .iter()
            .zip([FragKind::A, FragKind::B, FragKind::C])
            .enumerate()
        {
            // a device call's result type comes from here: B has A's element type
            let expected = match (want, ir.first().and_then(|x: &Expr| x.ty.frag())) {
                (FragKind::A, _) => None,
                (FragKind::B, Some((_, elem))) => Some(Ty::Frag { kind: want, elem }),
                (FragKind::B, None) => None,
                (FragKind::C, _) => Some(Ty::Frag {
                    kind: FragKind::C,
                    elem: Scalar::F32,
                }),
            };
            let v = self.expr(a, expected.as_ref())?;
            if v.ty.frag().map(|(kind, _)| kind) != Some(want) {
                let which = ["first", "second", "third"][k];
                let expected = match want {
                    FragKind::C => "FragC".to_string(),
                    other => format!("{}<T>", other.rust_name()),
                };
                return err_hint(
                    a,
                    format!(
                        "the {which} operand of `mma` is a `{expected}`, found `{}`",
                        self.ty_name(&v.ty)
                    ),
                    MMA_USAGE,
                );
            }
            ir.push(v);
        }
        let (ea, eb) = (ir[0].ty.frag(), ir[1].ty.frag());
        if let (Some((_, ea)), Some((_, eb))) = (ea, eb) {
            if ea != eb {
                return err_hint(
                    c,
                    format!(
                        "A holds `{}` but B holds `{}`",
                        self.scalar_name(ea),
                        self.scalar_name(eb)
                    ),
                    "both inputs of one mma have the same element type",
                );
            }
        }
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::Mma, ir),
            Ty::Frag {
                kind: FragKind::C,
                elem: Scalar::F32,
            },
        ))
    }

    fn frag_zero(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        kind: FragKind,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let usage = if kind == FragKind::C {
            format!("{name}()")
        } else {
            format!("{name}::<T>()")
        };
        if !args.is_empty() {
            return err_hint(
                c,
                format!("`{name}` takes no arguments"),
                format!("write `{usage}`"),
            );
        }
        let elem = if kind == FragKind::C {
            if !matches!(turbofish, syn::PathArguments::None) {
                return err_hint(
                    c,
                    "`frag_c_zero` takes no element type: accumulators are f32",
                    "write `frag_c_zero()`",
                );
            }
            Scalar::F32
        } else {
            match self.half_turbofish(name, turbofish, &usage)? {
                Some(s) => s,
                None => {
                    return err_hint(
                        c,
                        format!("`{name}` needs the element type"),
                        format!("write `{usage}`"),
                    )
                }
            }
        };
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::FragZero, vec![]),
            Ty::Frag { kind, elem },
        ))
    }

    fn pack2(
        &mut self,
        c: &syn::ExprCall,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let usage = "pack2::<T>(lo, hi)";
        let Some(elem) = self.half_turbofish("pack2", turbofish, usage)? else {
            return err_hint(
                c,
                "`pack2` needs the half type to round to",
                format!("write `{usage}` with T = bf16, f16 or a `T: Float`"),
            );
        };
        self.arity(c, "pack2", args, 2, usage)?;
        let f32t = Ty::s(Scalar::F32);
        let lo = self.typed_arg(args[0], &f32t)?;
        let hi = self.typed_arg(args[1], &f32t)?;
        Ok(Expr::new(
            ExprKind::Intrinsic(Intrinsic::Pack2(elem), vec![lo, hi]),
            Ty::s(Scalar::U32),
        ))
    }

    fn unpack(
        &mut self,
        c: &syn::ExprCall,
        name: &str,
        i: Intrinsic,
        turbofish: &syn::PathArguments,
        args: &[&syn::Expr],
    ) -> Res<Expr> {
        let usage = format!("{name}::<T>(r)");
        let Some(elem) = self.half_turbofish(name, turbofish, &usage)? else {
            return err_hint(
                c,
                format!("`{name}` needs the half type the register holds"),
                format!("write `{usage}`"),
            );
        };
        self.arity(c, name, args, 1, &usage)?;
        let r = self.typed_arg(args[0], &Ty::s(Scalar::U32))?;
        Ok(Expr::new(ExprKind::Intrinsic(i, vec![r]), Ty::s(elem)))
    }

    /// The register type of `frag[idx]`, after checking a literal index against the
    /// fragment's register count.
    pub(super) fn frag_index(
        &self,
        at: &dyn quote::ToTokens,
        frag: &Ty,
        kind: FragKind,
        idx: &Expr,
    ) -> Res<Ty> {
        if let ExprKind::Int(v) = idx.kind {
            let regs = kind.regs() as u64;
            let negative = idx.ty.scalar().is_some_and(Scalar::is_signed_int) && (v as i64) < 0;
            if negative || v >= regs {
                let shown = if negative {
                    (v as i64).to_string()
                } else {
                    v.to_string()
                };
                let what = match kind {
                    FragKind::C => "f32 accumulators",
                    _ => "u32 registers of two halves",
                };
                return err_hint(
                    at,
                    format!(
                        "index {shown} is out of range: a `{}` holds {regs} {what} per lane (indices 0..{regs})",
                        self.ty_name(frag)
                    ),
                    "FragA has 4 registers, FragB 2, FragC 4; which matrix elements each holds is the m16n8k16 layout of the PTX ISA",
                );
            }
        }
        Ok(Ty::s(kind.reg_type()))
    }
}

/// The fragment kind a type name (`FragA`, `FragB`, `FragC`) denotes.
fn frag_kind_name(name: &str) -> Option<FragKind> {
    match name {
        "FragA" => Some(FragKind::A),
        "FragB" => Some(FragKind::B),
        "FragC" => Some(FragKind::C),
        _ => None,
    }
}

impl Checker {
    /// `FragA<T>`, `FragB<T>` or `FragC` in a `let` annotation; `None` if `ty` is none of them.
    pub(super) fn frag_type(&self, ty: &syn::Type) -> Option<Res<Ty>> {
        let syn::Type::Path(p) = ty else {
            return None;
        };
        let seg = p.path.segments.last()?;
        let kind = frag_kind_name(&seg.ident.to_string())?;
        Some(self.frag_type_args(ty, kind, &seg.arguments))
    }

    fn frag_type_args(&self, ty: &syn::Type, kind: FragKind, args: &syn::PathArguments) -> Res<Ty> {
        let name = kind.rust_name();
        if kind == FragKind::C {
            if !matches!(args, syn::PathArguments::None) {
                return err_hint(
                    ty,
                    "`FragC` takes no element type",
                    "accumulators are f32: write `FragC`",
                );
            }
            return Ok(Ty::Frag {
                kind,
                elem: Scalar::F32,
            });
        }
        let syn::PathArguments::AngleBracketed(a) = args else {
            return err_hint(
                ty,
                format!("`{name}` needs its element type"),
                format!("write `{name}<bf16>`, `{name}<f16>` or `{name}<T>`"),
            );
        };
        let [syn::GenericArgument::Type(t)] = a.args.iter().collect::<Vec<_>>()[..] else {
            return err(a, format!("`{name}` takes one element type"));
        };
        let elem = self.scalar_type(t)?;
        self.check_half(t, elem, name)?;
        Ok(Ty::Frag { kind, elem })
    }
}
