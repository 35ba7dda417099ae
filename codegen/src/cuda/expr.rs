//! Printing expressions as C, with C's precedence (parentheses only where needed, plus
//! around mixed bitwise/arithmetic operands for readability) and CUDA spellings of every
//! intrinsic.

use super::c_type;
use super::prelude::{frag_type, vector_type};
use crate::ir::{Axis, BinOp, Expr, ExprKind, Intrinsic, TypeConst, UnOp};
use crate::types::{Len, Scalar, Ty};

const ATOM: u8 = 16;
const POSTFIX: u8 = 15;
const UNARY: u8 = 14;
const TERNARY: u8 = 3;

fn prec(op: BinOp) -> u8 {
    match op {
        BinOp::Mul | BinOp::Div | BinOp::Rem => 13,
        BinOp::Add | BinOp::Sub => 12,
        BinOp::Shl | BinOp::Shr => 11,
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 10,
        BinOp::Eq | BinOp::Ne => 9,
        BinOp::BitAnd => 8,
        BinOp::BitXor => 7,
        BinOp::BitOr => 6,
        BinOp::And => 5,
        BinOp::Or => 4,
    }
}

fn is_bitwise(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::BitAnd | BinOp::BitOr | BinOp::BitXor | BinOp::Shl | BinOp::Shr
    )
}

/// An expression as C text.
pub fn print(e: &Expr) -> String {
    printp(e).0
}

/// Removes one pair of enclosing parentheses if they wrap the whole text.
pub fn strip_parens(s: &str) -> &str {
    if s.starts_with('(') && s.ends_with(')') {
        let inner = &s[1..s.len() - 1];
        let mut depth = 0i32;
        for ch in inner.chars() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return s;
                    }
                }
                _ => {}
            }
        }
        if depth == 0 {
            return inner;
        }
    }
    s
}

fn wrap(text: String, p: u8, need: u8) -> String {
    if p < need {
        format!("({text})")
    } else {
        text
    }
}

/// `a op b` as text for operands already printed (used for compound assignments on halves).
pub fn binary_text(op: BinOp, ty: &Ty, a: &str, b: &str) -> String {
    if op == BinOp::Rem && ty.scalar().is_some_and(Scalar::is_float) {
        return float_rem(ty.scalar().expect("float"), a, b);
    }
    format!("{a} {} ({b})", op.c_op())
}

fn float_rem(s: Scalar, a: &str, b: &str) -> String {
    match s {
        Scalar::F64 => format!("fmod({a}, {b})"),
        Scalar::F32 => format!("fmodf({a}, {b})"),
        h => format!(
            "kiln_{}_from(fmodf(kiln_to_float({a}), kiln_to_float({b})))",
            h.rust_name()
        ),
    }
}

