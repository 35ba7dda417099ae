//! The emulator's bytecode: a flat list of register instructions with jumps, produced by
//! `compile` from a specialised program and executed per thread by `interp`.
//!
//! Registers are `u64` slots of a per-thread frame. Device functions are inlined, so every
//! call site has its own instructions: a warp collective is identified by its program
//! counter, as it would be by its instruction address on the GPU.

use kiln_codegen::ir::Intrinsic;

use super::value::{BinFn, DivKind, TerFn, UnFn, K};

/// A register: an index into a thread's frame.
pub(crate) type Reg = u32;

/// Register 0 always holds 0 (the base of one-dimensional accesses).
pub(crate) const ZERO: Reg = 0;

/// The flat index an address step produces when one of its indices was out of bounds; an
/// access at it is skipped without a second report.
pub(crate) const POISON: u64 = u64::MAX;

/// Where a memory object lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Loc {
    /// A global slice argument (index into the launch's buffers).
    Global(u16),
    /// Shared memory of the block, at this byte offset.
    Shared(u32),
    /// Registers of the thread (register arrays and vectors), from this slot.
    Local(Reg),
}

/// One element (or, for vector and async accesses, 16 bytes) of a memory object: element
/// `base + idx` where `idx < len`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Access {
    pub loc: Loc,
    pub k: K,
    /// Flat element index of the start of the indexed (sub-)array.
    pub base: Reg,
    pub idx: Reg,
    /// Elements of the indexed (sub-)array.
    pub len: u64,
    /// The memory object, for reports (index into `Code::mems`).
    pub mem: u16,
}

/// Thread and launch geometry values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Special {
    ThreadIdx(u8),
    BlockIdx(u8),
    BlockDim(u8),
    GridDim(u8),
    LaneId,
    WarpId,
}

/// Warp collectives: every participating lane stops at one, then the scheduler computes
/// all their results at once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WarpOp {
    Shfl(ShflMode),
    Ballot,
    All,
    Any,
    ActiveMask,
    SyncWarp,
}

/// The four shuffle flavours (PTX `shfl.sync` modes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ShflMode {
    Idx,
    Xor,
    Down,
    Up,
}

/// The warp-synchronous tensor-core instructions (see `matrix`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum MatrixOp {
    /// `ldmatrix.m8n8.x{num}[.trans].b16`: `src[0]` holds the 8-element row this lane
    /// addressed (one b16 per slot; loaded only by lanes below `8 * num`), `dst` receives
    /// `num` b32 registers.
    Ldmatrix { num: u8, trans: bool },
    /// `mma.sync.m16n8k16` with f32 accumulation for inputs of kind `elem` (f16 or bf16):
    /// A at `src[0]` (4 slots), B at `src[1]` (2), C at `src[2]` (4), D at `dst` (4).
    Mma { elem: K },
    /// The A operand of `wgmma_rs`: `src[0]` holds this lane's A fragment (4 slots, the
    /// `mma` A layout over the warp's 16 rows); `dst` receives the two whole rows this lane's
    /// accumulator entries need (16 slots: row `l/4`, then row `l/4 + 8`, two halves each).
    WgmmaRows,
}

/// A `tma_load_2d` (see `hopper`).
#[derive(Clone, Debug)]
pub(crate) struct TmaLoad {
    /// The first destination element (shared).
    pub dst: Access,
    /// The map's first word (a global `u64`).
    pub map: Access,
    /// The source tensor: its buffer, length in elements, element kind and name.
    pub src: u16,
    pub src_len: u64,
    pub src_k: K,
    pub src_mem: u16,
    /// The barrier that receives the bytes.
    pub bar: Access,
    /// Column and row of the box.
    pub x: Reg,
    pub y: Reg,
}

/// The Hopper instructions (see `hopper`).
#[derive(Clone, Debug)]
pub(crate) enum HopperOp {
    /// `dst = kiln_wgmma_desc(addr, lbo, sbo)` (`addr` from `SharedAddr`, maybe `POISON`).
    WgmmaDesc {
        dst: Reg,
        addr: Reg,
        lbo: Reg,
        sbo: Reg,
    },
    WgmmaCommit,
    /// Retires all but the `n` most recently committed groups.
    WgmmaWait {
        n: u32,
    },
    /// `acc[..acc_len] += A·B`: B from the descriptor in `b`; A from the descriptor in `a`,
    /// or (`a_rows`) from the 16 slots at `a` that `MatrixOp::WgmmaRows` filled.
    Wgmma {
        elem: K,
        trans_b: bool,
        a_rows: bool,
        acc: Reg,
        acc_len: u32,
        a: Reg,
        b: Reg,
    },
    MbarInit {
        bar: Access,
        count: Reg,
    },
    MbarArrive {
        bar: Access,
    },
    MbarExpectTx {
        bar: Access,
        bytes: Reg,
    },
    /// Blocks the thread until the phase of parity `parity` has completed.
    MbarWait {
        bar: Access,
        parity: Reg,
    },
    Tma(Box<TmaLoad>),
}

