//! Kiln's typed intermediate representation: what the front end produces from a checked
//! Rust function, what specialisation rewrites, and what the CUDA printer (and later the
//! emulator) consume. It is serialisable so that `#[kernel]` can embed it in the binary.

use serde::{Deserialize, Serialize};

use crate::types::{Scalar, Ty};

/// Whether a function is a kernel entry point or a device function.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FnKind {
    /// A `#[kernel]`: an `extern "C" __global__` entry point launched from the host.
    Kernel,
    /// A `#[device]` function: a `__device__` helper called from kernels and other device
    /// functions.
    Device,
}

/// A comptime parameter of a function.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Generic {
    /// `const NAME: ty` — an integer or bool value fixed per specialisation.
    Const {
        /// The parameter's name (also its `constexpr` name in CUDA).
        name: String,
        /// Its integer or bool type.
        ty: Scalar,
    },
    /// `T: Float` — an element type fixed per specialisation (f32, f16, bf16, f64).
    Type {
        /// The parameter's name.
        name: String,
    },
}

impl Generic {
    /// The parameter's name as written in Rust.
    pub fn name(&self) -> &str {
        match self {
            Generic::Const { name, .. } | Generic::Type { name } => name,
        }
    }
}

/// A run-time parameter.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Param {
    /// Name in the Rust source.
    pub name: String,
    /// Name in the generated CUDA.
    pub cname: String,
    /// Its type: a scalar, or a slice (which also passes its length in CUDA).
    pub ty: Ty,
}

/// A checked function.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Function {
    /// The function's name, which the CUDA keeps (after specialisation, a device function's
    /// instance name).
    pub name: String,
    /// Kernel entry point or device function.
    pub kind: FnKind,
    /// Comptime parameters in declaration order (`Scalar::Param(i)` refers to the i-th).
    pub generics: Vec<Generic>,
    /// Run-time parameters, in order.
    pub params: Vec<Param>,
    /// The return type (`Unit` for kernels and for device functions without a result).
    pub ret: Ty,
    /// The statements of the function body.
    pub body: Vec<Stmt>,
    /// Line of the `fn` in its source file.
    pub line: u32,
    /// `#[kernel(threads = N)]`: the block size the kernel is always launched with.
    pub max_threads: Option<u32>,
    /// The Rust file that defines the function (set when it is specialised).
    #[serde(default)]
    pub file: String,
}

/// A statement with the Rust source line it came from.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Stmt {
    /// The Rust source line (maps CUDA lines back to the kernel's source).
    pub line: u32,
    /// What the statement does.
    pub kind: StmtKind,
}