fn printp(e: &Expr) -> (String, u8) {
    match &e.kind {
        ExprKind::Int(v) => {
            let s = e.ty.scalar().unwrap_or(Scalar::I32);
            let text = if s == Scalar::Bool {
                (*v != 0).to_string()
            } else {
                int_literal(s, *v)
            };
            let p = if text.starts_with('-') || text.starts_with('(') {
                UNARY
            } else {
                ATOM
            };
            (text, p)
        }
        ExprKind::Bool(b) => (b.to_string(), ATOM),
        ExprKind::Float(v) => float_literal(e.ty.scalar().unwrap_or(Scalar::F32), *v),
        ExprKind::Var(name) | ExprKind::ConstParam(name) => (name.clone(), ATOM),
        ExprKind::TypeConst(c) => type_const(e.ty.scalar().unwrap_or(Scalar::I32), *c),
        ExprKind::Unary(op, a) => {
            let (t, p) = printp(a);
            let t = wrap(t, p, UNARY);
            let s = a.ty.scalar();
            let text = match op {
                // `- -x`, never `--x` (a decrement)
                UnOp::Neg if t.starts_with('-') => format!("-({t})"),
                UnOp::Neg => format!("-{t}"),
                UnOp::Not if s == Some(Scalar::Bool) => format!("!{t}"),
                UnOp::Not => format!("({})~{t}", c_type(s.unwrap_or(Scalar::I32))),
            };
            (text, UNARY)
        }
        ExprKind::Binary(op, a, b) => binary(*op, a, b, &e.ty),
        ExprKind::Cast(a) => (cast(a, e.ty.scalar().unwrap_or(Scalar::I32)), UNARY),
        ExprKind::Index(base, idx) => {
            let (b, bp) = printp(base);
            let i = print(idx);
            let i = strip_parens(&i).to_string();
            match &base.ty {
                Ty::Vector { .. } => (format!("{}.lane[{i}]", wrap(b, bp, POSTFIX)), POSTFIX),
                Ty::Frag { .. } => (format!("{}.x[{i}]", wrap(b, bp, POSTFIX)), POSTFIX),
                _ => (format!("{}[{i}]", wrap(b, bp, POSTFIX)), POSTFIX),
            }
        }
        ExprKind::Field(base, axis) => {
            let (b, bp) = printp(base);
            let f = match axis {
                Axis::X => "x",
                Axis::Y => "y",
                Axis::Z => "z",
            };
            (format!("{}.{f}", wrap(b, bp, POSTFIX)), POSTFIX)
        }
        ExprKind::Select(c, a, b) => {
            let (ct, cp) = printp(c);
            let (at, ap) = printp(a);
            let (bt, bp) = printp(b);
            (
                format!(
                    "{} ? {} : {}",
                    wrap(ct, cp, TERNARY + 1),
                    wrap(at, ap, TERNARY + 1),
                    wrap(bt, bp, TERNARY)
                ),
                TERNARY,
            )
        }
        ExprKind::Call { callee, args, .. } => {
            let args: Vec<String> = args
                .iter()
                .flat_map(|a| {
                    let t = print(a);
                    match (&a.ty, &a.kind) {
                        (Ty::Slice { .. }, ExprKind::Var(n)) => vec![n.clone(), format!("{n}_len")],
                        _ => vec![strip_parens(&t).to_string()],
                    }
                })
                .collect();
            (format!("{callee}({})", args.join(", ")), POSTFIX)
        }
        ExprKind::Intrinsic(i, args) => (intrinsic(*i, args, &e.ty), POSTFIX),
        ExprKind::SizeOf(s) => (format!("{}u", s.size_bytes().unwrap_or(0)), ATOM),
    }
}

fn binary(op: BinOp, a: &Expr, b: &Expr, ty: &Ty) -> (String, u8) {
    let s = a.ty.scalar().unwrap_or(Scalar::I32);
    if op == BinOp::Rem && s.is_float() {
        return (
            float_rem(s, strip_parens(&print(a)), strip_parens(&print(b))),
            POSTFIX,
        );
    }
    if needs_shift_helper(op, a, b) {
        let f = if op == BinOp::Shl {
            "kiln_shl"
        } else {
            "kiln_shr"
        };
        return (
            format!(
                "{f}({}, (unsigned int)({}))",
                strip_parens(&print(a)),
                strip_parens(&print(b))
            ),
            POSTFIX,
        );
    }
    let p = prec(op);
    let side = |x: &Expr, right: bool| {
        let (t, xp) = printp(x);
        let mixed = matches!(&x.kind, ExprKind::Binary(xo, _, _) if *xo != op && (is_bitwise(op) || is_bitwise(*xo)));
        if xp < p || (right && xp == p) || mixed {
            format!("({t})")
        } else {
            t
        }
    };
    let text = format!("{} {} {}", side(a, false), op.c_op(), side(b, true));
    // C promotes u8/u16 to int; Kiln wraps in the narrow type, as Rust does
    let narrow = matches!(ty.scalar(), Some(Scalar::U8 | Scalar::U16));
    if narrow && matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Shl) {
        return (
            format!("({})({text})", c_type(ty.scalar().expect("narrow"))),
            UNARY,
        );
    }
    (text, p)
}

