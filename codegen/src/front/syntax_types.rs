//! Reading Rust type syntax (`f32`, `T`, `&mut [u32]`, `[[f32; 33]; 32]`) and comptime
//! lengths into Kiln types.

use super::Checker;
use crate::diag::{err, err_hint, Diagnostic, Res};
use crate::types::{ConstOp, Len, Scalar, Space, Ty};

/// The element types a user may write, for hints.
pub const SCALAR_LIST: &str = "f32, f16, bf16, f64, i32, u32, i64, u64, u8, u16, bool";

impl Checker {
    /// A scalar type: one of Kiln's element types or a `T: Float` parameter.
    pub fn scalar_type(&self, ty: &syn::Type) -> Res<Scalar> {
        let path = match ty {
            syn::Type::Path(p) if p.qself.is_none() => &p.path,
            syn::Type::Paren(p) => return self.scalar_type(&p.elem),
            syn::Type::Group(g) => return self.scalar_type(&g.elem),
            _ => {
                return err_hint(
                    ty,
                    "expected a scalar type here",
                    format!("use one of {SCALAR_LIST}"),
                )
            }
        };
        let Some(ident) = path.get_ident() else {
            let last = path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default();
            if Scalar::from_rust(&last).is_some() {
                return Ok(Scalar::from_rust(&last).expect("checked"));
            }
            return err_hint(
                ty,
                "unknown type",
                format!("Kiln's element types are {SCALAR_LIST}"),
            );
        };
        let name = ident.to_string();
        if let Some(s) = Scalar::from_rust(&name) {
            return Ok(s);
        }
        if let Some(s) = self.type_param(&name) {
            return Ok(s);
        }
        let hint = match name.as_str() {
            "usize" | "isize" => {
                "Kiln has no pointer-sized integers: use u32 (or u64) for sizes and indices"
                    .to_string()
            }
            "i8" | "i16" | "u128" | "i128" | "char" => {
                format!("`{name}` is not a Kiln element type; use one of {SCALAR_LIST}")
            }
            _ => format!("Kiln's element types are {SCALAR_LIST}, or a generic `T: Float`"),
        };
        err_hint(ty, format!("unsupported type `{name}`"), hint)
    }

    /// A type written in a `let` annotation: a scalar, an array (register array) or a
    /// fragment (`FragA<T>`, `FragB<T>`, `FragC`).
    pub fn value_type(&self, ty: &syn::Type) -> Res<Ty> {
        if let Some(frag) = self.frag_type(ty) {
            return frag;
        }
        match ty {
            syn::Type::Array(_) => {
                let (elem, dims) = self.array_type(ty)?;
                Ok(Ty::Array {
                    space: Space::Local,
                    elem,
                    dims,
                })
            }
            syn::Type::Reference(_) => err_hint(
                ty,
                "references cannot be stored in variables",
                "index the slice parameter directly",
            ),
            _ => Ok(Ty::Scalar(self.scalar_type(ty)?)),
        }
    }

    /// The array behind a device function's `&[E; N]` / `&mut [E; N]` parameter: `E` is a
    /// scalar (a register or shared array is passed) or a fragment (an array of fragments).
    /// `Shared<[E; N]>` says the array lives in shared memory (what `ldmatrix` and
    /// `cp_async` need); a plain `[E; N]` is a register array.
    pub fn array_param_type(&self, ty: &syn::Type) -> Res<Ty> {
        let mut dims = Vec::new();
        let mut cur = ty;
        let mut space = Space::Local;
        if let Some(inner) = shared_wrapper(ty) {
            space = Space::Shared;
            cur = inner;
        }
        loop {
            match cur {
                syn::Type::Array(a) => {
                    dims.push(self.len_expr(&a.len)?);
                    cur = &a.elem;
                }
                syn::Type::Paren(p) => cur = &p.elem,
                _ => break,
            }
        }
        if dims.is_empty() {
            return err_hint(
                ty,
                "expected an array type",
                "write `&mut [E; N]` for a register array or `&mut Shared<[E; N]>` for a shared one",
            );
        }
        if let Some(frag) = self.frag_type(cur) {
            if space == Space::Shared {
                return err_hint(
                    ty,
                    "fragments live in registers, not shared memory",
                    "write `&mut [FragC; N]`",
                );
            }
            if let Ty::Frag { kind, elem } = frag? {
                return Ok(Ty::FragArray { kind, elem, dims });
            }
        }
        Ok(Ty::Array {
            space,
            elem: self.scalar_type(cur)?,
            dims,
        })
    }

    /// `[[T; A]; B]` → (T, [B, A]).
    pub fn array_type(&self, ty: &syn::Type) -> Res<(Scalar, Vec<Len>)> {
        match ty {
            syn::Type::Array(a) => {
                let len = self.len_expr(&a.len)?;
                let (elem, mut inner) = self.array_type(&a.elem)?;
                inner.insert(0, len);
                Ok((elem, inner))
            }
            syn::Type::Paren(p) => self.array_type(&p.elem),
            _ => Ok((self.scalar_type(ty)?, Vec::new())),
        }
    }

