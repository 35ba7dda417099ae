//! Checking and lowering expressions: literals, variables, operators, casts, indexing,
//! fields and `if` used as a value. Calls live in `calls.rs`.

use super::Checker;
use crate::diag::{err, err_hint, Diagnostic, Res};
use crate::ir::{Axis, BinOp, Expr, ExprKind, TypeConst, UnOp};
use crate::types::{Scalar, Ty};

/// Whether an expression is a literal without a type suffix (its type comes from context).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Untyped {
    Int,
    Float,
}

/// The kind of an unsuffixed literal (possibly negated or parenthesised), if `e` is one.
pub fn untyped_literal(e: &syn::Expr) -> Option<Untyped> {
    match e {
        syn::Expr::Lit(l) => match &l.lit {
            syn::Lit::Int(i) if i.suffix().is_empty() => Some(Untyped::Int),
            syn::Lit::Float(f) if f.suffix().is_empty() => Some(Untyped::Float),
            _ => None,
        },
        syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => untyped_literal(&u.expr),
        syn::Expr::Paren(p) => untyped_literal(&p.expr),
        syn::Expr::Group(g) => untyped_literal(&g.expr),
        syn::Expr::Binary(b) if !is_comparison(&b.op) => {
            match (untyped_literal(&b.left), untyped_literal(&b.right)) {
                (Some(a), Some(b)) if a == b => Some(a),
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_comparison(op: &syn::BinOp) -> bool {
    matches!(
        op,
        syn::BinOp::Eq(_)
            | syn::BinOp::Ne(_)
            | syn::BinOp::Lt(_)
            | syn::BinOp::Le(_)
            | syn::BinOp::Gt(_)
            | syn::BinOp::Ge(_)
    )
}

/// Maps a syn binary operator to Kiln's; `None` for compound assignments.
pub fn bin_op(op: &syn::BinOp) -> Option<BinOp> {
    Some(match op {
        syn::BinOp::Add(_) => BinOp::Add,
        syn::BinOp::Sub(_) => BinOp::Sub,
        syn::BinOp::Mul(_) => BinOp::Mul,
        syn::BinOp::Div(_) => BinOp::Div,
        syn::BinOp::Rem(_) => BinOp::Rem,
        syn::BinOp::And(_) => BinOp::And,
        syn::BinOp::Or(_) => BinOp::Or,
        syn::BinOp::BitXor(_) => BinOp::BitXor,
        syn::BinOp::BitAnd(_) => BinOp::BitAnd,
        syn::BinOp::BitOr(_) => BinOp::BitOr,
        syn::BinOp::Shl(_) => BinOp::Shl,
        syn::BinOp::Shr(_) => BinOp::Shr,
        syn::BinOp::Eq(_) => BinOp::Eq,
        syn::BinOp::Lt(_) => BinOp::Lt,
        syn::BinOp::Le(_) => BinOp::Le,
        syn::BinOp::Ne(_) => BinOp::Ne,
        syn::BinOp::Ge(_) => BinOp::Ge,
        syn::BinOp::Gt(_) => BinOp::Gt,
        _ => return None,
    })
}

/// Maps a compound assignment operator (`+=`, …) to the operation it applies.
pub fn compound_op(op: &syn::BinOp) -> Option<BinOp> {
    Some(match op {
        syn::BinOp::AddAssign(_) => BinOp::Add,
        syn::BinOp::SubAssign(_) => BinOp::Sub,
        syn::BinOp::MulAssign(_) => BinOp::Mul,
        syn::BinOp::DivAssign(_) => BinOp::Div,
        syn::BinOp::RemAssign(_) => BinOp::Rem,
        syn::BinOp::BitXorAssign(_) => BinOp::BitXor,
        syn::BinOp::BitAndAssign(_) => BinOp::BitAnd,
        syn::BinOp::BitOrAssign(_) => BinOp::BitOr,
        syn::BinOp::ShlAssign(_) => BinOp::Shl,
        syn::BinOp::ShrAssign(_) => BinOp::Shr,
        _ => return None,
    })
}

impl Checker {
    /// Checks `e`; `expected` is the type the context wants (it types unsuffixed literals
    /// and device-function results).
    pub fn expr(&mut self, e: &syn::Expr, expected: Option<&Ty>) -> Res<Expr> {
        match e {
            syn::Expr::Lit(l) => self.literal(&l.lit, expected, false),
            syn::Expr::Paren(p) => self.expr(&p.expr, expected),
            syn::Expr::Group(g) => self.expr(&g.expr, expected),
            syn::Expr::Path(p) => self.path_value(p),
            syn::Expr::Unary(u) => self.unary(u, expected),
            syn::Expr::Binary(b) => self.binary(b, expected),
            syn::Expr::Cast(c) => self.cast(c),
            syn::Expr::Index(i) => self.index(i),
            syn::Expr::Field(f) => self.field(f),
            syn::Expr::Call(c) => self.call(c, expected),
            syn::Expr::MethodCall(m) => self.method_call(m, expected),
            syn::Expr::If(i) => self.if_value(i, expected),
            syn::Expr::Block(b) if b.label.is_none() && b.block.stmts.len() == 1 => match &b.block.stmts[0] {
                syn::Stmt::Expr(inner, None) => self.expr(inner, expected),
                _ => err_hint(e, "a block used as a value must hold one expression", "compute the value in statements before it"),
            },
            syn::Expr::Assign(_) => err_hint(e, "an assignment is not a value", "write the assignment as its own statement"),
            syn::Expr::Closure(_) => err_hint(
                e,
                "closures are not supported in kernels",
                "write a `#[device]` function and call it",
            ),
            syn::Expr::Match(_) => err_hint(e, "`match` is not supported in kernels", "use `if` / `else if` / `else`"),
            syn::Expr::Macro(m) => err_hint(
                e,
                format!("macros such as `{}!` are not supported in kernels", path_text(&m.mac.path)),
                "kernels cannot print or panic; write results to an output slice",
            ),
            syn::Expr::Reference(_) => err_hint(
                e,
                "references are not values in Kiln",
                "`&mut x[i]` is only written as an argument of an atomic (`atomic_add(&mut x[i], v)`), of `cp_async`, or of a Hopper builtin (`tma_load_2d`, `mbarrier_*`)",
            ),
            syn::Expr::Tuple(_) => err_hint(e, "tuples are not supported in kernels", "use separate variables"),
            syn::Expr::Struct(_) => err_hint(e, "structs are not supported in kernels", "pass separate slices or scalars"),
            syn::Expr::Array(_) => err_hint(e, "array literals are not supported", "declare a register array with `let mut a = [0.0f32; N];`"),
            syn::Expr::Repeat(_) => err_hint(e, "an array can only initialise a `let`", "write `let mut a = [v; N];`"),
            syn::Expr::Range(_) => err_hint(e, "ranges can only be iterated by `for`", "write `for i in a..b { … }`"),
            syn::Expr::Unsafe(_) => err_hint(e, "`unsafe` blocks are not needed in kernels", "remove `unsafe`"),
            syn::Expr::Async(_) | syn::Expr::Await(_) => err(e, "`async`/`.await` is not supported in kernels"),
            syn::Expr::Try(_) => err_hint(e, "the `?` operator is not supported in kernels", "kernels have no error values; test conditions with `if`"),
            syn::Expr::Let(_) => err_hint(e, "`let` patterns in conditions are not supported", "use a plain boolean condition"),
            syn::Expr::Loop(_) | syn::Expr::ForLoop(_) | syn::Expr::While(_) => {
                err_hint(e, "loops are statements, not values", "assign to a `let mut` variable inside the loop")
            }
            syn::Expr::Return(_) | syn::Expr::Break(_) | syn::Expr::Continue(_) => {
                err(e, "`return`, `break` and `continue` are statements here, not values")
            }
            _ => err(e, "this expression is not supported in Kiln kernels"),
        }
    }

    /// A literal; `negative` when it sits under a unary minus.
    pub fn literal(&self, lit: &syn::Lit, expected: Option<&Ty>, negative: bool) -> Res<Expr> {
        let want = expected.and_then(Ty::scalar);
        match lit {
            syn::Lit::Bool(b) => Ok(Expr::new(ExprKind::Bool(b.value), Ty::s(Scalar::Bool))),
            syn::Lit::Int(i) => {
                let suffix = i.suffix();
                if matches!(suffix, "f32" | "f64") {
                    let v: f64 = i
                        .base10_parse::<u64>()
                        .map_err(|e| Diagnostic::new(i.span(), e.to_string()))?
                        as f64;
                    let s = Scalar::from_rust(suffix).expect("f32/f64");
                    return Ok(Expr::new(
                        ExprKind::Float(if negative { -v } else { v }),
                        Ty::s(s),
                    ));
                }
                let ty = if suffix.is_empty() {
                    match want {
                        Some(s) if s.is_int() => s,
                        Some(s) if s.is_float() => {
                            return err_hint(
                                i,
                                format!(
                                    "expected `{}`, found an integer literal",
                                    self.scalar_name(s)
                                ),
                                format!("write a float literal: `{}.0`", i.base10_digits()),
                            )
                        }
                        _ => Scalar::I32,
                    }
                } else {
                    match Scalar::from_rust(suffix) {
                        Some(s) if s.is_int() => s,
                        _ => {
                            return err_hint(
                                i,
                                format!("unsupported literal suffix `{suffix}`"),
                                "integer suffixes are u8, u16, u32, u64, i32, i64",
                            )
                        }
                    }
                };
                let magnitude: u128 = i
                    .base10_parse::<u128>()
                    .map_err(|_| Diagnostic::new(i.span(), "integer literal is too large"))?;
                let (min, max) = ty.int_range();
                let value: i128 = if negative {
                    -(magnitude as i128)
                } else {
                    magnitude as i128
                };
                if negative && min == 0 {
                    return err_hint(
                        i,
                        format!(
                            "cannot negate an unsigned `{}` literal",
                            self.scalar_name(ty)
                        ),
                        "use a signed type (i32, i64)",
                    );
                }
                if value < min || value > max {
                    return err_hint(
                        i,
                        format!("literal out of range for `{}`", self.scalar_name(ty)),
                        format!("`{}` holds {min}..={max}", self.scalar_name(ty)),
                    );
                }
                Ok(Expr::new(ExprKind::Int(value as u64), Ty::s(ty)))
            }
            syn::Lit::Float(f) => {
                let v: f64 = f
                    .base10_parse()
                    .map_err(|e| Diagnostic::new(f.span(), e.to_string()))?;
                let v = if negative { -v } else { v };
                let ty = match f.suffix() {
                    "" => match want {
                        Some(s) if s.is_float() => s,
                        Some(s) => {
                            return err_hint(
                                f,
                                format!(
                                    "expected `{}`, found a float literal",
                                    self.scalar_name(s)
                                ),
                                "convert with `as` or write an integer literal",
                            )
                        }
                        None => {
                            return err_hint(
                                f,
                                "cannot tell the type of this float literal",
                                format!(
                                    "write `{}f32` (or annotate: `let x: f32 = …`)",
                                    f.base10_digits()
                                ),
                            )
                        }
                    },
                    "f32" => Scalar::F32,
                    "f64" => Scalar::F64,
                    other => {
                        return err_hint(
                            f,
                            format!("unsupported literal suffix `{other}`"),
                            "float suffixes are f32 and f64",
                        )
                    }
                };
                let overflows = match ty {
                    Scalar::F64 => !v.is_finite(),
                    Scalar::F32 => !(v as f32).is_finite(),
                    Scalar::F16 => !half::f16::from_f64(v).is_finite(),
                    Scalar::Bf16 => !half::bf16::from_f64(v).is_finite(),
                    _ => false,
                };
                if overflows {
                    return err_hint(
                        f,
                        format!("float literal out of range for `{}`", self.scalar_name(ty)),
                        "use `f32::INFINITY` / `MAX` if that is what you mean",
                    );
                }
                Ok(Expr::new(ExprKind::Float(v), Ty::s(ty)))
            }
            _ => err_hint(
                lit,
                "only numeric and boolean literals are supported",
                "kernels have no strings or chars",
            ),
        }
    }

    fn path_value(&mut self, p: &syn::ExprPath) -> Res<Expr> {
        if p.qself.is_some() {
            return err(p, "qualified paths are not supported");
        }
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        if segs.len() == 1 {
            let name = &segs[0];
            if let Some(var) = self.lookup(name) {
                return Ok(Expr::new(ExprKind::Var(var.cname.clone()), var.ty.clone()));
            }
            if let Some(ty) = self.const_param(name) {
                return Ok(Expr::new(ExprKind::ConstParam(name.clone()), Ty::s(ty)));
            }
            if self.type_param(name).is_some() || Scalar::from_rust(name).is_some() {
                return err(p, format!("`{name}` is a type, not a value"));
            }
            if super::builtins::FREE_FUNCTIONS.contains(&name.as_str()) {
                return err_hint(
                    p,
                    format!("`{name}` is a function, not a value"),
                    format!("call it: `{name}()`"),
                );
            }
            return err_hint(
                p,
                format!("cannot find `{name}` in this kernel"),
                "declare it with `let`, or pass it as a parameter",
            );
        }
        if segs.len() == 2 {
            let scalar = match Scalar::from_rust(&segs[0]) {
                Some(s) => Some(s),
                None => self.type_param(&segs[0]),
            };
            if let Some(s) = scalar {
                let c = match segs[1].as_str() {
                    "MIN" => TypeConst::Min,
                    "MAX" => TypeConst::Max,
                    "INFINITY" if s.is_float() => TypeConst::Infinity,
                    "NEG_INFINITY" if s.is_float() => TypeConst::NegInfinity,
                    "NAN" if s.is_float() => TypeConst::Nan,
                    "EPSILON" if s.is_float() => TypeConst::Epsilon,
                    other => return err_hint(
                        p,
                        format!("unknown constant `{}::{other}`", self.scalar_name(s)),
                        "available: MIN, MAX, and for floats INFINITY, NEG_INFINITY, NAN, EPSILON",
                    ),
                };
                if s == Scalar::Bool {
                    return err(p, "bool has no numeric constants");
                }
                return Ok(Expr::new(ExprKind::TypeConst(c), Ty::s(s)));
            }
        }
        err_hint(
            p,
            format!("cannot find `{}` in this kernel", path_text(&p.path)),
            "kernels see their parameters, locals and comptime parameters",
        )
    }

    fn unary(&mut self, u: &syn::ExprUnary, expected: Option<&Ty>) -> Res<Expr> {
        match u.op {
            syn::UnOp::Neg(_) => {
                if let syn::Expr::Lit(l) = strip(&u.expr) {
                    return self.literal(&l.lit, expected, true);
                }
                let a = self.expr(&u.expr, expected)?;
                match a.ty.scalar() {
                    Some(s) if s.is_float() || s.is_signed_int() => Ok(Expr::new(
                        ExprKind::Unary(UnOp::Neg, Box::new(a.clone())),
                        a.ty,
                    )),
                    Some(s) if s.is_int() => err_hint(
                        u,
                        format!("cannot negate unsigned `{}`", self.scalar_name(s)),
                        "use a signed type or `0 - x` with wrapping",
                    ),
                    _ => err(
                        u,
                        format!("cannot negate a value of type `{}`", self.ty_name(&a.ty)),
                    ),
                }
            }
            syn::UnOp::Not(_) => {
                let a = self.expr(&u.expr, expected)?;
                match a.ty.scalar() {
                    Some(s) if s == Scalar::Bool || s.is_int() => Ok(Expr::new(
                        ExprKind::Unary(UnOp::Not, Box::new(a.clone())),
                        a.ty,
                    )),
                    _ => err_hint(
                        u,
                        format!(
                            "`!` needs a bool or an integer, found `{}`",
                            self.ty_name(&a.ty)
                        ),
                        "compare floats explicitly",
                    ),
                }
            }
            syn::UnOp::Deref(_) => err_hint(
                u,
                "dereferencing is not supported",
                "kernels have no pointers; index slices instead",
            ),
            _ => err(u, "unsupported unary operator"),
        }
    }

    fn binary(&mut self, b: &syn::ExprBinary, expected: Option<&Ty>) -> Res<Expr> {
        let Some(op) = bin_op(&b.op) else {
            return err_hint(
                b,
                "a compound assignment is not a value",
                "write it as its own statement",
            );
        };
        if matches!(op, BinOp::And | BinOp::Or) {
            let bool_ty = Ty::s(Scalar::Bool);
            let l = self.expr(&b.left, Some(&bool_ty))?;
            self.expect_ty(&b.left, &bool_ty, &l.ty)?;
            let r = self.expr(&b.right, Some(&bool_ty))?;
            self.expect_ty(&b.right, &bool_ty, &r.ty)?;
            return Ok(Expr::new(
                ExprKind::Binary(op, Box::new(l), Box::new(r)),
                bool_ty,
            ));
        }
        let operand_expected = if op.is_comparison() { None } else { expected };
        let (l, r) = if matches!(op, BinOp::Shl | BinOp::Shr) {
            let l = self.expr(&b.left, operand_expected)?;
            let r = self.expr(&b.right, Some(&Ty::s(Scalar::U32)))?;
            (l, r)
        } else if untyped_literal(&b.left).is_some() && untyped_literal(&b.right).is_none() {
            let r = self.expr(&b.right, operand_expected)?;
            let l = self.expr(&b.left, Some(&r.ty))?;
            (l, r)
        } else {
            let l = self.expr(&b.left, operand_expected)?;
            let r = self.expr(&b.right, Some(&l.ty))?;
            (l, r)
        };
        let (Some(ls), Some(rs)) = (l.ty.scalar(), r.ty.scalar()) else {
            let bad = if l.ty.scalar().is_none() {
                &l.ty
            } else {
                &r.ty
            };
            return err_hint(
                b,
                format!(
                    "`{}` needs scalar operands, found `{}`",
                    op.c_op(),
                    self.ty_name(bad)
                ),
                "index arrays and slices to get their elements",
            );
        };
        if matches!(op, BinOp::Shl | BinOp::Shr) {
            if !ls.is_int() || !rs.is_int() {
                return err_hint(
                    b,
                    "shifts need integer operands",
                    "shift integers; use `to_bits` to shift a float's bits",
                );
            }
            return Ok(Expr::new(
                ExprKind::Binary(op, Box::new(l.clone()), Box::new(r)),
                l.ty,
            ));
        }
        if ls != rs {
            return err_hint(
                b,
                format!(
                    "mismatched types: `{}` {} `{}`",
                    self.scalar_name(ls),
                    op.c_op(),
                    self.scalar_name(rs)
                ),
                format!(
                    "Kiln never converts implicitly; convert one side with `as {}`",
                    self.scalar_name(ls)
                ),
            );
        }
        let ok = match op {
            BinOp::Add
            | BinOp::Sub
            | BinOp::Mul
            | BinOp::Div
            | BinOp::Rem
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge => ls != Scalar::Bool,
            BinOp::BitAnd | BinOp::BitOr | BinOp::BitXor => ls.is_int() || ls == Scalar::Bool,
            _ => true,
        };
        if !ok {
            return err(
                b,
                format!(
                    "`{}` is not defined for `{}`",
                    op.c_op(),
                    self.scalar_name(ls)
                ),
            );
        }
        let ty = if op.is_comparison() {
            Ty::s(Scalar::Bool)
        } else {
            l.ty.clone()
        };
        Ok(Expr::new(
            ExprKind::Binary(op, Box::new(l), Box::new(r)),
            ty,
        ))
    }

    fn cast(&mut self, c: &syn::ExprCast) -> Res<Expr> {
        let target = self.scalar_type(&c.ty)?;
        let lit_expected = match untyped_literal(&c.expr) {
            Some(Untyped::Float) if target.is_float() => Some(Ty::s(target)),
            Some(Untyped::Float) => Some(Ty::s(Scalar::F64)),
            Some(Untyped::Int) if target.is_int() => Some(Ty::s(target)),
            _ => None,
        };
        let a = self.expr(&c.expr, lit_expected.as_ref())?;
        let Some(src) = a.ty.scalar() else {
            return err(
                c,
                format!("cannot cast `{}` to a scalar", self.ty_name(&a.ty)),
            );
        };
        if target == Scalar::Bool && src != Scalar::Bool {
            return err_hint(
                c,
                format!("cannot cast `{}` to bool", self.scalar_name(src)),
                "compare instead: `x != 0`",
            );
        }
        if src == target {
            return Ok(a);
        }
        Ok(Expr::new(ExprKind::Cast(Box::new(a)), Ty::s(target)))
    }

    /// `base[index]`: an element (or a row of a multi-dimensional array).
    pub fn index(&mut self, i: &syn::ExprIndex) -> Res<Expr> {
        if let syn::Expr::Range(_) = &*i.index {
            return err_hint(
                i,
                "slicing is not supported",
                "index one element at a time, or pass offsets",
            );
        }
        let base = self.expr(&i.expr, None)?;
        let idx = self.expr(&i.index, Some(&Ty::s(Scalar::U32)))?;
        match idx.ty.scalar() {
            Some(s) if s.is_int() => {}
            _ => {
                return err_hint(
                    &i.index,
                    format!(
                        "an index must be an integer, found `{}`",
                        self.ty_name(&idx.ty)
                    ),
                    "convert with `as u32`",
                )
            }
        }
        let ty = match &base.ty {
            Ty::Slice { elem, .. } | Ty::DynShared { elem } | Ty::Vector { elem } => Ty::s(*elem),
            Ty::Frag { kind, .. } => self.frag_index(i, &base.ty, *kind, &idx)?,
            t @ (Ty::Array { .. } | Ty::FragArray { .. }) => {
                t.array_row().expect("arrays have rows")
            }
            other => {
                return err_hint(
                    &i.expr,
                    format!("cannot index a value of type `{}`", self.ty_name(other)),
                    "index slices, arrays, vectors and fragments",
                )
            }
        };
        Ok(Expr::new(
            ExprKind::Index(Box::new(base), Box::new(idx)),
            ty,
        ))
    }

    fn field(&mut self, f: &syn::ExprField) -> Res<Expr> {
        let base = self.expr(&f.base, None)?;
        let name = match &f.member {
            syn::Member::Named(n) => n.to_string(),
            syn::Member::Unnamed(_) => return err(f, "tuple fields are not supported"),
        };
        if base.ty != Ty::Dim3 {
            return err_hint(
                f,
                format!("`{}` has no field `{name}`", self.ty_name(&base.ty)),
                "only thread_idx(), block_idx(), block_dim() and grid_dim() have fields (x, y, z)",
            );
        }
        let axis = match name.as_str() {
            "x" => Axis::X,
            "y" => Axis::Y,
            "z" => Axis::Z,
            _ => return err_hint(f, format!("no field `{name}`"), "the fields are x, y and z"),
        };
        Ok(Expr::new(
            ExprKind::Field(Box::new(base), axis),
            Ty::s(Scalar::U32),
        ))
    }

    fn if_value(&mut self, i: &syn::ExprIf, expected: Option<&Ty>) -> Res<Expr> {
        let cond = self.condition(&i.cond)?;
        let then = self.single_value(&i.then_branch, expected)?;
        let Some((_, els)) = &i.else_branch else {
            return err_hint(
                i,
                "an `if` used as a value needs an `else`",
                "add `else { … }`",
            );
        };
        let els = match &**els {
            syn::Expr::Block(b) => self.single_value(&b.block, Some(&then.ty))?,
            syn::Expr::If(nested) => self.if_value(nested, Some(&then.ty))?,
            other => self.expr(other, Some(&then.ty))?,
        };
        self.expect_ty(
            &i.else_branch.as_ref().expect("checked").1,
            &then.ty,
            &els.ty,
        )?;
        let ty = then.ty.clone();
        Ok(Expr::new(
            ExprKind::Select(Box::new(cond), Box::new(then), Box::new(els)),
            ty,
        ))
    }

    fn single_value(&mut self, block: &syn::Block, expected: Option<&Ty>) -> Res<Expr> {
        match block.stmts.as_slice() {
            [syn::Stmt::Expr(e, None)] => self.expr(e, expected),
            _ => err_hint(
                block,
                "each branch of an `if` used as a value must be a single expression",
                "declare a `let mut` variable before the `if` and assign it in each branch",
            ),
        }
    }

    /// A boolean condition.
    pub fn condition(&mut self, e: &syn::Expr) -> Res<Expr> {
        if let syn::Expr::Let(_) = e {
            return err_hint(
                e,
                "`if let` / `while let` are not supported",
                "use a plain boolean condition",
            );
        }
        let bool_ty = Ty::s(Scalar::Bool);
        let c = self.expr(e, Some(&bool_ty))?;
        if c.ty != bool_ty {
            return err_hint(
                e,
                format!(
                    "a condition must be `bool`, found `{}`",
                    self.ty_name(&c.ty)
                ),
                "compare explicitly, e.g. `x != 0`",
            );
        }
        Ok(c)
    }
}

/// `e` without parentheses and invisible groups.
pub fn strip(e: &syn::Expr) -> &syn::Expr {
    match e {
        syn::Expr::Paren(p) => strip(&p.expr),
        syn::Expr::Group(g) => strip(&g.expr),
        other => other,
    }
}

/// A path as written, segments joined by `::`.
pub fn path_text(p: &syn::Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
