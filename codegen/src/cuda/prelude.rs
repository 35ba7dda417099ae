//! The CUDA prelude: the few helpers generated code needs that NVRTC does not provide
//! without headers (f16/bf16 storage types and conversions through inline PTX, async
//! copies, vector types, bit helpers, tensor-core fragments with `ldmatrix`, `mma.sync` and
//! packed conversions). Only the sections a program uses are emitted.

use std::collections::BTreeSet;

use crate::types::{FragKind, Scalar};

/// A section of the prelude, emitted when the program needs it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Section {
    /// `kiln_f16`: the f16 storage type with its conversions through `float`, operators
    /// and shuffles.
    Half,
    /// `kiln_bf16`: the same for bf16.
    Bf16,
    /// `kiln_lane_id`/`kiln_warp_id`, for `lane_id()`/`warp_id()`.
    LaneWarp,
    /// `kiln_min`/`kiln_max`/`kiln_abs`/`kiln_div_ceil`: the integer `min`, `max`, `abs`
    /// and `div_ceil`.
    MinMax,
    /// `kiln_ctz32`/`kiln_ctz64`: trailing zeros of a 32- or 64-bit integer.
    Ctz,
    /// `kiln_isnan`, for `is_nan()`.
    IsNan,
    /// `kiln_float_to_int`: Rust's float-to-integer `as` (saturating, NaN to 0).
    FloatToInt,
    /// `kiln_shl`/`kiln_shr`: shifts that are defined for amounts of the type's width or
    /// more, as in PTX.
    Shift,
    /// `kiln_smem_addr`: the shared-state-space address of a generic pointer.
    SmemAddr,
    /// `kiln_cp_async16` and the commit/wait helpers: asynchronous global -> shared copies.
    CpAsync,
    /// `kiln_dyn_smem`: the `extern __shared__` array behind `dyn_shared`.
    DynShared,
    /// The 16-byte vector struct of an element type.
    Vector(Scalar),
    /// The fragment structs of `mma.sync` m16n8k16.
    Frag,
    /// One `ldmatrix` variant: `num` 8×8 matrices, transposed or not.
    Ldmatrix {
        /// Matrices loaded at once: 1, 2 or 4.
        num: u8,
        /// Whether the matrices are transposed on the way (`.trans`).
        trans: bool,
    },
    /// `mma.sync` m16n8k16 with f32 accumulation for one input type (f16 or bf16).
    Mma(Scalar),
    /// Two f32 into one `b32` of two halves of a type (f16 or bf16).
    Pack2(Scalar),
    /// The Hopper helpers: transaction barriers, the copy engine's 2-D tensor load, fences,
    /// warpgroup MMA synchronisation and descriptors, register reallocation.
    Hopper,
    /// One warpgroup MMA shape: `m64nNk16` with `N = 2·acc`, f32 accumulation.
    Wgmma {
        /// The input element type (f16 or bf16).
        elem: Scalar,
        /// The accumulator's f32 per thread (`N / 2`).
        acc: u32,
        /// B read N-major (`imm-trans-b` = 1).
        trans_b: bool,
        /// A from registers (a `kiln_frag_a`) rather than a descriptor.
        registers: bool,
    },
}

/// The CUDA name of a fragment struct.
pub fn frag_type(kind: FragKind) -> &'static str {
    match kind {
        FragKind::A => "kiln_frag_a",
        FragKind::B => "kiln_frag_b",
        FragKind::C => "kiln_frag_c",
    }
}

/// The CUDA name of a vector struct.
pub fn vector_type(elem: Scalar) -> String {
    format!("kiln_v16_{}", elem.rust_name())
}

