//! Scalar values and their arithmetic, exactly as the generated CUDA computes them.
//!
//! Every value lives in a `u64` register as the bits of its type, zero-extended (an `i32`
//! of -1 is `0xffff_ffff`, an `f16` is its 16 bits, a `bool` is 0 or 1). The operations
//! here are resolved once, when the kernel is compiled to bytecode, into plain function
//! pointers, so the interpreter never matches on types.
//!
//! The rules mirror the CUDA printer (`kiln_codegen::cuda`): integers wrap in their own
//! width; shifts by the width or more give 0 (or the sign for a signed `>>`), as PTX's
//! clamped `shl`/`shr` do; `f32` stays `f32`; `f16`/`bf16` are computed in `f32` and rounded
//! back to nearest even (through the `half` crate); float→int casts saturate with NaN→0
//! (PTX `cvt.rzi`); `min`/`max` on floats ignore a NaN operand (`fminf`/`fmaxf`).

use half::{bf16, f16};
use kiln_codegen::ir::{BinOp, Intrinsic, TypeConst, UnOp};
use kiln_codegen::types::Scalar;

/// A concrete scalar kind.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum K {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
}

/// A unary operation on register bits.
pub(crate) type UnFn = fn(u64) -> u64;
/// A binary operation on register bits.
pub(crate) type BinFn = fn(u64, u64) -> u64;
/// A ternary operation on register bits (`fma`).
pub(crate) type TerFn = fn(u64, u64, u64) -> u64;

impl K {
    /// The kind of a concrete scalar; `None` for an unbound type parameter.
    pub(crate) fn of(s: Scalar) -> Option<K> {
        Some(match s {
            Scalar::Bool => K::Bool,
            Scalar::U8 => K::U8,
            Scalar::U16 => K::U16,
            Scalar::U32 => K::U32,
            Scalar::U64 => K::U64,
            Scalar::I32 => K::I32,
            Scalar::I64 => K::I64,
            Scalar::F16 => K::F16,
            Scalar::Bf16 => K::Bf16,
            Scalar::F32 => K::F32,
            Scalar::F64 => K::F64,
            Scalar::Param(_) => return None,
        })
    }

    /// Size in bytes.
    pub(crate) fn size(self) -> u32 {
        match self {
            K::Bool | K::U8 => 1,
            K::U16 | K::F16 | K::Bf16 => 2,
            K::U32 | K::I32 | K::F32 => 4,
            K::U64 | K::I64 | K::F64 => 8,
        }
    }