/// Statements.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum StmtKind {
    /// `let [mut] name: ty = init;`
    Let {
        /// The variable's CUDA name.
        name: String,
        /// Its declared or inferred type.
        ty: Ty,
        /// `let mut`; otherwise the CUDA declares it `const`.
        mutable: bool,
        /// The initial value (`None` for `let x;` assigned later).
        init: Option<Expr>,
    },
    /// `let name = shared::<[T; N]>();` — a static shared array.
    SharedArray {
        /// The array's CUDA name.
        name: String,
        /// The array type (a `Ty::Array` in shared memory).
        ty: Ty,
    },
    /// `let name = dyn_shared::<T>();` — the dynamic shared memory.
    DynShared {
        /// The CUDA name of the typed pointer to it.
        name: String,
        /// The element type the memory is viewed as.
        elem: Scalar,
    },
    /// `let mut name = [fill; N];` — a register array.
    LocalArray {
        /// The array's CUDA name.
        name: String,
        /// The array type (a `Ty::Array` in registers).
        ty: Ty,
        /// The value every element starts with (evaluated once).
        fill: Expr,
    },
    /// `target op= value` (op is `None` for plain `=`).
    Assign {
        /// The place written: a variable or an indexed element.
        target: Expr,
        /// The compound operator, `None` for plain `=`.
        op: Option<BinOp>,
        /// The value stored or combined with the place.
        value: Expr,
    },
    /// An expression evaluated for its effect.
    Expr(Expr),
    /// `if cond { then } else { els }`; an `else if` is an `If` alone in `els`.
    If {
        /// The condition (a `bool`).
        cond: Expr,
        /// Run when the condition holds.
        then: Vec<Stmt>,
        /// Run otherwise (empty without an `else`).
        els: Vec<Stmt>,
    },
    /// `for var in start..end` (or `..=`, `.step_by(step)`); unrolled when the bounds are comptime.
    For {
        /// The loop variable's CUDA name.
        var: String,
        /// The loop variable's integer type.
        ty: Scalar,
        /// The first value.
        start: Expr,
        /// The end bound, excluded unless `inclusive`.
        end: Expr,
        /// Whether the range is `start..=end`.
        inclusive: bool,
        /// The positive `step_by` amount, if any.
        step: Option<Expr>,
        /// Bounds and step are all comptime: the loop is printed with `#pragma unroll`.
        unroll: bool,
        /// The loop body.
        body: Vec<Stmt>,
    },
    /// `while cond { body }`.
    While {
        /// Checked before each iteration.
        cond: Expr,
        /// The loop body.
        body: Vec<Stmt>,
    },
    /// `loop { body }` (printed as `for (;;)`).
    Loop {
        /// The loop body.
        body: Vec<Stmt>,
    },
    /// `break` out of the innermost loop.
    Break,
    /// `continue` with the next iteration of the innermost loop.
    Continue,
    /// `return` (with a value in a device function that has a result).
    Return(Option<Expr>),
    /// A nested `{ … }` block (its own scope).
    Block(Vec<Stmt>),
}

/// A typed expression.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Expr {
    /// What the expression computes.
    pub kind: ExprKind,
    /// The type of its value.
    pub ty: Ty,
}

/// Expressions.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum ExprKind {
    /// An integer literal (two's complement bits; the type says how to read them).
    Int(u64),
    /// A float literal, printed in the precision of its type.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A local variable or run-time parameter, by its CUDA name.
    Var(String),
    /// A comptime parameter, by name.
    ConstParam(String),
    /// `f32::INFINITY`, `u32::MAX`, …
    TypeConst(TypeConst),
    /// `-a` or `!a`.
    Unary(UnOp, Box<Expr>),
    /// `a op b`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `expr as ty` (the target is this expression's type).
    Cast(Box<Expr>),
    /// `base[index]` on a slice, array, dynamic shared memory or vector.
    Index(Box<Expr>, Box<Expr>),
    /// `.x`, `.y`, `.z` of a `Dim3`.
    Field(Box<Expr>, Axis),
    /// A built-in operation (thread indices, math, warp collectives, atomics, …).
    Intrinsic(Intrinsic, Vec<Expr>),
    /// A call of a `#[device]` function; `callee` is the path as written at the call site.
    Call {
        /// The device function, by the path written at the call site (by instance name
        /// after specialisation).
        callee: String,
        /// Generic arguments written at the call (`f::<T, 4>`), cleared by specialisation.
        generics: Vec<GenericArg>,
        /// The run-time arguments.
        args: Vec<Expr>,
    },
    /// `if c { a } else { b }` used as a value.
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `size_of::<T>()`: the size of a scalar type in bytes (a comptime `u32`).
    SizeOf(Scalar),
}

/// A generic argument given at a device-function call (`f::<T, 4>(…)`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum GenericArg {
    /// An element type, for a `T: Float` parameter.
    Type(Scalar),
    /// A comptime value, for a `const` parameter.
    Const(crate::types::Len),
}

/// Associated constants of the scalar types.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum TypeConst {
    /// `MIN`: the smallest value (the most negative finite one for floats).
    Min,
    /// `MAX`: the largest finite value.
    Max,
    /// `INFINITY`
    Infinity,
    /// `NEG_INFINITY`
    NegInfinity,
    /// `NAN`
    Nan,
    /// `EPSILON`: the gap between 1.0 and the next larger float.
    Epsilon,
}