const HALF: &str = r#"// HNAME storage type; arithmetic goes through float (round to nearest even on the way back).
struct __align__(2) kiln_f16 { unsigned short bits; };
__device__ __forceinline__ float kiln_to_float(kiln_f16 h) { TO_FLOAT }
__device__ __forceinline__ kiln_f16 kiln_f16_from(float f) { kiln_f16 h; asm("cvt.rn.HNAME.f32 %0, %1;" : "=h"(h.bits) : "f"(f)); return h; }
__device__ __forceinline__ kiln_f16 operator+(kiln_f16 a, kiln_f16 b) { return kiln_f16_from(kiln_to_float(a) + kiln_to_float(b)); }
__device__ __forceinline__ kiln_f16 operator-(kiln_f16 a, kiln_f16 b) { return kiln_f16_from(kiln_to_float(a) - kiln_to_float(b)); }
__device__ __forceinline__ kiln_f16 operator*(kiln_f16 a, kiln_f16 b) { return kiln_f16_from(kiln_to_float(a) * kiln_to_float(b)); }
__device__ __forceinline__ kiln_f16 operator/(kiln_f16 a, kiln_f16 b) { return kiln_f16_from(kiln_to_float(a) / kiln_to_float(b)); }
__device__ __forceinline__ kiln_f16& operator+=(kiln_f16& a, kiln_f16 b) { a = a + b; return a; }
__device__ __forceinline__ kiln_f16& operator-=(kiln_f16& a, kiln_f16 b) { a = a - b; return a; }
__device__ __forceinline__ kiln_f16& operator*=(kiln_f16& a, kiln_f16 b) { a = a * b; return a; }
__device__ __forceinline__ kiln_f16& operator/=(kiln_f16& a, kiln_f16 b) { a = a / b; return a; }
__device__ __forceinline__ kiln_f16 operator-(kiln_f16 a) { kiln_f16 r; r.bits = a.bits ^ 0x8000u; return r; }
__device__ __forceinline__ bool operator==(kiln_f16 a, kiln_f16 b) { return kiln_to_float(a) == kiln_to_float(b); }
__device__ __forceinline__ bool operator!=(kiln_f16 a, kiln_f16 b) { return kiln_to_float(a) != kiln_to_float(b); }
__device__ __forceinline__ bool operator<(kiln_f16 a, kiln_f16 b) { return kiln_to_float(a) < kiln_to_float(b); }
__device__ __forceinline__ bool operator<=(kiln_f16 a, kiln_f16 b) { return kiln_to_float(a) <= kiln_to_float(b); }
__device__ __forceinline__ bool operator>(kiln_f16 a, kiln_f16 b) { return kiln_to_float(a) > kiln_to_float(b); }
__device__ __forceinline__ bool operator>=(kiln_f16 a, kiln_f16 b) { return kiln_to_float(a) >= kiln_to_float(b); }
__device__ __forceinline__ kiln_f16 kiln_shfl_sync(unsigned int m, kiln_f16 v, int l) { kiln_f16 r; r.bits = (unsigned short)__shfl_sync(m, (unsigned int)v.bits, l); return r; }
__device__ __forceinline__ kiln_f16 kiln_shfl_xor_sync(unsigned int m, kiln_f16 v, int l) { kiln_f16 r; r.bits = (unsigned short)__shfl_xor_sync(m, (unsigned int)v.bits, l); return r; }
__device__ __forceinline__ kiln_f16 kiln_shfl_down_sync(unsigned int m, kiln_f16 v, unsigned int d) { kiln_f16 r; r.bits = (unsigned short)__shfl_down_sync(m, (unsigned int)v.bits, d); return r; }
__device__ __forceinline__ kiln_f16 kiln_shfl_up_sync(unsigned int m, kiln_f16 v, unsigned int d) { kiln_f16 r; r.bits = (unsigned short)__shfl_up_sync(m, (unsigned int)v.bits, d); return r; }
"#;

const LANE_WARP: &str = r#"__device__ __forceinline__ unsigned int kiln_lane_id() { unsigned int l; asm("mov.u32 %0, %%laneid;" : "=r"(l)); return l; }
__device__ __forceinline__ unsigned int kiln_warp_id() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) / 32u; }
"#;

const MIN_MAX: &str = r#"template <typename T> __device__ __forceinline__ T kiln_min(T a, T b) { return b < a ? b : a; }
template <typename T> __device__ __forceinline__ T kiln_max(T a, T b) { return a < b ? b : a; }
template <typename T> __device__ __forceinline__ T kiln_abs(T a) { return a < (T)0 ? (T)(-a) : a; }
template <typename T> __device__ __forceinline__ T kiln_div_ceil(T a, T b) { return a / b + (T)(a % b != (T)0); }
"#;