    /// The mask of the bits a value of this kind occupies.
    pub(crate) fn mask(self) -> u64 {
        u64::MAX >> (64 - 8 * self.size())
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, K::F16 | K::Bf16 | K::F32 | K::F64)
    }

    pub(crate) fn is_signed(self) -> bool {
        matches!(self, K::I32 | K::I64)
    }

    /// Bits of `v` (two's complement) truncated to this kind.
    pub(crate) fn int_bits(self, v: i128) -> u64 {
        match self {
            K::Bool => (v != 0) as u64,
            _ => (v as u64) & self.mask(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// integers

trait Int: Copy + Ord {
    const BITS: u32;
    fn dec(b: u64) -> Self;
    fn enc(self) -> u64;
    fn wadd(self, o: Self) -> Self;
    fn wsub(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
    fn wdiv(self, o: Self) -> Self;
    fn wrem(self, o: Self) -> Self;
    fn wneg(self) -> Self;
    fn wabs(self) -> Self;
    fn shl_clamped(self, n: u64) -> Self;
    fn shr_clamped(self, n: u64) -> Self;
}

macro_rules! int_impl {
    ($signed:tt: $($t:ty),*) => {$(
        impl Int for $t {
            const BITS: u32 = <$t>::BITS;
            fn dec(b: u64) -> Self { b as $t }
            fn enc(self) -> u64 { (self as u64) & (u64::MAX >> (64 - <$t>::BITS)) }
            fn wadd(self, o: Self) -> Self { self.wrapping_add(o) }
            fn wsub(self, o: Self) -> Self { self.wrapping_sub(o) }
            fn wmul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn wdiv(self, o: Self) -> Self { self.wrapping_div(o) }
            fn wrem(self, o: Self) -> Self { self.wrapping_rem(o) }
            fn wneg(self) -> Self { self.wrapping_neg() }
            fn wabs(self) -> Self { int_impl!(@abs $signed, self) }
            fn shl_clamped(self, n: u64) -> Self {
                if n >= <$t>::BITS as u64 { 0 } else { self << n }
            }
            fn shr_clamped(self, n: u64) -> Self {
                if n < <$t>::BITS as u64 {
                    self >> n
                } else {
                    int_impl!(@fill $signed, self)
                }
            }
        }
    )*};
    (@abs signed, $v:expr) => { $v.wrapping_abs() };
    (@abs unsigned, $v:expr) => { $v };
    (@fill signed, $v:expr) => { $v >> (Self::BITS - 1) };
    (@fill unsigned, $v:expr) => { { let _ = $v; 0 } };
}

int_impl!(signed: i32, i64);
int_impl!(unsigned: u8, u16, u32, u64);

fn i_add<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).wadd(T::dec(b)).enc()
}
fn i_sub<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).wsub(T::dec(b)).enc()
}
fn i_mul<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).wmul(T::dec(b)).enc()
}
fn i_div<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).wdiv(T::dec(b)).enc()
}
fn i_rem<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).wrem(T::dec(b)).enc()
}
fn i_div_ceil<T: Int>(a: u64, b: u64) -> u64 {
    let (x, y) = (T::dec(a), T::dec(b));
    let bump = if x.wrem(y).enc() != 0 { 1 } else { 0 };
    x.wdiv(y).enc().wrapping_add(bump) & (u64::MAX >> (64 - T::BITS))
}
fn i_shl<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).shl_clamped(b).enc()
}
fn i_shr<T: Int>(a: u64, b: u64) -> u64 {
    T::dec(a).shr_clamped(b).enc()
}
fn i_lt<T: Int>(a: u64, b: u64) -> u64 {
    (T::dec(a) < T::dec(b)) as u64
}
fn i_le<T: Int>(a: u64, b: u64) -> u64 {
    (T::dec(a) <= T::dec(b)) as u64
}
fn i_gt<T: Int>(a: u64, b: u64) -> u64 {
    (T::dec(a) > T::dec(b)) as u64
}
fn i_ge<T: Int>(a: u64, b: u64) -> u64 {
    (T::dec(a) >= T::dec(b)) as u64
}
fn i_min<T: Int>(a: u64, b: u64) -> u64 {
    // kiln_min(a, b) = b < a ? b : a
    let (x, y) = (T::dec(a), T::dec(b));
    if y < x {
        y.enc()
    } else {
        x.enc()
    }
}
fn i_max<T: Int>(a: u64, b: u64) -> u64 {
    // kiln_max(a, b) = a < b ? b : a
    let (x, y) = (T::dec(a), T::dec(b));
    if x < y {
        y.enc()
    } else {
        x.enc()
    }
}
fn i_neg<T: Int>(a: u64) -> u64 {
    T::dec(a).wneg().enc()
}
fn i_abs<T: Int>(a: u64) -> u64 {
    T::dec(a).wabs().enc()
}

// bit operations work on the canonical bits of any integer (and bool) directly
fn b_and(a: u64, b: u64) -> u64 {
    a & b
}
fn b_or(a: u64, b: u64) -> u64 {
    a | b
}
fn b_xor(a: u64, b: u64) -> u64 {
    a ^ b
}
fn b_eq(a: u64, b: u64) -> u64 {
    (a == b) as u64
}
fn b_ne(a: u64, b: u64) -> u64 {
    (a != b) as u64
}

// ---------------------------------------------------------------------------------------
// floats

