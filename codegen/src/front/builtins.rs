//! The table of scalar methods (`x.exp()`, `x.count_ones()`, …): which receivers each
//! accepts, how many arguments it takes and what it returns.

use crate::ir::Intrinsic;
use crate::types::Scalar;

/// Which receivers a method accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Recv {
    /// Any float, including `T: Float`.
    Float,
    /// A concrete float (f16, bf16, f32, f64).
    ConcreteFloat,
    /// Any integer.
    Int,
    /// Signed integers.
    SignedInt,
    /// Unsigned integers.
    UnsignedInt,
    /// Integers and floats.
    Number,
}

impl Recv {
    /// Whether `s` is accepted.
    pub fn accepts(self, s: Scalar) -> bool {
        match self {
            Recv::Float => s.is_float(),
            Recv::ConcreteFloat => s.is_float() && !matches!(s, Scalar::Param(_)),
            Recv::Int => s.is_int(),
            Recv::SignedInt => s.is_signed_int(),
            Recv::UnsignedInt => s.is_int() && !s.is_signed_int(),
            Recv::Number => s.is_int() || s.is_float(),
        }
    }

    /// Words for an error message.
    pub fn describe(self) -> &'static str {
        match self {
            Recv::Float => "floats",
            Recv::ConcreteFloat => "f16, bf16, f32 and f64 (not a generic `T`)",
            Recv::Int => "integers",
            Recv::SignedInt => "signed integers",
            Recv::UnsignedInt => "unsigned integers",
            Recv::Number => "integers and floats",
        }
    }
}

/// What a method returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Returns {
    /// The receiver's type.
    Same,
    Bool,
    U32,
    /// The unsigned integer of the receiver's width (`to_bits`).
    Bits,
}

/// One scalar method.
pub struct Method {
    pub name: &'static str,
    pub intrinsic: Intrinsic,
    pub recv: Recv,
    /// Arguments after the receiver, all of the receiver's type.
    pub args: usize,
    pub returns: Returns,
}

const fn m(
    name: &'static str,
    intrinsic: Intrinsic,
    recv: Recv,
    args: usize,
    returns: Returns,
) -> Method {
    Method {
        name,
        intrinsic,
        recv,
        args,
        returns,
    }
}

/// Every scalar method.
pub const METHODS: &[Method] = &[
    m("exp", Intrinsic::Exp, Recv::Float, 0, Returns::Same),
    m("exp2", Intrinsic::Exp2, Recv::Float, 0, Returns::Same),
    m("ln", Intrinsic::Ln, Recv::Float, 0, Returns::Same),
    m("log2", Intrinsic::Log2, Recv::Float, 0, Returns::Same),
    m("sqrt", Intrinsic::Sqrt, Recv::Float, 0, Returns::Same),
    m("rsqrt", Intrinsic::Rsqrt, Recv::Float, 0, Returns::Same),
    m("recip", Intrinsic::Recip, Recv::Float, 0, Returns::Same),
    m("sin", Intrinsic::Sin, Recv::Float, 0, Returns::Same),
    m("cos", Intrinsic::Cos, Recv::Float, 0, Returns::Same),
    m("tanh", Intrinsic::Tanh, Recv::Float, 0, Returns::Same),
    m("abs", Intrinsic::Abs, Recv::Float, 0, Returns::Same),
    m("floor", Intrinsic::Floor, Recv::Float, 0, Returns::Same),
    m("ceil", Intrinsic::Ceil, Recv::Float, 0, Returns::Same),
    m("round", Intrinsic::Round, Recv::Float, 0, Returns::Same),
    m("trunc", Intrinsic::Trunc, Recv::Float, 0, Returns::Same),
    m("powf", Intrinsic::Powf, Recv::Float, 1, Returns::Same),
    m("mul_add", Intrinsic::MulAdd, Recv::Float, 2, Returns::Same),
    m("is_nan", Intrinsic::IsNan, Recv::Float, 0, Returns::Bool),
    m(
        "to_bits",
        Intrinsic::ToBits,
        Recv::ConcreteFloat,
        0,
        Returns::Bits,
    ),
    m("max", Intrinsic::Max, Recv::Number, 1, Returns::Same),
    m("min", Intrinsic::Min, Recv::Number, 1, Returns::Same),
    m(
        "count_ones",
        Intrinsic::CountOnes,
        Recv::Int,
        0,
        Returns::U32,
    ),
    m(
        "leading_zeros",
        Intrinsic::LeadingZeros,
        Recv::Int,
        0,
        Returns::U32,
    ),
    m(
        "trailing_zeros",
        Intrinsic::TrailingZeros,
        Recv::Int,
        0,
        Returns::U32,
    ),
    m(
        "reverse_bits",
        Intrinsic::ReverseBits,
        Recv::Int,
        0,
        Returns::Same,
    ),
    m(
        "div_ceil",
        Intrinsic::DivCeil,
        Recv::UnsignedInt,
        1,
        Returns::Same,
    ),
];