/// Whether a shift needs the helper that defines shifting by the type's width or more (C
/// leaves it undefined): every shift whose amount is not a literal below the width.
pub fn needs_shift_helper(op: BinOp, a: &Expr, b: &Expr) -> bool {
    if !matches!(op, BinOp::Shl | BinOp::Shr) {
        return false;
    }
    let width = a.ty.scalar().and_then(Scalar::size_bytes).unwrap_or(4) * 8;
    !matches!(b.kind, ExprKind::Int(v) if v < width)
}

fn cast(a: &Expr, to: Scalar) -> String {
    let from = a.ty.scalar().unwrap_or(Scalar::I32);
    let (t, p) = printp(a);
    let inner = strip_parens(&t).to_string();
    let t = wrap(t, p, UNARY);
    match (from.is_half(), to.is_half()) {
        (true, true) => format!("kiln_{}_from(kiln_to_float({inner}))", to.rust_name()),
        (true, false) if to == Scalar::F32 => format!("kiln_to_float({inner})"),
        (true, false) if to.is_int() => {
            format!(
                "kiln_float_to_int<{}>(kiln_to_float({inner}), {})",
                c_type(to),
                int_bounds(to)
            )
        }
        (true, false) => format!("({})kiln_to_float({inner})", c_type(to)),
        (false, true) if from == Scalar::F32 => format!("kiln_{}_from({inner})", to.rust_name()),
        (false, true) => format!("kiln_{}_from((float){t})", to.rust_name()),
        // Rust's `as` saturates and sends NaN to 0; the hardware conversion saturates but
        // gives a 64-bit NaN the minimum value, so NaN is handled explicitly.
        (false, false) if from.is_float() && to.is_int() => {
            format!(
                "kiln_float_to_int<{}>({inner}, {})",
                c_type(to),
                int_bounds(to)
            )
        }
        (false, false) => format!("({}){t}", c_type(to)),
    }
}

/// `lo, hi`: the bounds of an integer type, as literals.
fn int_bounds(s: Scalar) -> String {
    let (lo, hi) = s.int_range();
    format!(
        "{}, {}",
        int_literal(s, lo as u64),
        int_literal(s, hi as u64)
    )
}

/// An integer literal of type `s` from its two's-complement bits.
pub fn int_literal(s: Scalar, bits: u64) -> String {
    match s {
        Scalar::U32 => format!("{}u", bits as u32),
        Scalar::U64 => format!("{bits}ull"),
        Scalar::U8 => format!("(unsigned char){}", bits as u8),
        Scalar::U16 => format!("(unsigned short){}", bits as u16),
        Scalar::I32 => {
            let v = bits as i64 as i32;
            if v == i32::MIN {
                "(-2147483647 - 1)".into()
            } else {
                v.to_string()
            }
        }
        Scalar::I64 => {
            let v = bits as i64;
            if v == i64::MIN {
                "(-9223372036854775807ll - 1ll)".into()
            } else {
                format!("{v}ll")
            }
        }
        Scalar::Bool => (bits != 0).to_string(),
        _ => bits.to_string(),
    }
}

fn float_literal(s: Scalar, v: f64) -> (String, u8) {
    if !v.is_finite() {
        let c = if v.is_nan() {
            TypeConst::Nan
        } else if v > 0.0 {
            TypeConst::Infinity
        } else {
            TypeConst::NegInfinity
        };
        return type_const(s, c);
    }
    let text = match s {
        Scalar::F64 => fmt_float(v),
        Scalar::F32 => format!("{}f", fmt_float(v as f32 as f64)),
        Scalar::F16 => {
            return (
                format!("kiln_f16{{0x{:04x}u}}", half::f16::from_f64(v).to_bits()),
                POSTFIX,
            )
        }
        Scalar::Bf16 => {
            return (
                format!("kiln_bf16{{0x{:04x}u}}", half::bf16::from_f64(v).to_bits()),
                POSTFIX,
            )
        }
        _ => fmt_float(v),
    };
    let p = if text.starts_with('-') { UNARY } else { ATOM };
    (text, p)
}

fn fmt_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