trait Real:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Rem<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ONE: Self;
    fn exp(self) -> Self;
    fn exp2(self) -> Self;
    fn ln(self) -> Self;
    fn log2(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn round(self) -> Self;
    fn trunc(self) -> Self;
    fn powf(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! real_impl {
    ($($t:ty),*) => {$(
        impl Real for $t {
            const ONE: Self = 1.0;
            fn exp(self) -> Self { <$t>::exp(self) }
            fn exp2(self) -> Self { <$t>::exp2(self) }
            fn ln(self) -> Self { <$t>::ln(self) }
            fn log2(self) -> Self { <$t>::log2(self) }
            fn sqrt(self) -> Self { <$t>::sqrt(self) }
            fn sin(self) -> Self { <$t>::sin(self) }
            fn cos(self) -> Self { <$t>::cos(self) }
            fn tanh(self) -> Self { <$t>::tanh(self) }
            fn abs(self) -> Self { <$t>::abs(self) }
            fn floor(self) -> Self { <$t>::floor(self) }
            fn ceil(self) -> Self { <$t>::ceil(self) }
            fn round(self) -> Self { <$t>::round(self) }
            fn trunc(self) -> Self { <$t>::trunc(self) }
            fn powf(self, o: Self) -> Self { <$t>::powf(self, o) }
            fn max(self, o: Self) -> Self { <$t>::max(self, o) }
            fn min(self, o: Self) -> Self { <$t>::min(self, o) }
            fn mul_add(self, b: Self, c: Self) -> Self { <$t>::mul_add(self, b, c) }
            fn is_nan(self) -> bool { <$t>::is_nan(self) }
        }
    )*};
}

real_impl!(f32, f64);

/// How a float type is stored and in which type CUDA computes with it.
trait Repr {
    type C: Real;
    /// 16-bit types: negation flips the sign bit, as the prelude's `operator-` does.
    const HALF: bool;
    fn dec(b: u64) -> Self::C;
    fn enc(c: Self::C) -> u64;
}

struct F32R;
struct F64R;
struct F16R;
struct Bf16R;

impl Repr for F32R {
    type C = f32;
    const HALF: bool = false;
    fn dec(b: u64) -> f32 {
        f32::from_bits(b as u32)
    }
    fn enc(c: f32) -> u64 {
        c.to_bits() as u64
    }
}
impl Repr for F64R {
    type C = f64;
    const HALF: bool = false;
    fn dec(b: u64) -> f64 {
        f64::from_bits(b)
    }
    fn enc(c: f64) -> u64 {
        c.to_bits()
    }
}
impl Repr for F16R {
    type C = f32;
    const HALF: bool = true;
    fn dec(b: u64) -> f32 {
        f16::from_bits(b as u16).to_f32()
    }
    fn enc(c: f32) -> u64 {
        f16::from_f32(c).to_bits() as u64
    }
}
impl Repr for Bf16R {
    type C = f32;
    const HALF: bool = true;
    fn dec(b: u64) -> f32 {
        bf16::from_bits(b as u16).to_f32()
    }
    fn enc(c: f32) -> u64 {
        bf16::from_f32(c).to_bits() as u64
    }
}

fn f_add<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a) + R::dec(b))
}
fn f_sub<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a) - R::dec(b))
}
fn f_mul<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a) * R::dec(b))
}
fn f_div<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a) / R::dec(b))
}
fn f_rem<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a) % R::dec(b))
}
fn f_eq<R: Repr>(a: u64, b: u64) -> u64 {
    (R::dec(a) == R::dec(b)) as u64
}
fn f_ne<R: Repr>(a: u64, b: u64) -> u64 {
    (R::dec(a) != R::dec(b)) as u64
}
fn f_lt<R: Repr>(a: u64, b: u64) -> u64 {
    (R::dec(a) < R::dec(b)) as u64
}
fn f_le<R: Repr>(a: u64, b: u64) -> u64 {
    (R::dec(a) <= R::dec(b)) as u64
}
fn f_gt<R: Repr>(a: u64, b: u64) -> u64 {
    (R::dec(a) > R::dec(b)) as u64
}
fn f_ge<R: Repr>(a: u64, b: u64) -> u64 {
    (R::dec(a) >= R::dec(b)) as u64
}
fn f_max<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a).max(R::dec(b)))
}
fn f_min<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a).min(R::dec(b)))
}
fn f_pow<R: Repr>(a: u64, b: u64) -> u64 {
    R::enc(R::dec(a).powf(R::dec(b)))
}
fn f_fma<R: Repr>(a: u64, b: u64, c: u64) -> u64 {
    R::enc(R::dec(a).mul_add(R::dec(b), R::dec(c)))
}
fn f_neg<R: Repr>(a: u64) -> u64 {
    if R::HALF {
        a ^ 0x8000
    } else {
        R::enc(-R::dec(a))
    }
}
fn f_is_nan<R: Repr>(a: u64) -> u64 {
    R::dec(a).is_nan() as u64
}
fn f_recip<R: Repr>(a: u64) -> u64 {
    R::enc(<R::C as Real>::ONE / R::dec(a))
}
fn f_rsqrt<R: Repr>(a: u64) -> u64 {
    R::enc(<R::C as Real>::ONE / R::dec(a).sqrt())
}