/// The three axes of a `Dim3`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Axis {
    /// `.x`
    X,
    /// `.y`
    Y,
    /// `.z`
    Z,
}

/// Unary operators.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum UnOp {
    /// `-` — arithmetic negation.
    Neg,
    /// `!` — logical not on bool, bitwise not on integers.
    Not,
}

/// Binary operators.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%` (`fmod` for floats)
    Rem,
    /// `&`
    BitAnd,
    /// `|`
    BitOr,
    /// `^`
    BitXor,
    /// `<<`
    Shl,
    /// `>>` (arithmetic on signed integers)
    Shr,
    /// `&&` on bools
    And,
    /// `||` on bools
    Or,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl BinOp {
    /// The C spelling.
    pub fn c_op(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::BitAnd => "&",
            BinOp::BitOr => "|",
            BinOp::BitXor => "^",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
            BinOp::And => "&&",
            BinOp::Or => "||",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }

    /// Comparisons produce `bool`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
}

/// Built-in operations. Their type rules live in `front::builtins`, their CUDA in `cuda::expr`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Intrinsic {
    // indices
    /// `thread_idx()`: the thread's index in its block (`threadIdx`).
    ThreadIdx,
    /// `block_idx()`: the block's index in the grid (`blockIdx`).
    BlockIdx,
    /// `block_dim()`: the threads per block (`blockDim`).
    BlockDim,
    /// `grid_dim()`: the blocks per grid (`gridDim`).
    GridDim,
    /// `lane_id()`: the thread's lane in its warp, 0..32 (`%laneid`).
    LaneId,
    /// `warp_id()`: the thread's warp in its block (linear thread index / 32).
    WarpId,
    /// `warp_size()`: 32, a comptime value.
    WarpSize,
    // synchronisation
    /// `sync_threads()`: a barrier for every thread of the block (`__syncthreads`).
    SyncThreads,
    /// `sync_warp()`: a barrier for every lane of the warp (`__syncwarp`).
    SyncWarp,
    /// `thread_fence()`: orders the thread's memory accesses as seen by the whole device
    /// (`__threadfence`).
    ThreadFence,
    /// `thread_fence_block()`: the same, as seen by the block (`__threadfence_block`).
    ThreadFenceBlock,
    // warp collectives
    /// `shfl_sync(mask, v, lane)`: `v` of lane `lane` (`__shfl_sync`).
    ShflSync,
    /// `shfl_xor_sync(mask, v, lane_mask)`: `v` of lane `lane_id ^ lane_mask`
    /// (`__shfl_xor_sync`).
    ShflXorSync,
    /// `shfl_down_sync(mask, v, delta)`: `v` of lane `lane_id + delta` (`__shfl_down_sync`).
    ShflDownSync,
    /// `shfl_up_sync(mask, v, delta)`: `v` of lane `lane_id - delta` (`__shfl_up_sync`).
    ShflUpSync,
    /// `ballot_sync(mask, pred)`: one bit per lane whose `pred` holds (`__ballot_sync`).
    BallotSync,
    /// `all_sync(mask, pred)`: whether `pred` holds on every lane in `mask` (`__all_sync`).
    AllSync,
    /// `any_sync(mask, pred)`: whether `pred` holds on some lane in `mask` (`__any_sync`).
    AnySync,
    /// `activemask()`: the lanes executing this code together (`__activemask`).
    ActiveMask,
    // atomics: first argument is a place in global or shared memory; they return the old value
    /// `atomic_add(&mut x[i], v)`: `x[i] += v` (`atomicAdd`).
    AtomicAdd,
    /// `atomic_sub(&mut x[i], v)`: `x[i] -= v` (`atomicSub`).
    AtomicSub,
    /// `atomic_min(&mut x[i], v)`: `x[i] = min(x[i], v)` (`atomicMin`).
    AtomicMin,
    /// `atomic_max(&mut x[i], v)`: `x[i] = max(x[i], v)` (`atomicMax`).
    AtomicMax,
    /// `atomic_and(&mut x[i], v)`: `x[i] &= v` (`atomicAnd`).
    AtomicAnd,
    /// `atomic_or(&mut x[i], v)`: `x[i] |= v` (`atomicOr`).
    AtomicOr,
    /// `atomic_xor(&mut x[i], v)`: `x[i] ^= v` (`atomicXor`).
    AtomicXor,
    /// `atomic_exch(&mut x[i], v)`: `x[i] = v` (`atomicExch`).
    AtomicExch,
    /// `atomic_cas(&mut x[i], expected, new)`: `x[i] = new` if `x[i] == expected`
    /// (`atomicCAS`).
    AtomicCas,
    // asynchronous global -> shared copies (16 bytes each)
    /// `cp_async(&mut tile[j], &src[i])`: starts a 16-byte copy from global to shared
    /// memory (`cp.async.cg`).
    CpAsync,
    /// `cp_async_commit()`: closes the group of the copies started since the last commit
    /// (`cp.async.commit_group`).
    CpAsyncCommit,
    /// `cp_async_wait::<N>()`: waits until at most `N` committed groups are still in flight
    /// (`cp.async.wait_group`). Argument: `N`.
    CpAsyncWait,
    /// `cp_async_wait_all()`: waits for every started copy (`cp.async.wait_all`).
    CpAsyncWaitAll,
    // tensor cores: warp-level matrix fragments (see `front::tensor`)
    /// `ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16`: `num` 8×8 matrices of 16-bit
    /// elements from shared memory, one row address per lane. Argument: the lane's row.
    Ldmatrix {
        /// The number of matrices: 1, 2 or 4.
        num: u8,
        /// Whether each matrix is transposed on the way (`.trans`).
        trans: bool,
    },
    /// `mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32`: `D = A·B + C` (arguments A, B, C).
    Mma,
    /// A fragment of zeros (the result type says which).
    FragZero,
    /// Two `f32` rounded to nearest even into a `b32` of two halves of the given type
    /// (`cvt.rn.{bf16x2,f16x2}.f32`): arguments (low half, high half).
    Pack2(Scalar),
    /// The low half of a `b32` as the 16-bit float of the result type.
    UnpackLo,
    /// The high half of a `b32` as the 16-bit float of the result type.
    UnpackHi,
    // Hopper (sm_90, and sm_90a for wgmma and setmaxnreg; see `front::hopper`)
    /// `wgmma_fence()`: orders earlier register and shared-memory accesses before the next
    /// warpgroup MMA (`wgmma.fence.sync.aligned`).
    WgmmaFence,
    /// `wgmma_commit()`: closes the group of the warpgroup MMAs issued since the last commit
    /// (`wgmma.commit_group.sync.aligned`).
    WgmmaCommit,
    /// `wgmma_wait::<N>()`: waits until at most `N` committed MMA groups are still in flight
    /// (`wgmma.wait_group.sync.aligned`). Argument: `N`.
    WgmmaWait,
    /// `wgmma.mma_async.sync.aligned.m64nNk16.f32.T.T` with both operands in shared memory:
    /// `acc += A·B` for one warpgroup. Arguments: the accumulator (a register array of `N/2`
    /// f32), A's and B's matrix descriptors. `trans_b`: B is stored N-major (a row-major
    /// `K × N` tile) rather than K-major.
    Wgmma {
        /// The input element type (f16 or bf16; a `T: Float` until specialised).
        elem: Scalar,
        /// Whether B is read transposed (`imm-trans-b` = 1).
        trans_b: bool,
    },
    /// The same with A from registers (`wgmma_rs`, `wgmma_rs_tb`): arguments the accumulator,
    /// A as a `FragA` (the warp's 16 rows of the 64 × 16 tile, in `mma.sync`'s A layout) and
    /// B's descriptor.
    WgmmaRs {
        /// The input element type (f16 or bf16; a `T: Float` until specialised).
        elem: Scalar,
        /// Whether B is read transposed (`imm-trans-b` = 1).
        trans_b: bool,
    },
    /// `wgmma_desc(&tile[i], lbo, sbo)`: the 64-bit shared-memory matrix descriptor of a
    /// 128-byte-swizzled tile starting at `tile[i]` (leading and stride byte offsets).
    WgmmaDesc,
    /// `mbarrier_init(&mut bar[i], count)`: a barrier expecting `count` arrivals per phase.
    MbarrierInit,
    /// `mbarrier_arrive(&mut bar[i])`: one arrival on the current phase.
    MbarrierArrive,
    /// `mbarrier_expect_tx(&mut bar[i], bytes)`: one arrival that also expects `bytes` of
    /// asynchronous copies to complete on the phase (`mbarrier.arrive.expect_tx`).
    MbarrierExpectTx,
    /// `mbarrier_wait(&mut bar[i], parity)`: waits until the phase of parity `parity` (0 or 1)
    /// has completed (`mbarrier.try_wait.parity` in a loop).
    MbarrierWait,
    /// `fence_barrier_init()`: makes barrier initialisations visible to the asynchronous
    /// proxy (copy engine) before the first copy completes on them.
    FenceBarrierInit,
    /// `fence_proxy_async()`: orders this thread's ordinary shared-memory writes before later
    /// reads by the tensor cores or the copy engine (`fence.proxy.async.shared::cta`).
    FenceProxyAsync,
    /// `tma_load_2d(&mut tile[j], &map[0], src, &mut bar[i], x, y)`: the copy engine loads the
    /// box at column `x`, row `y` of the 2-D tensor `src` described by the tensor map `map`
    /// into shared memory, completing `box bytes` of transactions on the barrier
    /// (`cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes`).
    TmaLoad2d,
    /// `setmaxnreg_inc::<N>()` / `setmaxnreg_dec::<N>()`: raises or lowers the warpgroup's
    /// register budget to `N` per thread (`setmaxnreg.{inc,dec}.sync.aligned.u32`).
    SetMaxNReg {
        /// Raise (`inc`) rather than lower (`dec`).
        inc: bool,
    },
    // slices and vectors
    /// `x.len()`: a slice's length (its `_len` parameter) or an array's first dimension.
    Len,
    /// `x.vload(i)`: the 16 bytes starting at element `i`, as a vector.
    VLoad,
    /// `x.vstore(i, v)`: writes the vector `v` to the 16 bytes starting at element `i`.
    VStore,
    /// `v.lanes()`: the number of elements in a vector (comptime).
    Lanes,
    // float math
    /// `x.exp()`: eˣ (`expf`/`exp`).
    Exp,
    /// `x.exp2()`: 2ˣ (`exp2f`/`exp2`).
    Exp2,
    /// `x.ln()`: the natural logarithm (`logf`/`log`).
    Ln,
    /// `x.log2()`: the base-2 logarithm (`log2f`/`log2`).
    Log2,
    /// `x.sqrt()`: the square root (`sqrtf`/`sqrt`).
    Sqrt,
    /// `x.rsqrt()` or `rsqrt(x)`: 1/√x (`rsqrtf`/`rsqrt`).
    Rsqrt,
    /// `x.recip()`: 1/x.
    Recip,
    /// `x.sin()` (`sinf`/`sin`).
    Sin,
    /// `x.cos()` (`cosf`/`cos`).
    Cos,
    /// `x.tanh()` (`tanhf`/`tanh`).
    Tanh,
    /// `x.abs()`: the absolute value of a float (`fabsf`/`fabs`) or signed integer
    /// (`kiln_abs`).
    Abs,
    /// `x.floor()`: rounded down (`floorf`/`floor`).
    Floor,
    /// `x.ceil()`: rounded up (`ceilf`/`ceil`).
    Ceil,
    /// `x.round()`: rounded to the nearest integer, halves away from zero (`roundf`/`round`).
    Round,
    /// `x.trunc()`: rounded toward zero (`truncf`/`trunc`).
    Trunc,
    /// `x.max(y)` or `max(x, y)`: the larger of two numbers (`fmaxf`/`fmax`, `kiln_max` for
    /// integers).
    Max,
    /// `x.min(y)` or `min(x, y)`: the smaller of two numbers (`fminf`/`fmin`, `kiln_min` for
    /// integers).
    Min,
    /// `x.powf(y)`: xʸ (`powf`/`pow`).
    Powf,
    /// `x.mul_add(a, b)` or `fma(x, a, b)`: x·a + b with one rounding (`fmaf`/`fma`).
    MulAdd,
    /// `x.is_nan()`: whether `x` is NaN.
    IsNan,
    /// `x.to_bits()`: the float's bits as the unsigned integer of its width.
    ToBits,
    /// `f32::from_bits(b)` (and f16, bf16, f64): the float with the given bits.
    FromBits,
    // integer bit operations
    /// `x.count_ones()`: the number of set bits (`__popc`).
    CountOnes,
    /// `x.leading_zeros()`: the zero bits above the highest set bit (`__clz`).
    LeadingZeros,
    /// `x.trailing_zeros()`: the zero bits below the lowest set bit.
    TrailingZeros,
    /// `x.reverse_bits()`: the bits in reverse order (`__brev`).
    ReverseBits,
    /// `a.div_ceil(b)`: `a / b` rounded up, for unsigned integers.
    DivCeil,
}

