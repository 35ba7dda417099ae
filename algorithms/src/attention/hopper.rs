//! Flash attention forward on Hopper (sm_90a): warpgroup MMA for both products, the copy
//! engine for Q, K and V, one producer warpgroup and two consumers of 64 query rows each.
//!
//! Why: the tile-layer kernel ([`super::prefill`]) is bound by `mma.sync` and by 48 KiB of
//! static shared memory (0.63 of PyTorch's SDPA at S ≥ 8K on an H200). Here `S = Q·Kᵀ` reads
//! both operands from shared memory, the probabilities stay in registers as the A operand of
//! `O += P·V` (`wgmma_rs`, the accumulator layout of S is the A layout of P), and K/V tiles of
//! 128 keys arrive in a two-stage ring of 64 KiB stages (D = 128).

use std::sync::Arc;

use super::prefill::PrefillCall;
use crate::tuning::Variants;
use kiln::prelude::*;
use kiln::tensor_map::TensorMapCache;
use kiln::{Device, DeviceBuffer, Kernel, RuntimeError};
use kiln_dsl::kernel;

/// Threads per block: one producer and two consumer warpgroups.
pub const THREADS: u32 = 384;
/// Queries per block.
pub const BLOCK_Q: u32 = 128;
/// Keys per step.
pub const BLOCK_K: u32 = 128;