macro_rules! f_math1 {
    ($($name:ident => $m:ident),*) => {$(
        fn $name<R: Repr>(a: u64) -> u64 { R::enc(R::dec(a).$m()) }
    )*};
}
f_math1!(f_exp => exp, f_exp2 => exp2, f_ln => ln, f_log2 => log2, f_sqrt => sqrt,
    f_sin => sin, f_cos => cos, f_tanh => tanh, f_abs => abs, f_floor => floor,
    f_ceil => ceil, f_round => round, f_trunc => trunc);

fn not_bool(a: u64) -> u64 {
    a ^ 1
}
fn not_int<T: Int>(a: u64) -> u64 {
    !a & (u64::MAX >> (64 - T::BITS))
}

/// Resolves `$f::<the type of $k>` as a function pointer of type `$ty`.
macro_rules! pick {
    (int $k:expr, $f:ident, $ty:ty) => {
        match $k {
            K::U8 => Some($f::<u8> as $ty),
            K::U16 => Some($f::<u16> as $ty),
            K::U32 => Some($f::<u32> as $ty),
            K::U64 => Some($f::<u64> as $ty),
            K::I32 => Some($f::<i32> as $ty),
            K::I64 => Some($f::<i64> as $ty),
            _ => None,
        }
    };
    (float $k:expr, $f:ident, $ty:ty) => {
        match $k {
            K::F32 => Some($f::<F32R> as $ty),
            K::F64 => Some($f::<F64R> as $ty),
            K::F16 => Some($f::<F16R> as $ty),
            K::Bf16 => Some($f::<Bf16R> as $ty),
            _ => None,
        }
    };
    (num $k:expr, $i:ident, $f:ident, $ty:ty) => {
        if $k.is_float() {
            pick!(float $k, $f, $ty)
        } else {
            pick!(int $k, $i, $ty)
        }
    };
}

/// A binary operator on operands of kind `k` (for shifts: the left operand's kind; the
/// amount is read as unsigned bits). Integer division and remainder are [`int_div`]; `&&`
/// and `||` short-circuit and are compiled to jumps.
pub(crate) fn binary(op: BinOp, k: K) -> Option<BinFn> {
    let int_or_bool = !k.is_float();
    match op {
        BinOp::Add => pick!(num k, i_add, f_add, BinFn),
        BinOp::Sub => pick!(num k, i_sub, f_sub, BinFn),
        BinOp::Mul => pick!(num k, i_mul, f_mul, BinFn),
        BinOp::Div => pick!(float k, f_div, BinFn),
        BinOp::Rem => pick!(float k, f_rem, BinFn),
        BinOp::BitAnd if int_or_bool => Some(b_and),
        BinOp::BitOr if int_or_bool => Some(b_or),
        BinOp::BitXor if int_or_bool => Some(b_xor),
        BinOp::Shl => pick!(int k, i_shl, BinFn),
        BinOp::Shr => pick!(int k, i_shr, BinFn),
        BinOp::Eq if int_or_bool => Some(b_eq),
        BinOp::Ne if int_or_bool => Some(b_ne),
        BinOp::Eq => pick!(float k, f_eq, BinFn),
        BinOp::Ne => pick!(float k, f_ne, BinFn),
        BinOp::Lt => pick!(num k, i_lt, f_lt, BinFn),
        BinOp::Le => pick!(num k, i_le, f_le, BinFn),
        BinOp::Gt => pick!(num k, i_gt, f_gt, BinFn),
        BinOp::Ge => pick!(num k, i_ge, f_ge, BinFn),
        BinOp::BitAnd | BinOp::BitOr | BinOp::BitXor | BinOp::And | BinOp::Or => None,
    }
}