/// One instruction.
#[derive(Clone, Debug)]
pub(crate) enum Instr {
    Const {
        dst: Reg,
        bits: u64,
    },
    Mov {
        dst: Reg,
        src: Reg,
    },
    /// Copies `n` consecutive slots (vectors, `Dim3` values).
    Copy {
        dst: Reg,
        src: Reg,
        n: u32,
    },
    /// Sets `n` consecutive slots to the value of `src` (register array initialisation).
    Fill {
        dst: Reg,
        src: Reg,
        n: u32,
    },
    Un {
        f: UnFn,
        dst: Reg,
        a: Reg,
    },
    Bin {
        f: BinFn,
        dst: Reg,
        a: Reg,
        b: Reg,
    },
    Ter {
        f: TerFn,
        dst: Reg,
        a: Reg,
        b: Reg,
        c: Reg,
    },
    Cast {
        from: K,
        to: K,
        dst: Reg,
        a: Reg,
    },
    /// Integer division with a check for a zero divisor.
    IntDiv {
        f: BinFn,
        kind: DivKind,
        k: K,
        dst: Reg,
        a: Reg,
        b: Reg,
    },
    Special {
        dst: Reg,
        which: Special,
    },
    Jump {
        to: u32,
    },
    /// Jumps when `cond` (a bool) equals `when`.
    Branch {
        cond: Reg,
        when: bool,
        to: u32,
    },
    /// One step of a multi-dimensional index: `dst = base + idx * stride` after checking
    /// `idx < dim` (else `dst = POISON` and an out-of-bounds report).
    IndexStep {
        dst: Reg,
        base: Reg,
        idx: Reg,
        dim: u64,
        stride: u64,
        loc: Loc,
        mem: u16,
    },
    Load {
        dst: Reg,
        at: Access,
    },
    Store {
        src: Reg,
        at: Access,
    },
    /// 16 bytes into `16 / size` consecutive registers.
    VLoad {
        dst: Reg,
        at: Access,
    },
    VStore {
        src: Reg,
        at: Access,
    },
    /// `dst = old value`; `a` is the operand (CAS: the expected value, `b` the new one).
    Atomic {
        op: Intrinsic,
        dst: Reg,
        at: Access,
        a: Reg,
        b: Reg,
    },
    /// 16 bytes from global `src` to shared `dst`, completing at a wait.
    CpAsync {
        dst: Access,
        src: Access,
    },
    CpCommit,
    /// Waits until at most `n` committed groups are pending.
    CpWait {
        n: u32,
    },
    CpWaitAll,
    Barrier,
    Warp {
        op: WarpOp,
        dst: Reg,
        mask: Reg,
        val: Reg,
        lane: Reg,
    },
    /// A tensor-core instruction: a collective like `Warp` that needs all 32 lanes.
    Matrix {
        op: MatrixOp,
        dst: Reg,
        src: [Reg; 3],
    },
    Fence,
    /// `dst` = the shared byte address of `at` (`POISON` when out of bounds).
    SharedAddr {
        dst: Reg,
        at: Access,
    },
    Hopper(HopperOp),
    Exit,
}

/// Where an instruction came from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Origin {
    /// Rust source line of the statement.
    pub line: u32,
    /// Index into `Code::funcs` (0 is the kernel).
    pub func: u16,
}

/// A compiled kernel, ready to run one launch.
#[derive(Debug)]
pub(crate) struct Code {
    pub instrs: Vec<Instr>,
    /// One entry per instruction.
    pub origins: Vec<Origin>,
    /// Names of the kernel (first) and the inlined device functions.
    pub funcs: Vec<String>,
    /// The Rust file of each function in `funcs`.
    pub files: Vec<String>,
    /// Names of memory objects, for reports.
    pub mems: Vec<String>,
    /// Registers per thread.
    pub frame: u32,
    /// Bytes of shared memory per block (static arrays, then the dynamic part).
    pub shared_bytes: u32,
    /// Whether the result depends on the order in which blocks perform global atomics
    /// (float atomics, exchanges, compare-and-swap, or atomics whose old value is used):
    /// such kernels run their blocks one after another so the result stays deterministic.
    pub order_sensitive: bool,
    /// Whether the program uses Hopper instructions (their per-block state is kept).
    pub hopper: bool,
}

impl Code {
    /// Line and function of instruction `pc`.
    pub(crate) fn origin(&self, pc: usize) -> Origin {
        self.origins
            .get(pc)
            .copied()
            .unwrap_or(Origin { line: 0, func: 0 })
    }

    /// The Rust file of function `func` (an index into `funcs`).
    pub(crate) fn file(&self, func: u16) -> &str {
        self.files
            .get(func as usize)
            .or(self.files.first())
            .map(String::as_str)
            .unwrap_or("?")
    }
}