impl Intrinsic {
    /// True for the warp-synchronous tensor-core instructions (every lane of the warp must
    /// execute them together).
    pub fn is_warp_matrix(self) -> bool {
        matches!(self, Intrinsic::Ldmatrix { .. } | Intrinsic::Mma)
    }

    /// True for the Hopper instructions, which need sm_90 (see [`Intrinsic::needs_sm90a`]).
    pub fn is_hopper(self) -> bool {
        use Intrinsic::*;
        matches!(
            self,
            WgmmaFence
                | WgmmaCommit
                | WgmmaWait
                | Wgmma { .. }
                | WgmmaRs { .. }
                | WgmmaDesc
                | MbarrierInit
                | MbarrierArrive
                | MbarrierExpectTx
                | MbarrierWait
                | FenceBarrierInit
                | FenceProxyAsync
                | TmaLoad2d
                | SetMaxNReg { .. }
        )
    }

    /// True for the instructions only the architecture-specific target `sm_90a` has
    /// (warpgroup MMA and register reallocation).
    pub fn needs_sm90a(self) -> bool {
        use Intrinsic::*;
        matches!(
            self,
            WgmmaFence
                | WgmmaCommit
                | WgmmaWait
                | Wgmma { .. }
                | WgmmaRs { .. }
                | SetMaxNReg { .. }
        )
    }