    /// A comptime length: literals, `const` generic parameters and + - * / % << >>.
    pub fn len_expr(&self, e: &syn::Expr) -> Res<Len> {
        let len = self.len_expr_inner(e)?;
        if let Some(v) = len.literal_value() {
            if v <= 0 {
                return err_hint(
                    e,
                    format!("array length must be at least 1, found {v}"),
                    "give every array a positive length",
                );
            }
        }
        Ok(len)
    }

    fn len_expr_inner(&self, e: &syn::Expr) -> Res<Len> {
        match e {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(i),
                ..
            }) => {
                let v = i.base10_parse::<u64>().map_err(|_| {
                    Diagnostic::new(i.span(), "array length is not a valid non-negative integer")
                })?;
                Ok(Len::Lit(v))
            }
            syn::Expr::Paren(p) => self.len_expr_inner(&p.expr),
            syn::Expr::Group(g) => self.len_expr_inner(&g.expr),
            syn::Expr::Block(b) if b.block.stmts.len() == 1 => match &b.block.stmts[0] {
                syn::Stmt::Expr(inner, None) => self.len_expr_inner(inner),
                _ => err(e, "array length must be a comptime expression"),
            },
            syn::Expr::Path(p) if p.path.get_ident().is_some() => {
                let name = p.path.get_ident().expect("checked").to_string();
                match self.const_param(&name) {
                    Some(s) if s.is_int() => Ok(Len::Param(name)),
                    Some(_) => err(e, format!("`{name}` is not an integer and cannot be a length")),
                    None if self.lookup(&name).is_some() => err_hint(
                        e,
                        format!("`{name}` is a run-time value; array lengths must be known at compile time"),
                        "use a literal or a `const` generic parameter (e.g. `const N: u32`), or `dyn_shared::<T>()` for a size chosen at launch",
                    ),
                    None => err_hint(e, format!("cannot find comptime value `{name}`"), "declare it as a `const` generic parameter"),
                }
            }
            syn::Expr::Binary(b) => {
                let op = match b.op {
                    syn::BinOp::Add(_) => ConstOp::Add,
                    syn::BinOp::Sub(_) => ConstOp::Sub,
                    syn::BinOp::Mul(_) => ConstOp::Mul,
                    syn::BinOp::Div(_) => ConstOp::Div,
                    syn::BinOp::Rem(_) => ConstOp::Rem,
                    syn::BinOp::Shl(_) => ConstOp::Shl,
                    syn::BinOp::Shr(_) => ConstOp::Shr,
                    _ => return err(&b.op, "this operator is not allowed in a comptime length"),
                };
                let l = self.len_expr_inner(&b.left)?;
                let r = self.len_expr_inner(&b.right)?;
                let len = Len::Bin(op, Box::new(l), Box::new(r));
                if len.literal_value().is_none() && !uses_param(&len) {
                    return err(e, "this comptime length overflows or divides by zero");
                }
                Ok(len)
            }
            _ => err_hint(
                e,
                "array length must be a comptime expression",
                "use literals, `const` generic parameters and + - * / % << >>",
            ),
        }
    }
}

fn uses_param(len: &Len) -> bool {
    match len {
        Len::Lit(_) => false,
        Len::Param(_) => true,
        Len::Bin(_, a, b) => uses_param(a) || uses_param(b),
    }
}

/// Largest static shared memory a block may declare (bytes), beyond which CUDA needs the
/// dynamic opt-in.
pub const MAX_STATIC_SHARED_BYTES: i128 = 48 * 1024;

/// A shared array's size in bytes; `None` while a length or the element type is not yet known.
pub fn shared_bytes(
    elem: Scalar,
    dims: &[Len],
    lookup: &dyn Fn(&str) -> Option<i128>,
) -> Option<i128> {
    let mut n: i128 = elem.size_bytes()? as i128;
    for d in dims {
        n = n.checked_mul(d.eval(lookup)?)?;
    }
    Some(n)
}

/// Fails when a shared array with literal sizes is larger than static shared memory allows.
pub fn check_shared_size(at: &dyn quote::ToTokens, elem: Scalar, dims: &[Len]) -> Res<()> {
    if let Some(bytes) = shared_bytes(elem, dims, &|_| None) {
        if bytes > MAX_STATIC_SHARED_BYTES {
            return err_hint(
                at,
                format!("shared array of {bytes} bytes is larger than the {MAX_STATIC_SHARED_BYTES} bytes of static shared memory"),
                "use `dyn_shared::<T>()` and pass the size at launch (up to the device's opt-in limit)",
            );
        }
    }
    Ok(())
}

/// The `[E; N]` of a `Shared<[E; N]>` parameter type.
fn shared_wrapper(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = ty else {
        return None;
    };
    let seg = p.path.segments.last()?;
    if seg.ident != "Shared" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
        return None;
    };
    match a.args.iter().collect::<Vec<_>>()[..] {
        [syn::GenericArgument::Type(t)] => Some(t),
        _ => None,
    }
}