const CTZ: &str = r#"__device__ __forceinline__ unsigned int kiln_ctz32(unsigned int x) { return x == 0u ? 32u : (unsigned int)(__ffs((int)x) - 1); }
__device__ __forceinline__ unsigned int kiln_ctz64(unsigned long long x) { return x == 0ull ? 64u : (unsigned int)(__ffsll((long long)x) - 1); }
"#;

const IS_NAN: &str = r#"__device__ __forceinline__ bool kiln_isnan(float x) { return x != x; }
__device__ __forceinline__ bool kiln_isnan(double x) { return x != x; }
"#;

const FLOAT_TO_INT: &str = r#"// Rust's `as` from float to integer: saturating at the type's bounds, NaN -> 0.
template <typename I, typename F> __device__ __forceinline__ I kiln_float_to_int(F x, I lo, I hi) { return x != x ? (I)0 : x <= (F)lo ? lo : x >= (F)hi ? hi : (I)x; }
"#;

const SMEM_ADDR: &str = r#"// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned int kiln_smem_addr(const void* p) {
    unsigned int s;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(p));
    return s;
}
"#;

const SHIFT: &str = r#"// Shifts by the type's width or more: 0, or the sign for a signed right shift (as PTX).
template <typename T> __device__ __forceinline__ T kiln_shl(T a, unsigned int b) { return b >= sizeof(T) * 8u ? (T)0 : (T)(a << b); }
template <typename T> __device__ __forceinline__ T kiln_shr(T a, unsigned int b) { return b >= sizeof(T) * 8u ? (a < (T)0 ? (T)-1 : (T)0) : (T)(a >> b); }
"#;

