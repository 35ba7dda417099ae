//! The CUDA prelude: the few helpers generated code needs that NVRTC does not provide
//! without headers (f16/bf16 storage types and conversions through inline PTX, async
//! copies, vector types, bit helpers). Only the sections a program uses are emitted.

use std::collections::BTreeSet;

use crate::types::Scalar;

/// A section of the prelude, emitted when the program needs it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Section {
    Half,
    Bf16,
    LaneWarp,
    MinMax,
    Ctz,
    IsNan,
    FloatToInt,
    CpAsync,
    DynShared,
    /// The 16-byte vector struct of an element type.
    Vector(Scalar),
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

const FLOAT_TO_INT: &str = r#"// Rust's `as` from float to integer: saturating, NaN -> 0.
template <typename I, typename F> __device__ __forceinline__ I kiln_float_to_int(F x) { return x != x ? (I)0 : (I)x; }
"#;

const CP_ASYNC: &str = r#"// Asynchronous 16-byte global -> shared copies (sm_80+); complete at a wait, visible to the block after a barrier.
__device__ __forceinline__ void kiln_cp_async16(void* smem, const void* gmem) {
    unsigned int s;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void kiln_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void kiln_cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
__device__ __forceinline__ void kiln_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
"#;

const DYN_SHARED: &str = "extern __shared__ __align__(16) unsigned char kiln_dyn_smem[];\n";

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
            Section::CpAsync => out.push_str(CP_ASYNC),
            Section::DynShared => out.push_str(DYN_SHARED),
            Section::Vector(e) => out.push_str(&vector_section(*e, &c_type(*e))),
        }
    }
    out
}