fn type_const(s: Scalar, c: TypeConst) -> (String, u8) {
    let half_bits = |bits: u16, name: &str| (format!("kiln_{name}{{0x{bits:04x}u}}"), POSTFIX);
    match s {
        Scalar::F32 => {
            let bits: u32 = match c {
                TypeConst::Min => f32::MIN.to_bits(),
                TypeConst::Max => f32::MAX.to_bits(),
                TypeConst::Infinity => f32::INFINITY.to_bits(),
                TypeConst::NegInfinity => f32::NEG_INFINITY.to_bits(),
                TypeConst::Nan => 0x7fc0_0000,
                TypeConst::Epsilon => f32::EPSILON.to_bits(),
            };
            (format!("__uint_as_float(0x{bits:08x}u)"), POSTFIX)
        }
        Scalar::F64 => {
            let bits: u64 = match c {
                TypeConst::Min => f64::MIN.to_bits(),
                TypeConst::Max => f64::MAX.to_bits(),
                TypeConst::Infinity => f64::INFINITY.to_bits(),
                TypeConst::NegInfinity => f64::NEG_INFINITY.to_bits(),
                TypeConst::Nan => 0x7ff8_0000_0000_0000,
                TypeConst::Epsilon => f64::EPSILON.to_bits(),
            };
            (format!("__longlong_as_double(0x{bits:016x}ll)"), POSTFIX)
        }
        Scalar::F16 => half_bits(
            match c {
                TypeConst::Min => half::f16::MIN.to_bits(),
                TypeConst::Max => half::f16::MAX.to_bits(),
                TypeConst::Infinity => half::f16::INFINITY.to_bits(),
                TypeConst::NegInfinity => half::f16::NEG_INFINITY.to_bits(),
                TypeConst::Nan => half::f16::NAN.to_bits(),
                TypeConst::Epsilon => half::f16::EPSILON.to_bits(),
            },
            "f16",
        ),
        Scalar::Bf16 => half_bits(
            match c {
                TypeConst::Min => half::bf16::MIN.to_bits(),
                TypeConst::Max => half::bf16::MAX.to_bits(),
                TypeConst::Infinity => half::bf16::INFINITY.to_bits(),
                TypeConst::NegInfinity => half::bf16::NEG_INFINITY.to_bits(),
                TypeConst::Nan => half::bf16::NAN.to_bits(),
                TypeConst::Epsilon => half::bf16::EPSILON.to_bits(),
            },
            "bf16",
        ),
        int => {
            let bits: u64 = match (int, c) {
                (Scalar::U8, TypeConst::Max) => u8::MAX as u64,
                (Scalar::U16, TypeConst::Max) => u16::MAX as u64,
                (Scalar::U32, TypeConst::Max) => u32::MAX as u64,
                (Scalar::U64, TypeConst::Max) => u64::MAX,
                (Scalar::I32, TypeConst::Max) => i32::MAX as u64,
                (Scalar::I32, TypeConst::Min) => i32::MIN as i64 as u64,
                (Scalar::I64, TypeConst::Max) => i64::MAX as u64,
                (Scalar::I64, TypeConst::Min) => i64::MIN as u64,
                _ => 0,
            };
            let t = int_literal(int, bits);
            let p = if t.starts_with('-') || t.starts_with('(') {
                UNARY
            } else {
                ATOM
            };
            (t, p)
        }
    }
}

/// A comptime length as C text.
pub fn len(l: &Len) -> String {
    match l {
        Len::Lit(v) => v.to_string(),
        Len::Param(n) => n.clone(),
        Len::Bin(op, a, b) => {
            let o = op.symbol();
            let side = |x: &Len| match x {
                Len::Bin(..) => format!("({})", len(x)),
                _ => len(x),
            };
            format!("{} {o} {}", side(a), side(b))
        }
    }
}

fn arg(args: &[Expr], i: usize) -> String {
    args.get(i)
        .map(|a| strip_parens(&print(a)).to_string())
        .unwrap_or_default()
}