/// What an integer division by zero produces (and how the interpreter reports it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DivKind {
    Div,
    Rem,
    DivCeil,
}

impl DivKind {
    /// The result for a zero divisor: all ones for a quotient (what the GPU's division
    /// sequence yields), the dividend for a remainder.
    pub(crate) fn by_zero(self, k: K, a: u64) -> u64 {
        match self {
            DivKind::Div => k.mask(),
            DivKind::Rem => a,
            DivKind::DivCeil => k.mask().wrapping_add((a != 0) as u64) & k.mask(),
        }
    }
}

/// Integer `/`, `%` or `div_ceil` for a non-zero divisor (wrapping: `MIN / -1 == MIN`).
pub(crate) fn int_div(kind: DivKind, k: K) -> Option<BinFn> {
    match kind {
        DivKind::Div => pick!(int k, i_div, BinFn),
        DivKind::Rem => pick!(int k, i_rem, BinFn),
        DivKind::DivCeil => pick!(int k, i_div_ceil, BinFn),
    }
}

/// A unary operator on an operand of kind `k`.
pub(crate) fn unary(op: UnOp, k: K) -> Option<UnFn> {
    match (op, k) {
        (UnOp::Not, K::Bool) => Some(not_bool),
        (UnOp::Not, _) => pick!(int k, not_int, UnFn),
        (UnOp::Neg, _) => pick!(num k, i_neg, f_neg, UnFn),
    }
}

fn count_ones(a: u64) -> u64 {
    a.count_ones() as u64
}
fn leading_zeros<T: Int>(a: u64) -> u64 {
    a.leading_zeros().saturating_sub(64 - T::BITS) as u64
}
fn trailing_zeros<T: Int>(a: u64) -> u64 {
    if a == 0 {
        T::BITS as u64
    } else {
        a.trailing_zeros() as u64
    }
}
fn reverse_bits<T: Int>(a: u64) -> u64 {
    a.reverse_bits() >> (64 - T::BITS)
}
fn identity(a: u64) -> u64 {
    a
}

/// A math intrinsic applied to operands of kind `k`.
pub(crate) enum MathFn {
    Un(UnFn),
    Bin(BinFn),
    Ter(TerFn),
}

/// The math or bit intrinsic `i` on operands of kind `k` (`DivCeil` is [`int_div`]).
pub(crate) fn math(i: Intrinsic, k: K) -> Option<MathFn> {
    use Intrinsic::*;
    let un = |f: Option<UnFn>| f.map(MathFn::Un);
    let bin = |f: Option<BinFn>| f.map(MathFn::Bin);
    match i {
        Exp => un(pick!(float k, f_exp, UnFn)),
        Exp2 => un(pick!(float k, f_exp2, UnFn)),
        Ln => un(pick!(float k, f_ln, UnFn)),
        Log2 => un(pick!(float k, f_log2, UnFn)),
        Sqrt => un(pick!(float k, f_sqrt, UnFn)),
        Rsqrt => un(pick!(float k, f_rsqrt, UnFn)),
        Recip => un(pick!(float k, f_recip, UnFn)),
        Sin => un(pick!(float k, f_sin, UnFn)),
        Cos => un(pick!(float k, f_cos, UnFn)),
        Tanh => un(pick!(float k, f_tanh, UnFn)),
        Floor => un(pick!(float k, f_floor, UnFn)),
        Ceil => un(pick!(float k, f_ceil, UnFn)),
        Round => un(pick!(float k, f_round, UnFn)),
        Trunc => un(pick!(float k, f_trunc, UnFn)),
        Abs => un(pick!(num k, i_abs, f_abs, UnFn)),
        IsNan => un(pick!(float k, f_is_nan, UnFn)),
        ToBits | FromBits => Some(MathFn::Un(identity)),
        CountOnes if !k.is_float() => Some(MathFn::Un(count_ones)),
        LeadingZeros => un(pick!(int k, leading_zeros, UnFn)),
        TrailingZeros => un(pick!(int k, trailing_zeros, UnFn)),
        ReverseBits => un(pick!(int k, reverse_bits, UnFn)),
        Max => bin(pick!(num k, i_max, f_max, BinFn)),
        Min => bin(pick!(num k, i_min, f_min, BinFn)),
        Powf => bin(pick!(float k, f_pow, BinFn)),
        MulAdd => pick!(float k, f_fma, TerFn).map(MathFn::Ter),
        _ => None,
    }
}