    /// True for atomics (their first argument is a memory place).
    pub fn is_atomic(self) -> bool {
        use Intrinsic::*;
        matches!(
            self,
            AtomicAdd
                | AtomicSub
                | AtomicMin
                | AtomicMax
                | AtomicAnd
                | AtomicOr
                | AtomicXor
                | AtomicExch
                | AtomicCas
        )
    }
}

impl Expr {
    /// A typed expression.
    pub fn new(kind: ExprKind, ty: Ty) -> Expr {
        Expr { kind, ty }
    }

    /// Visits this expression and every sub-expression, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match &self.kind {
            ExprKind::Unary(_, a) | ExprKind::Cast(a) | ExprKind::Field(a, _) => a.walk(f),
            ExprKind::Binary(_, a, b) | ExprKind::Index(a, b) => {
                a.walk(f);
                b.walk(f);
            }
            ExprKind::Select(a, b, c) => {
                a.walk(f);
                b.walk(f);
                c.walk(f);
            }
            ExprKind::Intrinsic(_, args) | ExprKind::Call { args, .. } => {
                args.iter().for_each(|a| a.walk(f))
            }
            ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Bool(_)
            | ExprKind::Var(_)
            | ExprKind::ConstParam(_)
            | ExprKind::TypeConst(_)
            | ExprKind::SizeOf(_) => {}
        }
    }

    /// Rewrites this expression and every sub-expression in place, children first.
    pub fn walk_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        match &mut self.kind {
            ExprKind::Unary(_, a) | ExprKind::Cast(a) | ExprKind::Field(a, _) => a.walk_mut(f),
            ExprKind::Binary(_, a, b) | ExprKind::Index(a, b) => {
                a.walk_mut(f);
                b.walk_mut(f);
            }
            ExprKind::Select(a, b, c) => {
                a.walk_mut(f);
                b.walk_mut(f);
                c.walk_mut(f);
            }
            ExprKind::Intrinsic(_, args) | ExprKind::Call { args, .. } => {
                args.iter_mut().for_each(|a| a.walk_mut(f))
            }
            ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Bool(_)
            | ExprKind::Var(_)
            | ExprKind::ConstParam(_)
            | ExprKind::TypeConst(_)
            | ExprKind::SizeOf(_) => {}
        }
        f(self);
    }
}

