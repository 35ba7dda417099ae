//! Kiln's typed intermediate representation: what the front end produces from a checked
//! Rust function, what specialisation rewrites, and what the CUDA printer (and later the
//! emulator) consume. It is serialisable so that `#[kernel]` can embed it in the binary.

use serde::{Deserialize, Serialize};

use crate::types::{Scalar, Ty};

/// Whether a function is a kernel entry point or a device function.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FnKind {
    Kernel,
    Device,
}

/// A comptime parameter of a function.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Generic {
    /// `const NAME: ty` — an integer or bool value fixed per specialisation.
    Const { name: String, ty: Scalar },
    /// `T: Float` — an element type fixed per specialisation (f32, f16, bf16, f64).
    Type { name: String },
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
    pub ty: Ty,
}

/// A checked function.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    pub kind: FnKind,
    pub generics: Vec<Generic>,
    pub params: Vec<Param>,
    pub ret: Ty,
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
    pub line: u32,
    pub kind: StmtKind,
}

/// Statements.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum StmtKind {
    /// `let [mut] name: ty = init;`
    Let {
        name: String,
        ty: Ty,
        mutable: bool,
        init: Option<Expr>,
    },
    /// `let name = shared::<[T; N]>();` — a static shared array.
    SharedArray {
        name: String,
        ty: Ty,
    },
    /// `let name = dyn_shared::<T>();` — the dynamic shared memory.
    DynShared {
        name: String,
        elem: Scalar,
    },
    /// `let mut name = [fill; N];` — a register array.
    LocalArray {
        name: String,
        ty: Ty,
        fill: Expr,
    },
    /// `target op= value` (op is `None` for plain `=`).
    Assign {
        target: Expr,
        op: Option<BinOp>,
        value: Expr,
    },
    /// An expression evaluated for its effect.
    Expr(Expr),
    If {
        cond: Expr,
        then: Vec<Stmt>,
        els: Vec<Stmt>,
    },
    /// `for var in start..end` (or `..=`, `.step_by(step)`); unrolled when the bounds are comptime.
    For {
        var: String,
        ty: Scalar,
        start: Expr,
        end: Expr,
        inclusive: bool,
        step: Option<Expr>,
        unroll: bool,
        body: Vec<Stmt>,
    },
    While {
        cond: Expr,
        body: Vec<Stmt>,
    },
    Loop {
        body: Vec<Stmt>,
    },
    Break,
    Continue,
    Return(Option<Expr>),
    /// A nested `{ … }` block (its own scope).
    Block(Vec<Stmt>),
}

/// A typed expression.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: Ty,
}

/// Expressions.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum ExprKind {
    /// An integer literal (two's complement bits; the type says how to read them).
    Int(u64),
    Float(f64),
    Bool(bool),
    /// A local variable or run-time parameter, by its CUDA name.
    Var(String),
    /// A comptime parameter, by name.
    ConstParam(String),
    /// `f32::INFINITY`, `u32::MAX`, …
    TypeConst(TypeConst),
    Unary(UnOp, Box<Expr>),
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
        callee: String,
        generics: Vec<GenericArg>,
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
    Type(Scalar),
    Const(crate::types::Len),
}

/// Associated constants of the scalar types.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum TypeConst {
    Min,
    Max,
    Infinity,
    NegInfinity,
    Nan,
    Epsilon,
}

/// The three axes of a `Dim3`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Axis {
    X,
    Y,
    Z,
}

/// Unary operators.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum UnOp {
    Neg,
    /// `!` — logical not on bool, bitwise not on integers.
    Not,
}

/// Binary operators.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    BitAnd,
    BitOr,
    BitXor,
    Shl,
    Shr,
    And,
    Or,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
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
    ThreadIdx,
    BlockIdx,
    BlockDim,
    GridDim,
    LaneId,
    WarpId,
    WarpSize,
    // synchronisation
    SyncThreads,
    SyncWarp,
    ThreadFence,
    ThreadFenceBlock,
    // warp collectives
    ShflSync,
    ShflXorSync,
    ShflDownSync,
    ShflUpSync,
    BallotSync,
    AllSync,
    AnySync,
    ActiveMask,
    // atomics: first argument is a place in global or shared memory; they return the old value
    AtomicAdd,
    AtomicSub,
    AtomicMin,
    AtomicMax,
    AtomicAnd,
    AtomicOr,
    AtomicXor,
    AtomicExch,
    AtomicCas,
    // asynchronous global -> shared copies (16 bytes each)
    CpAsync,
    CpAsyncCommit,
    CpAsyncWait,
    CpAsyncWaitAll,
    // tensor cores: warp-level matrix fragments (see `front::tensor`)
    /// `ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16`: `num` 8×8 matrices of 16-bit
    /// elements from shared memory, one row address per lane. Argument: the lane's row.
    Ldmatrix {
        num: u8,
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
    // slices and vectors
    Len,
    VLoad,
    VStore,
    Lanes,
    // float math
    Exp,
    Exp2,
    Ln,
    Log2,
    Sqrt,
    Rsqrt,
    Recip,
    Sin,
    Cos,
    Tanh,
    Abs,
    Floor,
    Ceil,
    Round,
    Trunc,
    Max,
    Min,
    Powf,
    MulAdd,
    IsNan,
    ToBits,
    FromBits,
    // integer bit operations
    CountOnes,
    LeadingZeros,
    TrailingZeros,
    ReverseBits,
    DivCeil,
}

impl Intrinsic {
    /// True for the warp-synchronous tensor-core instructions (every lane of the warp must
    /// execute them together).
    pub fn is_warp_matrix(self) -> bool {
        matches!(self, Intrinsic::Ldmatrix { .. } | Intrinsic::Mma)
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