/// The length of the register array a `wgmma` accumulator argument refers to.
fn acc_len(acc: &Expr) -> String {
    match &acc.ty {
        Ty::Ref { to, .. } => match &**to {
            Ty::Array { dims, .. } => dims.first().map(len).unwrap_or_default(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

fn place(args: &[Expr], i: usize) -> String {
    format!("&{}", args.get(i).map(wrap_postfix).unwrap_or_default())
}

fn wrap_postfix(a: &Expr) -> String {
    let (t, p) = printp(a);
    wrap(t, p, POSTFIX)
}

/// A float math function applied through float for halves.
fn math(s: Scalar, f32_name: &str, f64_name: &str, args: &[Expr]) -> String {
    let list = |conv: &dyn Fn(String) -> String| {
        (0..args.len())
            .map(|i| conv(arg(args, i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match s {
        Scalar::F64 => format!("{f64_name}({})", list(&|a| a)),
        Scalar::F32 => format!("{f32_name}({})", list(&|a| a)),
        h => format!(
            "kiln_{}_from({f32_name}({}))",
            h.rust_name(),
            list(&|a| format!("kiln_to_float({a})"))
        ),
    }
}

fn intrinsic(i: Intrinsic, args: &[Expr], ty: &Ty) -> String {
    use Intrinsic::*;
    let s0 = args
        .first()
        .and_then(|a| a.ty.scalar())
        .unwrap_or(Scalar::U32);
    let a = |k: usize| arg(args, k);
    let width = s0.size_bytes().unwrap_or(4);
    match i {
        ThreadIdx => "threadIdx".into(),
        BlockIdx => "blockIdx".into(),
        BlockDim => "blockDim".into(),
        GridDim => "gridDim".into(),
        LaneId => "kiln_lane_id()".into(),
        WarpId => "kiln_warp_id()".into(),
        WarpSize => "32u".into(),
        SyncThreads => "__syncthreads()".into(),
        SyncWarp => "__syncwarp()".into(),
        ThreadFence => "__threadfence()".into(),
        ThreadFenceBlock => "__threadfence_block()".into(),
        ShflSync | ShflXorSync | ShflDownSync | ShflUpSync => {
            let v = args
                .get(1)
                .and_then(|x| x.ty.scalar())
                .unwrap_or(Scalar::U32);
            let name = match i {
                ShflSync => "shfl_sync",
                ShflXorSync => "shfl_xor_sync",
                ShflDownSync => "shfl_down_sync",
                _ => "shfl_up_sync",
            };
            let lane = if matches!(i, ShflSync | ShflXorSync) {
                format!("(int){}", wrap_postfix(&args[2]))
            } else {
                a(2)
            };
            let prefix = if v.is_half() { "kiln_" } else { "__" };
            format!("{prefix}{name}({}, {}, {lane})", a(0), a(1))
        }
        BallotSync => format!("__ballot_sync({}, {})", a(0), a(1)),
        AllSync => format!("(__all_sync({}, {}) != 0)", a(0), a(1)),
        AnySync => format!("(__any_sync({}, {}) != 0)", a(0), a(1)),
        ActiveMask => "__activemask()".into(),
        AtomicAdd | AtomicSub | AtomicMin | AtomicMax | AtomicAnd | AtomicOr | AtomicXor
        | AtomicExch => {
            let name = match i {
                AtomicAdd => "atomicAdd",
                AtomicSub => "atomicSub",
                AtomicMin => "atomicMin",
                AtomicMax => "atomicMax",
                AtomicAnd => "atomicAnd",
                AtomicOr => "atomicOr",
                AtomicXor => "atomicXor",
                _ => "atomicExch",
            };
            format!("{name}({}, {})", place(args, 0), a(1))
        }
        AtomicCas => format!("atomicCAS({}, {}, {})", place(args, 0), a(1), a(2)),
        CpAsync => format!("kiln_cp_async16({}, {})", place(args, 0), place(args, 1)),
        CpAsyncCommit => "kiln_cp_async_commit()".into(),
        CpAsyncWait => format!("kiln_cp_async_wait<{}>()", a(0)),
        CpAsyncWaitAll => "kiln_cp_async_wait_all()".into(),
        Len => match &args[0].ty {
            Ty::Array { dims, .. } => format!("(unsigned int)({})", len(&dims[0])),
            _ => format!("{}_len", a(0)),
        },
        VLoad => {
            let elem = args[0].ty.elem().unwrap_or(Scalar::U32);
            format!(
                "{}_load(&{}[{}])",
                vector_type(elem),
                wrap_postfix(&args[0]),
                a(1)
            )
        }
        VStore => {
            let elem = args[0].ty.elem().unwrap_or(Scalar::U32);
            format!(
                "{}_store(&{}[{}], {})",
                vector_type(elem),
                wrap_postfix(&args[0]),
                a(1),
                a(2)
            )
        }
        Lanes => {
            let elem = args[0].ty.elem().unwrap_or(Scalar::U32);
            format!("{}u", 16 / elem.size_bytes().unwrap_or(4))
        }
        Exp => math(s0, "expf", "exp", args),
        Exp2 => math(s0, "exp2f", "exp2", args),
        Ln => math(s0, "logf", "log", args),
        Log2 => math(s0, "log2f", "log2", args),
        Sqrt => math(s0, "sqrtf", "sqrt", args),
        Rsqrt => math(s0, "rsqrtf", "rsqrt", args),
        Sin => math(s0, "sinf", "sin", args),
        Cos => math(s0, "cosf", "cos", args),
        Tanh => math(s0, "tanhf", "tanh", args),
        Floor => math(s0, "floorf", "floor", args),
        Ceil => math(s0, "ceilf", "ceil", args),
        Round => math(s0, "roundf", "round", args),
        Trunc => math(s0, "truncf", "trunc", args),
        Powf => math(s0, "powf", "pow", args),
        MulAdd => math(s0, "fmaf", "fma", args),
        Recip => match s0 {
            Scalar::F64 => format!("(1.0 / {})", wrap_postfix(&args[0])),
            Scalar::F32 => format!("(1.0f / {})", wrap_postfix(&args[0])),
            h => format!(
                "kiln_{}_from(1.0f / kiln_to_float({}))",
                h.rust_name(),
                a(0)
            ),
        },
        Abs if s0.is_int() => format!("kiln_abs({})", a(0)),
        Abs => math(s0, "fabsf", "fabs", args),
        Max if s0.is_int() => format!("kiln_max({}, {})", a(0), a(1)),
        Min if s0.is_int() => format!("kiln_min({}, {})", a(0), a(1)),
        Max => math(s0, "fmaxf", "fmax", args),
        Min => math(s0, "fminf", "fmin", args),
        IsNan if s0.is_half() => format!("kiln_isnan(kiln_to_float({}))", a(0)),
        IsNan => format!("kiln_isnan({})", a(0)),
        ToBits => match s0 {
            Scalar::F32 => format!("__float_as_uint({})", a(0)),
            Scalar::F64 => format!("(unsigned long long)__double_as_longlong({})", a(0)),
            _ => format!("{}.bits", wrap_postfix(&args[0])),
        },
        FromBits => match ty.scalar().unwrap_or(Scalar::F32) {
            Scalar::F32 => format!("__uint_as_float({})", a(0)),
            Scalar::F64 => format!(
                "__longlong_as_double((long long){})",
                wrap_postfix(&args[0])
            ),
            h => format!("kiln_{}{{(unsigned short)({})}}", h.rust_name(), a(0)),
        },
        CountOnes => match width {
            8 => format!(
                "(unsigned int)__popcll((unsigned long long){})",
                wrap_postfix(&args[0])
            ),
            _ => format!(
                "(unsigned int)__popc((unsigned int){})",
                wrap_postfix(&args[0])
            ),
        },
        LeadingZeros => match width {
            8 => format!(
                "(unsigned int)__clzll((long long){})",
                wrap_postfix(&args[0])
            ),
            4 => format!("(unsigned int)__clz((int){})", wrap_postfix(&args[0])),
            w => format!(
                "((unsigned int)__clz((int)(unsigned int){}) - {}u)",
                wrap_postfix(&args[0]),
                32 - 8 * w
            ),
        },
        TrailingZeros => match width {
            8 => format!("kiln_ctz64((unsigned long long){})", wrap_postfix(&args[0])),
            4 => format!("kiln_ctz32((unsigned int){})", wrap_postfix(&args[0])),
            w => format!(
                "kiln_min(kiln_ctz32((unsigned int){}), {}u)",
                wrap_postfix(&args[0]),
                8 * w
            ),
        },
        ReverseBits => {
            let c = c_type(s0);
            match width {
                8 => format!(
                    "({c})__brevll((unsigned long long){})",
                    wrap_postfix(&args[0])
                ),
                4 => format!("({c})__brev((unsigned int){})", wrap_postfix(&args[0])),
                w => format!(
                    "({c})(__brev((unsigned int){}) >> {}u)",
                    wrap_postfix(&args[0]),
                    32 - 8 * w
                ),
            }
        }
        DivCeil => format!("kiln_div_ceil({}, {})", a(0), a(1)),
        Ldmatrix { num, trans } => format!(
            "kiln_ldmatrix_x{num}{}({})",
            if trans { "_trans" } else { "" },
            place(args, 0)
        ),
        Mma => {
            let elem = args.first().and_then(|x| x.ty.frag()).map(|(_, e)| e);
            format!(
                "kiln_mma_{}({}, {}, {})",
                elem.unwrap_or(Scalar::Bf16).rust_name(),
                a(0),
                a(1),
                a(2)
            )
        }
        WgmmaFence => "kiln_wgmma_fence()".into(),
        WgmmaCommit => "kiln_wgmma_commit()".into(),
        WgmmaWait => format!("kiln_wgmma_wait<{}, {}>({})", a(0), acc_len(&args[1]), a(1)),
        Wgmma { elem, trans_b } => format!(
            "kiln_wgmma_{}<{}, {trans_b}>({}, {}, {})",
            elem.rust_name(),
            acc_len(&args[0]),
            a(0),
            a(1),
            a(2)
        ),
        WgmmaRs { elem, trans_b } => format!(
            "kiln_wgmma_rs_{}<{}, {trans_b}>({}, {}, {})",
            elem.rust_name(),
            acc_len(&args[0]),
            a(0),
            a(1),
            a(2)
        ),
        WgmmaDesc => format!("kiln_wgmma_desc({}, {}, {})", place(args, 0), a(1), a(2)),
        MbarrierInit => format!("kiln_mbarrier_init({}, {})", place(args, 0), a(1)),
        MbarrierArrive => format!("kiln_mbarrier_arrive({})", place(args, 0)),
        MbarrierExpectTx => format!("kiln_mbarrier_expect_tx({}, {})", place(args, 0), a(1)),
        MbarrierWait => format!("kiln_mbarrier_wait({}, {})", place(args, 0), a(1)),
        FenceBarrierInit => "kiln_fence_barrier_init()".into(),
        FenceProxyAsync => "kiln_fence_proxy_async()".into(),
        // the source tensor is named for type checks and the emulator; the map holds its address
        TmaLoad2d => format!(
            "kiln_tma_load_2d({}, {}, {}, {}, {})",
            place(args, 0),
            place(args, 1),
            place(args, 3),
            a(4),
            a(5)
        ),
        SetMaxNReg { inc } => format!(
            "kiln_setmaxnreg_{}<{}>()",
            if inc { "inc" } else { "dec" },
            a(0)
        ),
        FragZero => match ty.frag() {
            Some((kind, _)) => format!("{}{{}}", frag_type(kind)),
            None => "/* not a fragment */ 0".into(),
        },
        Pack2(elem) => format!("kiln_pack2_{}({}, {})", elem.rust_name(), a(0), a(1)),
        UnpackLo | UnpackHi => {
            let half = ty.scalar().unwrap_or(Scalar::Bf16).rust_name();
            let bits = if i == UnpackHi {
                let (t, p) = printp(&args[0]);
                format!("{} >> 16", wrap(t, p, prec(BinOp::Shl) + 1))
            } else {
                a(0)
            };
            format!("kiln_{half}{{(unsigned short)({bits})}}")
        }
    }
}