/// A value in a form every conversion can start from.
enum Num {
    Int(i128),
    F32(f32),
    F64(f64),
}

fn read(k: K, b: u64) -> Num {
    match k {
        K::Bool | K::U8 | K::U16 | K::U32 | K::U64 => Num::Int(b as i128),
        K::I32 => Num::Int(b as u32 as i32 as i128),
        K::I64 => Num::Int(b as i64 as i128),
        K::F16 | K::Bf16 | K::F32 => Num::F32(float_value_f32(k, b)),
        K::F64 => Num::F64(f64::from_bits(b)),
    }
}

fn float_value_f32(k: K, b: u64) -> f32 {
    match k {
        K::F16 => f16::from_bits(b as u16).to_f32(),
        K::Bf16 => bf16::from_bits(b as u16).to_f32(),
        _ => f32::from_bits(b as u32),
    }
}

/// `(to)x` as the printed CUDA converts it: integer conversions truncate or sign-extend;
/// float→int saturates with NaN→0; anything→f16/bf16 goes through `float` first (so an
/// `f64` or a large integer is rounded twice, as `kiln_f16_from((float)x)` does).
pub(crate) fn cast(from: K, to: K, b: u64) -> u64 {
    let v = read(from, b);
    macro_rules! to_int {
        ($t:ty) => {
            match v {
                Num::Int(i) => (i as $t).enc(),
                Num::F32(f) => (f as $t).enc(),
                Num::F64(f) => (f as $t).enc(),
            }
        };
    }
    let as_f32 = |v: Num| match v {
        Num::Int(i) => i as f32,
        Num::F32(f) => f,
        Num::F64(f) => f as f32,
    };
    match to {
        K::Bool => match v {
            Num::Int(i) => (i != 0) as u64,
            Num::F32(f) => (f != 0.0) as u64,
            Num::F64(f) => (f != 0.0) as u64,
        },
        K::U8 => to_int!(u8),
        K::U16 => to_int!(u16),
        K::U32 => to_int!(u32),
        K::U64 => to_int!(u64),
        K::I32 => to_int!(i32),
        K::I64 => to_int!(i64),
        K::F32 => as_f32(v).to_bits() as u64,
        K::F64 => match v {
            Num::Int(i) => (i as f64).to_bits(),
            Num::F32(f) => (f as f64).to_bits(),
            Num::F64(f) => f.to_bits(),
        },
        K::F16 => f16::from_f32(as_f32(v)).to_bits() as u64,
        K::Bf16 => bf16::from_f32(as_f32(v)).to_bits() as u64,
    }
}

/// The bits of a float literal of kind `k`, as the printer spells it (`f16`/`bf16`
/// literals are rounded once from the f64 value; non-finite ones use the type's constant).
pub(crate) fn float_literal(k: K, v: f64) -> u64 {
    if !v.is_finite() {
        let c = if v.is_nan() {
            TypeConst::Nan
        } else if v > 0.0 {
            TypeConst::Infinity
        } else {
            TypeConst::NegInfinity
        };
        return type_const(k, c);
    }
    match k {
        K::F32 => (v as f32).to_bits() as u64,
        K::F64 => v.to_bits(),
        K::F16 => f16::from_f64(v).to_bits() as u64,
        K::Bf16 => bf16::from_f64(v).to_bits() as u64,
        _ => k.int_bits(v as i128),
    }
}