/// Calls `f` on every statement of `body`, recursively, parents first.
pub fn walk_stmts(body: &[Stmt], f: &mut dyn FnMut(&Stmt)) {
    for s in body {
        f(s);
        for child in s.kind.children() {
            walk_stmts(child, f);
        }
    }
}

/// Calls `f` on every statement of `body` mutably, recursively, parents first.
pub fn walk_stmts_mut(body: &mut [Stmt], f: &mut dyn FnMut(&mut Stmt)) {
    for s in body.iter_mut() {
        f(s);
        for child in s.kind.children_mut() {
            walk_stmts_mut(child, f);
        }
    }
}

impl StmtKind {
    /// The nested statement lists.
    pub fn children(&self) -> Vec<&Vec<Stmt>> {
        match self {
            StmtKind::If { then, els, .. } => vec![then, els],
            StmtKind::For { body, .. }
            | StmtKind::While { body, .. }
            | StmtKind::Loop { body }
            | StmtKind::Block(body) => vec![body],
            _ => vec![],
        }
    }

    /// The nested statement lists, mutably.
    pub fn children_mut(&mut self) -> Vec<&mut Vec<Stmt>> {
        match self {
            StmtKind::If { then, els, .. } => vec![then, els],
            StmtKind::For { body, .. }
            | StmtKind::While { body, .. }
            | StmtKind::Loop { body }
            | StmtKind::Block(body) => vec![body],
            _ => vec![],
        }
    }