const CP_ASYNC: &str = r#"// Asynchronous 16-byte global -> shared copies (sm_80+); complete at a wait, visible to the block after a barrier.
__device__ __forceinline__ void kiln_cp_async16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(kiln_smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void kiln_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void kiln_cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
__device__ __forceinline__ void kiln_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
"#;

const DYN_SHARED: &str = "extern __shared__ __align__(16) unsigned char kiln_dyn_smem[];\n";

/// With the Hopper helpers: 128-byte-swizzled tiles need 1024-byte alignment.
const DYN_SHARED_1024: &str = "extern __shared__ __align__(1024) unsigned char kiln_dyn_smem[];\n";

const HOPPER: &str = r#"// Hopper (sm_90): transaction barriers (mbarrier), the copy engine (TMA), fences.
__device__ __forceinline__ void kiln_mbarrier_init(unsigned long long* b, unsigned int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(kiln_smem_addr(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void kiln_mbarrier_arrive(unsigned long long* b) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(kiln_smem_addr(b)) : "memory");
}
__device__ __forceinline__ void kiln_mbarrier_expect_tx(unsigned long long* b, unsigned int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(kiln_smem_addr(b)), "r"(bytes) : "memory");
}
// Spins until the phase of parity `parity` has completed.
__device__ __forceinline__ void kiln_mbarrier_wait(unsigned long long* b, unsigned int parity) {
    asm volatile("{\n .reg .pred done;\n KILN_WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n @!done bra KILN_WAIT;\n}" :: "r"(kiln_smem_addr(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void kiln_fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void kiln_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// The box at column x, row y of a 2-D tensor into shared memory; completes its bytes on `bar`.
__device__ __forceinline__ void kiln_tma_load_2d(void* dst, const unsigned long long* map, unsigned long long* bar, unsigned int x, unsigned int y) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];"
        :: "r"(kiln_smem_addr(dst)), "l"(map), "r"(kiln_smem_addr(bar)), "r"((int)x), "r"((int)y) : "memory");
}
// Warpgroup MMA (sm_90a): ordering, groups, and the descriptor of a 128-byte-swizzled shared tile.
__device__ __forceinline__ void kiln_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void kiln_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Waits until at most N groups are in flight; the empty asm on each accumulator register keeps
// the compiler from reading them above the wait.
template <int N, int R> __device__ __forceinline__ void kiln_wgmma_wait(float* d) {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory");
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
__device__ __forceinline__ unsigned long long kiln_wgmma_desc(const void* p, unsigned int lbo, unsigned int sbo) {
    unsigned long long a = kiln_smem_addr(p);
    return ((a & 0x3FFFFull) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3FFFu) << 16)
        | ((unsigned long long)((sbo >> 4) & 0x3FFFu) << 32) | (1ull << 62);
}
template <int N> __device__ __forceinline__ void kiln_setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" :: "n"(N)); }
template <int N> __device__ __forceinline__ void kiln_setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" :: "n"(N)); }
"#;

/// The template declarations every `wgmma` shape specialises (A from shared memory, A from
/// registers).
const WGMMA_DECL: &str = "template <int R, bool TB> __device__ void kiln_wgmma_HNAME(float* d, unsigned long long a, unsigned long long b);\n";
const WGMMA_RS_DECL: &str = "template <int R, bool TB> __device__ void kiln_wgmma_rs_HNAME(float* d, kiln_frag_a a, unsigned long long b);\n";

/// `kiln_wgmma[_rs]_<elem><acc, trans_b>`: `d += A·B` for `m64n{2·acc}k16`, the accumulator
/// in `acc` registers per thread, A from a descriptor or (`registers`) from a fragment.
fn wgmma_section(elem: Scalar, acc: u32, trans_b: bool, registers: bool) -> String {
    let name = elem.rust_name();
    let n = 2 * acc;
    let outs: Vec<String> = (0..acc).map(|i| format!("%{i}")).collect();
    let regs: Vec<String> = (0..acc).map(|i| format!("\"+f\"(d[{i}])")).collect();
    let tb = u8::from(trans_b);
    let (rs, a_ty, a_op, a_in, imm) = match registers {
        true => (
            "_rs",
            "kiln_frag_a",
            format!("{{%{}, %{}, %{}, %{}}}", acc, acc + 1, acc + 2, acc + 3),
            "\"r\"(a.x[0]), \"r\"(a.x[1]), \"r\"(a.x[2]), \"r\"(a.x[3])".to_string(),
            format!("%{}, p, 1, 1, {tb}", acc + 4),
        ),
        false => (
            "",
            "unsigned long long",
            format!("%{acc}"),
            "\"l\"(a)".to_string(),
            format!("%{}, p, 1, 1, 0, {tb}", acc + 1),
        ),
    };
    format!(
        "template <> __device__ __forceinline__ void kiln_wgmma{rs}_{name}<{acc}, {trans_b}>(float* d, {a_ty} a, unsigned long long b) {{\n    \
         asm volatile(\"{{\\n .reg .pred p;\\n setp.ne.b32 p, 1, 0;\\n wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{name}.{name} {{{}}}, {a_op}, {imm};\\n}}\"\n        \
         : {}\n        : {a_in}, \"l\"(b) : \"memory\");\n}}\n",
        outs.join(", "),
        regs.join(", ")
    )
}

const FRAG: &str = r#"// One lane's registers of the mma.sync m16n8k16 operands: A 16x16 (4 x b32 of two halves), B 16x8 (2 x b32), C/D 16x8 (4 x f32).
struct kiln_frag_a { unsigned int x[4]; };
struct kiln_frag_b { unsigned int x[2]; };
struct kiln_frag_c { float x[4]; };
"#;

const MMA: &str = r#"// D = A * B + C on tensor cores: mma.sync m16n8k16, HNAME inputs, f32 accumulation (sm_80+).
__device__ __forceinline__ kiln_frag_c kiln_mma_HNAME(kiln_frag_a a, kiln_frag_b b, kiln_frag_c c) {
    kiln_frag_c d;
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.HNAME.HNAME.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3])
        : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]),
          "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]));
    return d;
}
"#;