/// `T::MAX`, `T::INFINITY`, … with the printer's bits (NaN is the quiet NaN).
pub(crate) fn type_const(k: K, c: TypeConst) -> u64 {
    use TypeConst::*;
    match k {
        K::F32 => match c {
            Min => f32::MIN.to_bits() as u64,
            Max => f32::MAX.to_bits() as u64,
            Infinity => f32::INFINITY.to_bits() as u64,
            NegInfinity => f32::NEG_INFINITY.to_bits() as u64,
            Nan => 0x7fc0_0000,
            Epsilon => f32::EPSILON.to_bits() as u64,
        },
        K::F64 => match c {
            Min => f64::MIN.to_bits(),
            Max => f64::MAX.to_bits(),
            Infinity => f64::INFINITY.to_bits(),
            NegInfinity => f64::NEG_INFINITY.to_bits(),
            Nan => 0x7ff8_0000_0000_0000,
            Epsilon => f64::EPSILON.to_bits(),
        },
        K::F16 => (match c {
            Min => f16::MIN,
            Max => f16::MAX,
            Infinity => f16::INFINITY,
            NegInfinity => f16::NEG_INFINITY,
            Nan => f16::NAN,
            Epsilon => f16::EPSILON,
        })
        .to_bits() as u64,
        K::Bf16 => (match c {
            Min => bf16::MIN,
            Max => bf16::MAX,
            Infinity => bf16::INFINITY,
            NegInfinity => bf16::NEG_INFINITY,
            Nan => bf16::NAN,
            Epsilon => bf16::EPSILON,
        })
        .to_bits() as u64,
        int => match c {
            Max if int.is_signed() => int.mask() >> 1,
            Max => int.mask(),
            Min if int.is_signed() => (int.mask() >> 1) + 1,
            _ => 0,
        },
    }
}

/// Human-readable text of a value (for reports).
pub(crate) fn display(k: K, b: u64) -> String {
    match read(k, b) {
        Num::Int(i) if k == K::Bool => (i != 0).to_string(),
        Num::Int(i) => i.to_string(),
        Num::F32(f) => format!("{f:?}"),
        Num::F64(f) => format!("{f:?}"),
    }
}

/// What an atomic read-modify-write stores, given the old value and its operands.
pub(crate) fn atomic_apply(i: Intrinsic, k: K, old: u64, a: u64, b: u64) -> u64 {
    use Intrinsic::*;
    let arith = |op: BinOp| binary(op, k).map(|f| f(old, a)).unwrap_or(old);
    match i {
        AtomicAdd => arith(BinOp::Add),
        AtomicSub => arith(BinOp::Sub),
        AtomicAnd => old & a,
        AtomicOr => old | a,
        AtomicXor => old ^ a,
        AtomicExch => a,
        AtomicCas => {
            if old == a {
                b
            } else {
                old
            }
        }
        AtomicMin => match math(Min, k) {
            Some(MathFn::Bin(f)) => f(old, a),
            _ => old,
        },
        AtomicMax => match math(Max, k) {
            Some(MathFn::Bin(f)) => f(old, a),
            _ => old,
        },
        _ => old,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_and_shifts() {
        let add = binary(BinOp::Add, K::U8).unwrap();
        assert_eq!(add(250, 10), 4);
        let shl = binary(BinOp::Shl, K::U32).unwrap();
        assert_eq!(shl(1, 32), 0);
        assert_eq!(shl(1, 31), 0x8000_0000);
        let shr = binary(BinOp::Shr, K::I32).unwrap();
        assert_eq!(shr(0x8000_0000, 40), 0xffff_ffff);
        let neg = unary(UnOp::Neg, K::I32).unwrap();
        assert_eq!(neg(0x8000_0000), 0x8000_0000);
    }

    #[test]
    fn casts_saturate() {
        assert_eq!(cast(K::F32, K::I32, f32::NAN.to_bits() as u64), 0);
        assert_eq!(cast(K::F32, K::U8, 300f32.to_bits() as u64), 255);
        assert_eq!(cast(K::I32, K::I64, 0xffff_ffff), u64::MAX);
        assert_eq!(cast(K::I64, K::U16, u64::MAX), 0xffff);
    }

    #[test]
    fn halves_round_to_nearest_even() {
        let add = binary(BinOp::Add, K::F16).unwrap();
        let one = f16::ONE.to_bits() as u64;
        let tiny = f16::from_f32(0.0004).to_bits() as u64;
        let want = f16::from_f32(1.0 + f16::from_bits(tiny as u16).to_f32());
        assert_eq!(add(one, tiny), want.to_bits() as u64);
    }
}