/// `O = softmax(scale · Q·Kᵀ) · V` and its row log-sum-exp, with the layouts of
/// [`super::prefill::flash_attn_fwd`]: `q`, `o` `[B, H, S_q, D]`, `k`, `v` `[B, H_kv, S_kv, D]`
/// (GQA: query head `h` reads KV head `h / (H / H_kv)`), `lse` `[B, H, S_q]` (natural log);
/// with `CAUSAL`, query `i` sees keys `j ≤ i + S_kv − S_q`. The maps are those of `q`, `k`
/// and `v` viewed as 2-D `[rows, D]` with boxes of 128 rows × 64 columns, 128-byte swizzle.
///
/// Grid `(⌈S_q / 128⌉, H, B)` (query tiles in reverse, so causal blocks with the most keys
/// start first), 384 threads, [`dyn_shared_bytes`] of dynamic shared memory: Q (128 × D) and
/// two stages of K and V (128 × D each), as D/64 boxes of 128 × 64.
#[kernel(
    threads = 384,
    example(T = bf16, D = 128, CAUSAL = false),
    example(T = bf16, D = 128, CAUSAL = true),
    example(T = f16, D = 64, CAUSAL = true)
)]
pub fn flash_attn_wgmma<T: Float, const D: u32, const CAUSAL: bool>(
    q: &[T],
    k: &[T],
    v: &[T],
    q_map: &[u64],
    k_map: &[u64],
    v_map: &[u64],
    o: &mut [T],
    lse: &mut [f32],
    s_q: u32,
    s_kv: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
) {
    let ring = dyn_shared::<T>();
    let qbar = shared::<[u64; 1]>();
    let full = shared::<[u64; 2]>();
    let empty = shared::<[u64; 2]>();
    let t = thread_idx().x;
    let wg = t / 128;
    let q0 = (grid_dim().x - 1 - block_idx().x) * 128;
    let h = block_idx().y;
    let b = block_idx().z;
    let hk = h / (heads / kv_heads);
    let mut tiles = s_kv.div_ceil(128);
    if CAUSAL {
        let last = min(q0 + 128, s_q) - 1;
        tiles = min(tiles, (last + s_kv - s_q) / 128 + 1);
    }
    if t == 0 {
        mbarrier_init(&mut qbar[0], 1);
        for s in 0..2u32 {
            mbarrier_init(&mut full[s], 1);
            mbarrier_init(&mut empty[s], 2);
        }
        fence_barrier_init();
    }
    sync_threads();
    if wg == 0 {
        setmaxnreg_dec::<24>();
        if t == 0 {
            let q_row = (b * heads + h) * s_q + q0;
            mbarrier_expect_tx(&mut qbar[0], 256 * D);
            for bx in 0..D / 64 {
                let at = bx * 8192;
                tma_load_2d(&mut ring[at], &q_map[0], q, &mut qbar[0], bx * 64, q_row);
            }
            let kv_row = (b * kv_heads + hk) * s_kv;
            for it in 0..tiles {
                let s = it % 2;
                if it >= 2 {
                    mbarrier_wait(&mut empty[s], (it / 2 + 1) % 2);
                }
                mbarrier_expect_tx(&mut full[s], 512 * D);
                let base = 128 * D + s * 256 * D;
                let row = kv_row + it * 128;
                for bx in 0..D / 64 {
                    let kat = base + bx * 8192;
                    tma_load_2d(&mut ring[kat], &k_map[0], k, &mut full[s], bx * 64, row);
                    let vat = base + 128 * D + bx * 8192;
                    tma_load_2d(&mut ring[vat], &v_map[0], v, &mut full[s], bx * 64, row);
                }
            }
        }
    } else {
        setmaxnreg_inc::<240>();
        let wq = wg - 1;
        let w = t % 128 / 32;
        let l = t % 32;
        let g = l / 4;
        let t4 = l % 4;
        // this thread's two query rows (in the block tile): fragment rows g and g + 8
        let r0 = wq * 64 + w * 16 + g;
        let c = scale * 1.442_695_f32;
        let mut sacc = [0.0f32; 64];
        let mut oacc = [0.0f32; D / 2];
        let mut p = [frag_a_zero::<T>(); 8];
        let mut m = [f32::NEG_INFINITY; 2];
        let mut sum = [0.0f32; 2];
        mbarrier_wait(&mut qbar[0], 0);
        for it in 0..tiles {
            let s = it % 2;
            mbarrier_wait(&mut full[s], (it / 2) % 2);
            let base = 128 * D + s * 256 * D;
            for i in 0..64u32 {
                sacc[i] = 0.0;
            }
            wgmma_fence();
            for kk in 0..D / 16 {
                let within = kk / 4 * 8192 + kk % 4 * 16;
                let da = wgmma_desc(&ring[wq * 4096 + within], 16, 1024);
                let db = wgmma_desc(&ring[base + within], 16, 1024);
                wgmma::<T>(&mut sacc, da, db);
            }
            wgmma_commit();
            wgmma_wait::<0>(&mut sacc);
            // scale to log2 units; mask keys past the sequence and, if causal, past the diagonal
            let k0 = it * 128;
            let edge = k0 + 128 > s_kv || (CAUSAL && k0 + 128 + s_q > q0 + s_kv);
            for i in 0..64u32 {
                let mut x = sacc[i] * c;
                if edge {
                    let key = k0 + i / 4 * 8 + t4 * 2 + i % 2;
                    let row = q0 + r0 + i % 4 / 2 * 8;
                    if key >= s_kv || (CAUSAL && key + s_q > row + s_kv) {
                        x = f32::NEG_INFINITY;
                    }
                }
                sacc[i] = x;
            }
            for r in 0..2u32 {
                let mut mx = f32::NEG_INFINITY;
                for j in 0..16u32 {
                    mx = mx.max(sacc[j * 4 + r * 2]).max(sacc[j * 4 + r * 2 + 1]);
                }
                mx = mx.max(shfl_xor_sync(0xffff_ffff, mx, 1));
                mx = mx.max(shfl_xor_sync(0xffff_ffff, mx, 2));
                let top = m[r].max(mx);
                // a row that has seen only masked keys keeps a finite reference
                let mut safe = top;
                if top == f32::NEG_INFINITY {
                    safe = 0.0;
                }
                let corr = (m[r] - safe).exp2();
                let mut part = 0.0f32;
                for j in 0..16u32 {
                    for e in 0..2u32 {
                        let i = j * 4 + r * 2 + e;
                        let pv = (sacc[i] - safe).exp2();
                        sacc[i] = pv;
                        part += pv;
                    }
                }
                sum[r] = sum[r] * corr + part;
                m[r] = top;
                for j in 0..D / 8 {
                    oacc[j * 4 + r * 2] *= corr;
                    oacc[j * 4 + r * 2 + 1] *= corr;
                }
            }
            // S's accumulator layout is P's A layout: chunk pairs (2kk, 2kk + 1) form k-step kk
            for kk in 0..8u32 {
                p[kk][0] = pack2::<T>(sacc[kk * 8], sacc[kk * 8 + 1]);
                p[kk][1] = pack2::<T>(sacc[kk * 8 + 2], sacc[kk * 8 + 3]);
                p[kk][2] = pack2::<T>(sacc[kk * 8 + 4], sacc[kk * 8 + 5]);
                p[kk][3] = pack2::<T>(sacc[kk * 8 + 6], sacc[kk * 8 + 7]);
            }
            wgmma_fence();
            for kk in 0..8u32 {
                // V is N-major: 16 key rows of 128 bytes per step, the next 64 columns 16 KiB on
                let db = wgmma_desc(&ring[base + 128 * D + kk * 1024], 16384, 1024);
                wgmma_rs_tb::<T>(&mut oacc, p[kk], db);
            }
            wgmma_commit();
            wgmma_wait::<0>(&mut oacc);
            if t % 128 == 0 {
                mbarrier_arrive(&mut empty[s]);
            }
        }
        let head_row = (b * heads + h) * s_q + q0;
        for r in 0..2u32 {
            let mut total = sum[r];
            total += shfl_xor_sync(0xffff_ffff, total, 1);
            total += shfl_xor_sync(0xffff_ffff, total, 2);
            let row = r0 + r * 8;
            if q0 + row < s_q {
                let at = (head_row + row) as u64 * D as u64;
                for j in 0..D / 8 {
                    let col = (j * 8 + t4 * 2) as u64;
                    o[at + col] = (oacc[j * 4 + r * 2] / total) as T;
                    o[at + col + 1] = (oacc[j * 4 + r * 2 + 1] / total) as T;
                }
                if t4 == 0 {
                    lse[head_row + row] = (m[r] + total.log2()) * 0.693_147_2_f32;
                }
            }
        }
    }
}