const PACK2: &str = r#"// Two floats rounded to nearest even into one b32 of two HNAME: `lo` in bits 0-15, `hi` in bits 16-31.
__device__ __forceinline__ unsigned int kiln_pack2_HNAME(float lo, float hi) { unsigned int r; asm("cvt.rn.HNAMEx2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r; }
"#;

/// One `ldmatrix` helper: `num` 8×8 b16 matrices from shared memory, one row address per
/// lane (lanes 8i..8i+7 address the rows of matrix i); each lane receives one `b32` per matrix.
fn ldmatrix_section(num: u8, trans: bool) -> String {
    let (ret, regs): (&str, Vec<String>) = match num {
        1 => ("unsigned int", vec!["r".into()]),
        2 => ("kiln_frag_b", (0..2).map(|i| format!("r.x[{i}]")).collect()),
        _ => ("kiln_frag_a", (0..4).map(|i| format!("r.x[{i}]")).collect()),
    };
    let suffix = if trans { "_trans" } else { "" };
    let ptx_trans = if trans { ".trans" } else { "" };
    let outs: Vec<String> = (0..regs.len()).map(|i| format!("%{i}")).collect();
    let constraints: Vec<String> = regs.iter().map(|r| format!("\"=r\"({r})")).collect();
    format!(
        "__device__ __forceinline__ {ret} kiln_ldmatrix_x{num}{suffix}(const void* p) {{\n    \
         {ret} r;\n    \
         asm volatile(\"ldmatrix.sync.aligned.m8n8.x{num}{ptx_trans}.shared.b16 {{{}}}, [%{}];\" : {} : \"r\"(kiln_smem_addr(p)) : \"memory\");\n    \
         return r;\n}}\n",
        outs.join(", "),
        regs.len(),
        constraints.join(", ")
    )
}

/// The storage type, conversions, operators and shuffles of one 16-bit float type.
fn half_section(name: &str) -> String {
    let to_float = if name == "f16" {
        r#"float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits)); return f;"#
    } else {
        "return __uint_as_float(((unsigned int)h.bits) << 16);"
    };
    HALF.replace("TO_FLOAT", to_float)
        .replace("HNAME", name)
        .replace("kiln_f16", &format!("kiln_{name}"))
}

fn vector_section(s: Scalar, c_type: &str) -> String {
    let lanes = 16 / s.size_bytes().expect("concrete");
    let name = vector_type(s);
    format!(
        "struct __align__(16) {name} {{ {c_type} lane[{lanes}]; }};\n\
         __device__ __forceinline__ {name} {name}_load(const {c_type}* p) {{ return *reinterpret_cast<const {name}*>(p); }}\n\
         __device__ __forceinline__ void {name}_store({c_type}* p, {name} v) {{ *reinterpret_cast<{name}*>(p) = v; }}\n"
    )
}

/// The prelude text for the sections in `used`, in a fixed order.
pub fn prelude(used: &BTreeSet<Section>, c_type: &dyn Fn(Scalar) -> String) -> String {
    let mut out = String::new();
    for section in used {
        match section {
            Section::Half => out.push_str(&half_section("f16")),
            Section::Bf16 => out.push_str(&half_section("bf16")),
            Section::LaneWarp => out.push_str(LANE_WARP),
            Section::MinMax => out.push_str(MIN_MAX),
            Section::Ctz => out.push_str(CTZ),
            Section::IsNan => out.push_str(IS_NAN),
            Section::FloatToInt => out.push_str(FLOAT_TO_INT),
            Section::Shift => out.push_str(SHIFT),
            Section::SmemAddr => out.push_str(SMEM_ADDR),
            Section::CpAsync => out.push_str(CP_ASYNC),
            Section::DynShared if used.contains(&Section::Hopper) => out.push_str(DYN_SHARED_1024),
            Section::DynShared => out.push_str(DYN_SHARED),
            Section::Vector(e) => out.push_str(&vector_section(*e, &c_type(*e))),
            Section::Frag => out.push_str(FRAG),
            Section::Ldmatrix { num, trans } => out.push_str(&ldmatrix_section(*num, *trans)),
            Section::Mma(e) => out.push_str(&MMA.replace("HNAME", &e.rust_name())),
            Section::Pack2(e) => out.push_str(&PACK2.replace("HNAME", &e.rust_name())),
            Section::Hopper => out.push_str(HOPPER),
            Section::Wgmma {
                elem,
                acc,
                trans_b,
                registers,
            } => {
                let first = !used.iter().any(|u| {
                    matches!(u, Section::Wgmma { elem: e, registers: r, .. } if e == elem && r == registers)
                        && u < section
                });
                if first {
                    let decl = if *registers {
                        WGMMA_RS_DECL
                    } else {
                        WGMMA_DECL
                    };
                    out.push_str(&decl.replace("HNAME", &elem.rust_name()));
                }
                out.push_str(&wgmma_section(*elem, *acc, *trans_b, *registers));
            }
        }
    }
    out
}