/// The integer `abs` (floats use the entry in [`METHODS`]).
pub const INT_ABS: Method = m("abs", Intrinsic::Abs, Recv::SignedInt, 0, Returns::Same);

/// The method called `name`, preferring the entry that accepts `recv`.
pub fn method(name: &str, recv: Scalar) -> Option<&'static Method> {
    if name == "abs" && recv.is_signed_int() {
        return Some(&INT_ABS);
    }
    METHODS.iter().find(|m| m.name == name)
}

/// Built-ins whose result differs between the threads of a block (besides `ldmatrix*` and
/// `mma`), for the barrier analysis of loop bodies.
pub const THREAD_VARYING_FUNCTIONS: &[&str] = &[
    "thread_idx",
    "lane_id",
    "warp_id",
    "shfl_sync",
    "shfl_xor_sync",
    "shfl_down_sync",
    "shfl_up_sync",
    "ballot_sync",
    "all_sync",
    "any_sync",
    "activemask",
    "atomic_add",
    "atomic_sub",
    "atomic_min",
    "atomic_max",
    "atomic_and",
    "atomic_or",
    "atomic_xor",
    "atomic_exch",
    "atomic_cas",
];

/// Names of the free functions Kiln provides, for "unknown function" hints.
pub const FREE_FUNCTIONS: &[&str] = &[
    "thread_idx",
    "block_idx",
    "block_dim",
    "grid_dim",
    "lane_id",
    "warp_id",
    "warp_size",
    "sync_threads",
    "sync_warp",
    "thread_fence",
    "thread_fence_block",
    "shfl_sync",
    "shfl_xor_sync",
    "shfl_down_sync",
    "shfl_up_sync",
    "ballot_sync",
    "all_sync",
    "any_sync",
    "activemask",
    "atomic_add",
    "atomic_sub",
    "atomic_min",
    "atomic_max",
    "atomic_and",
    "atomic_or",
    "atomic_xor",
    "atomic_exch",
    "atomic_cas",
    "shared",
    "dyn_shared",
    "size_of",
    "cp_async",
    "cp_async_commit",
    "cp_async_wait",
    "cp_async_wait_all",
    "fma",
    "rsqrt",
    "min",
    "max",
    "ldmatrix_x1",
    "ldmatrix_x2",
    "ldmatrix_x4",
    "ldmatrix_x1_trans",
    "ldmatrix_x2_trans",
    "ldmatrix_x4_trans",
    "mma",
    "frag_a_zero",
    "frag_b_zero",
    "frag_c_zero",
    "pack2",
    "unpack_lo",
    "unpack_hi",
    "wgmma",
    "wgmma_tb",
    "wgmma_rs",
    "wgmma_rs_tb",
    "wgmma_fence",
    "wgmma_commit",
    "wgmma_wait",
    "wgmma_desc",
    "mbarrier_init",
    "mbarrier_arrive",
    "mbarrier_expect_tx",
    "mbarrier_wait",
    "fence_barrier_init",
    "fence_proxy_async",
    "tma_load_2d",
    "setmaxnreg_inc",
    "setmaxnreg_dec",
];