    /// The expressions held directly by this statement (not by nested statements).
    pub fn exprs_mut(&mut self) -> Vec<&mut Expr> {
        match self {
            StmtKind::Let { init, .. } => init.iter_mut().collect(),
            StmtKind::LocalArray { fill, .. } => vec![fill],
            StmtKind::Assign { target, value, .. } => vec![target, value],
            StmtKind::Expr(e) => vec![e],
            StmtKind::If { cond, .. } | StmtKind::While { cond, .. } => vec![cond],
            StmtKind::For {
                start, end, step, ..
            } => {
                let mut v = vec![start, end];
                v.extend(step.iter_mut());
                v
            }
            StmtKind::Return(e) => e.iter_mut().collect(),
            _ => vec![],
        }
    }

    /// The expressions held directly by this statement.
    pub fn exprs(&self) -> Vec<&Expr> {
        match self {
            StmtKind::Let { init, .. } => init.iter().collect(),
            StmtKind::LocalArray { fill, .. } => vec![fill],
            StmtKind::Assign { target, value, .. } => vec![target, value],
            StmtKind::Expr(e) => vec![e],
            StmtKind::If { cond, .. } | StmtKind::While { cond, .. } => vec![cond],
            StmtKind::For {
                start, end, step, ..
            } => {
                let mut v = vec![start, end];
                v.extend(step.iter());
                v
            }
            StmtKind::Return(e) => e.iter().collect(),
            _ => vec![],
        }
    }
}