/// Dynamic shared memory of [`flash_attn_wgmma`] for head dimension `dim`: Q and two stages of
/// K and V, 2-byte elements.
pub fn dyn_shared_bytes(dim: u32) -> u32 {
    5 * BLOCK_Q * dim * 2
}

fn refuse(reason: String) -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "wgmma attention",
        reason,
    }
}

/// The Hopper prefill for one element type (bf16 or f16): one compiled kernel per (D, causal)
/// and the tensor maps of the buffers it has seen.
pub struct WgmmaPrefill {
    device: Device,
    dtype: Dtype,
    kernels: Variants<(u32, bool)>,
    maps: TensorMapCache,
}

impl WgmmaPrefill {
    /// The prefill for `dtype` on `device` (kernels compile on first use).
    pub fn new(device: &Device, dtype: Dtype) -> WgmmaPrefill {
        WgmmaPrefill {
            device: device.clone(),
            dtype,
            kernels: Variants::default(),
            maps: TensorMapCache::default(),
        }
    }

    /// Whether `device` runs this kernel (sm_90: H100, H200).
    pub fn supported(device: &Device) -> bool {
        device.arch() == kiln::kiln_codegen::Arch::SM90
    }

    fn kernel(&self, dim: u32, causal: bool) -> Result<Arc<Kernel>, RuntimeError> {
        self.kernels.get(&(dim, causal), || {
            flash_attn_wgmma::spec()
                .t(self.dtype)
                .d(dim)
                .causal(causal)
                .build(&self.device)
        })
    }

    /// Frees the cached tensor maps (see [`TensorMapCache`]).
    pub fn forget_maps(&self) {
        self.maps.clear();
    }

    /// Runs one call: `o`, `lse` from `q`, `k`, `v` (layouts of [`flash_attn_wgmma`]).
    /// Refused: D other than 64 or 128, a KV head count that does not divide the heads,
    /// a causal call with fewer keys than queries, empty or mis-sized buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: kiln::Element>(
        &self,
        call: &PrefillCall,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        scale: f32,
    ) -> Result<(), RuntimeError> {
        let c = call;
        if c.dim != 64 && c.dim != 128 {
            return Err(refuse(format!("head dimension {}: 64 or 128", c.dim)));
        }
        if c.batch == 0 || c.heads == 0 || c.kv_heads == 0 || c.s_q == 0 || c.s_kv == 0 {
            return Err(refuse(format!("{c:?}: every size must be positive")));
        }
        if !c.heads.is_multiple_of(c.kv_heads) {
            return Err(refuse(format!(
                "{} query heads cannot share {} KV heads evenly",
                c.heads, c.kv_heads
            )));
        }
        if c.causal && c.s_kv < c.s_q {
            return Err(refuse(format!(
                "causal with {} keys for {} queries: the first queries would see no key",
                c.s_kv, c.s_q
            )));
        }
        let q_rows = c.batch as u64 * c.heads as u64 * c.s_q as u64;
        let kv_rows = c.batch as u64 * c.kv_heads as u64 * c.s_kv as u64;
        let d = c.dim as u64;
        if q_rows * d > u32::MAX as u64 || kv_rows * d > u32::MAX as u64 {
            return Err(refuse(format!(
                "{c:?}: more than 2^32 - 1 elements per tensor"
            )));
        }
        for (name, got, need) in [
            ("q", q.len() as u64, q_rows * d),
            ("k", k.len() as u64, kv_rows * d),
            ("v", v.len() as u64, kv_rows * d),
            ("o", o.len() as u64, q_rows * d),
            ("lse", lse.len() as u64, q_rows),
        ] {
            if got != need {
                return Err(refuse(format!(
                    "`{name}` holds {got} elements, {c:?} needs {need}"
                )));
            }
        }
        let kernel = self.kernel(c.dim, c.causal)?;
        let q_map = self
            .maps
            .swizzled_rows(&self.device, q, (q_rows, c.dim as u64), 128)?;
        let k_map = self
            .maps
            .swizzled_rows(&self.device, k, (kv_rows, c.dim as u64), 128)?;
        let v_map = self
            .maps
            .swizzled_rows(&self.device, v, (kv_rows, c.dim as u64), 128)?;
        let cfg = kiln::LaunchConfig {
            grid: (c.s_q.div_ceil(BLOCK_Q), c.heads, c.batch),
            block: (THREADS, 1, 1),
            dyn_shared_bytes: dyn_shared_bytes(c.dim),
        };
        flash_attn_wgmma::launch(
            &kernel, &cfg, q, k, v, &*q_map, &*k_map, &*v_map, o, lse, c.s_q, c.s_kv, c.heads,
            c.kv_heads, scale,
        )
    }
}
