//! The Hopper grouped GEMM (sm_90a): every expert's `y = act(a·W_g)` in one persistent launch
//! on warpgroup MMA, fed by the copy engine — the shape of [`crate::gemm::hopper`] (a producer
//! warpgroup, two consumers, a ring of 48 KiB stages under transaction barriers) with the
//! tiles of C walked over the experts' variable row counts.
//!
//! Why: the `mma.sync` grouped GEMM ([`super::kernels::grouped_gemm`]) ran at 0.39–0.84 of a
//! cuBLAS loop per expert and 0.24–0.27 of one cuBLAS GEMM of the same work on an H200; the
//! experts are the layer's time. The weights stay in their `[groups, k, n]` layout (B
//! "row-major", MN-major for `wgmma`), so the same uploaded weights serve both paths. The rows
//! of `a` must already be in expert order: the copy engine cannot gather rows, so the layer
//! permutes them first ([`crate::adacluster::attention::permute_rows`]).

use std::sync::Arc;

use kiln::prelude::*;
use kiln::tensor_map::TensorMapCache;
use kiln::{Device, DeviceBuffer, Kernel, RuntimeError};
use kiln_dsl::{device, kernel};

use crate::gemm::hopper::{dyn_shared_bytes, BLOCK_K, BLOCK_M, BLOCK_N, THREADS};

/// Stages of the ring (4 × 48 KiB: the deepest that fits).
pub const STAGES: u32 = 4;

/// `y[r, :] = act(a[r, :] · w[g])` for every row `r` of group `g` (rows `start[g] ..
/// start[g + 1]`, pieces of 128 rows counted by the prefix `blocks`, as the expert sort
/// leaves them): `a` `[rows, k]`, `w` `[groups, k, n]`, `y` `[rows, n]`, act SiLU when `SILU`.
/// `a_map` is `a`'s tensor map (boxes `128 × 64`), `w_map` `w`'s as a `[groups·k, n]` matrix
/// (boxes `64 × 64`), both 128-byte swizzled ([`WgmmaGrouped`] builds them); `k` must be a
/// multiple of 64 (a box must not run into the next expert's weights).
///
/// Tiles (a 128-row piece × 256 columns) go piece by piece; persistent blocks take every
/// `grid`-th. Warpgroup 0's first thread loads each stage: A's box and B's four boxes of 64
/// columns. Warpgroups 1 and 2 each multiply 64 rows (`m64n256k16`, B transposed), release a
/// stage once its MMAs retire and store their rows of the group, rounded to `T`. Rows of the
/// next group that share a piece are computed and not stored; rows past `a` and columns
/// past `n` are zero-filled by the copy engine and masked on store (`n` a multiple of 8:
/// every lane stores 8 consecutive columns as one 16-byte vector).
#[kernel(
    threads = 384,
    example(T = bf16, STAGES = 4, SILU = true),
    example(T = f16, STAGES = 2, SILU = false)
)]
pub fn grouped_gemm_wgmma<T: Float, const STAGES: u32, const SILU: bool>(
    a: &[T],
    w: &[T],
    a_map: &[u64],
    w_map: &[u64],
    start: &[u32],
    blocks: &[u32],
    y: &mut [T],
    groups: u32,
    k: u32,
    n: u32,
) {
    let ring = dyn_shared::<T>();
    let full = shared::<[u64; STAGES]>();
    let empty = shared::<[u64; STAGES]>();
    let t = thread_idx().x;
    let wg = t / 128;
    let tiles_n = n.div_ceil(256);
    let tiles = blocks[groups] * tiles_n;
    let ktiles = k / 64;
    if t == 0 {
        for s in 0..STAGES {
            mbarrier_init(&mut full[s], 1);
            mbarrier_init(&mut empty[s], 2);
        }
        fence_barrier_init();
    }
    sync_threads();
    if wg == 0 {
        setmaxnreg_dec::<40>();
        if t == 0 {
            let mut it = 0u32;
            let mut tile = block_idx().x;
            while tile < tiles {
                let piece = tile / tiles_n;
                let g: u32 = group_of(piece, blocks, groups);
                let m0 = start[g] + (piece - blocks[g]) * 128;
                let n0 = tile % tiles_n * 256;
                for kt in 0..ktiles {
                    let s = it % STAGES;
                    if it >= STAGES {
                        mbarrier_wait(&mut empty[s], (it / STAGES + 1) % 2);
                    }
                    mbarrier_expect_tx(&mut full[s], 49152);
                    let base = s * 24576;
                    tma_load_2d(&mut ring[base], &a_map[0], a, &mut full[s], kt * 64, m0);
                    for i in 0..4u32 {
                        let at = base + 8192 + i * 4096;
                        let wy = g * k + kt * 64;
                        tma_load_2d(&mut ring[at], &w_map[0], w, &mut full[s], n0 + i * 64, wy);
                    }
                    it += 1;
                }
                tile += grid_dim().x;
            }
        }
    } else {
        setmaxnreg_inc::<232>();
        let mut acc = [0.0f32; 128];
        // a vector of 8 `T` for the stores (its loaded values are never used)
        let mut out = y.vload(0);
        let rows = (wg - 1) * 4096;
        let warp = t % 128 / 32;
        let l = t % 32;
        let mut it = 0u32;
        let mut tile = block_idx().x;
        while tile < tiles {
            let piece = tile / tiles_n;
            let g: u32 = group_of(piece, blocks, groups);
            let m0 = start[g] + (piece - blocks[g]) * 128;
            let end = start[g + 1];
            let n0 = tile % tiles_n * 256;
            for i in 0..128u32 {
                acc[i] = 0.0;
            }
            for kt in 0..ktiles {
                let s = it % STAGES;
                mbarrier_wait(&mut full[s], (it / STAGES) % 2);
                let base = s * 24576;
                wgmma_fence();
                for kk in 0..4u32 {
                    let da = wgmma_desc(&ring[base + rows + kk * 16], 16, 1024);
                    // 16 rows of k of the four 64-column boxes: 8192 bytes between boxes
                    let db = wgmma_desc(&ring[base + 8192 + kk * 1024], 8192, 1024);
                    wgmma_tb::<T>(&mut acc, da, db);
                }
                wgmma_commit();
                wgmma_wait::<1>(&mut acc);
                if kt > 0 && t % 128 == 0 {
                    mbarrier_arrive(&mut empty[(it + STAGES - 1) % STAGES]);
                }
                it += 1;
            }
            wgmma_wait::<0>(&mut acc);
            if t % 128 == 0 {
                mbarrier_arrive(&mut empty[(it + STAGES - 1) % STAGES]);
            }
            // two rounds of swaps in each quad of lanes leave every lane with 8 consecutive
            // columns of one row, stored as one 16-byte vector: after the first (lanes l,
            // l ^ 1) even lanes hold row r, odd lanes row r + 8, four columns of a block each;
            // after the second (lanes l, l ^ 2) a lane holds a whole block of 8 columns
            let odd = l % 2;
            let half = l % 4 / 2;
            let row = m0 + (wg - 1) * 64 + warp * 16 + l / 4 + odd * 8;
            for jp in 0..16u32 {
                let mut q = [0.0f32; 8];
                for b in 0..2u32 {
                    let j = jp * 2 + b;
                    let mut send0 = acc[j * 4];
                    let mut send1 = acc[j * 4 + 1];
                    if odd == 0 {
                        send0 = acc[j * 4 + 2];
                        send1 = acc[j * 4 + 3];
                    }
                    let got0 = shfl_xor_sync(0xffff_ffff, send0, 1);
                    let got1 = shfl_xor_sync(0xffff_ffff, send1, 1);
                    if odd == 0 {
                        q[b * 4] = acc[j * 4];
                        q[b * 4 + 1] = acc[j * 4 + 1];
                        q[b * 4 + 2] = got0;
                        q[b * 4 + 3] = got1;
                    } else {
                        q[b * 4] = got0;
                        q[b * 4 + 1] = got1;
                        q[b * 4 + 2] = acc[j * 4 + 2];
                        q[b * 4 + 3] = acc[j * 4 + 3];
                    }
                }
                // lanes of half 0 hold columns 0-3 of both blocks and keep the first block,
                // lanes of half 1 columns 4-7 and keep the second
                for e in 0..4u32 {
                    let mut send = q[4 + e];
                    if half == 1 {
                        send = q[e];
                    }
                    let got = shfl_xor_sync(0xffff_ffff, send, 2);
                    let mut lo = q[e];
                    let mut hi = got;
                    if half == 1 {
                        lo = got;
                        hi = q[4 + e];
                    }
                    if SILU {
                        lo = lo / (1.0f32 + (-lo).exp());
                        hi = hi / (1.0f32 + (-hi).exp());
                    }
                    out[e] = lo as T;
                    out[e + 4] = hi as T;
                }
                let col = n0 + (jp * 2 + half) * 8;
                if row < end && col < n {
                    y.vstore(row * n + col, out);
                }
            }
            tile += grid_dim().x;
        }
    }
}

/// The group of 128-row piece `piece`: the last `g` with `blocks[g] <= piece` (binary search
/// of the prefix of pieces; empty groups are skipped).
#[device]
pub fn group_of(piece: u32, blocks: &[u32], groups: u32) -> u32 {
    let mut lo = 0u32;
    let mut hi = groups;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if blocks[mid] <= piece {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Why [`WgmmaGrouped`] refused a call.
fn refuse(reason: String) -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "wgmma grouped gemm",
        reason,
    }
}

/// The Hopper grouped GEMM for one element type and activation: the kernel compiled once and
/// the tensor maps of the buffers it has seen.
pub struct WgmmaGrouped {
    device: Device,
    kernel: Arc<Kernel>,
    maps: TensorMapCache,
}

impl WgmmaGrouped {
    /// Compiles [`grouped_gemm_wgmma`] for `dtype` (bf16 or f16), SiLU on or off, on an
    /// sm_90 GPU or the emulator; other architectures are refused with the reason.
    pub fn new(device: &Device, dtype: Dtype, silu: bool) -> Result<WgmmaGrouped, RuntimeError> {
        let kernel = grouped_gemm_wgmma::spec()
            .t(dtype)
            .stages(STAGES)
            .silu(silu)
            .build(device)?;
        Ok(WgmmaGrouped {
            device: device.clone(),
            kernel: Arc::new(kernel),
            maps: TensorMapCache::default(),
        })
    }

    /// Whether the Hopper path takes a projection `k → n`: `k` a multiple of 64 (boxes stay
    /// inside one expert's weights) and `n` of 8 (16-byte rows for the copy engine).
    pub fn takes(k: u32, n: u32) -> bool {
        k > 0 && n > 0 && k.is_multiple_of(BLOCK_K) && n.is_multiple_of(8)
    }

    /// Frees the cached tensor maps (see [`TensorMapCache`]).
    pub fn forget_maps(&self) {
        self.maps.clear();
    }

    /// `y = act(a·w_g)` per group (see [`grouped_gemm_wgmma`]): `a` `[rows, k]` in group
    /// order, `w` `[groups, k, n]`, `y` `[rows, n]`, with `start`/`blocks` the groups' first
    /// rows and prefix of 128-row pieces (`groups + 1` each, on the device; not read back,
    /// so their contents are the caller's promise) and `pieces` an estimate of their total
    /// `blocks[groups]`: it only sizes the grid (at most one block per multiprocessor, the
    /// kernel walks the true count), so any positive value is correct and a low one slow.
    #[allow(clippy::too_many_arguments)]
    pub fn run<E: kiln::Element>(
        &self,
        a: &DeviceBuffer<E>,
        w: &DeviceBuffer<E>,
        (start, blocks, groups, pieces): (&DeviceBuffer<u32>, &DeviceBuffer<u32>, u32, u32),
        y: &mut DeviceBuffer<E>,
        (k, n): (u32, u32),
    ) -> Result<(), RuntimeError> {
        if !WgmmaGrouped::takes(k, n) || groups == 0 {
            return Err(refuse(format!(
                "{groups} groups of {k} → {n}: k must be a positive multiple of 64, n of 8, groups positive"
            )));
        }
        let rows = a.len() / k as usize;
        for (name, got, need) in [
            ("a", a.len(), rows as u64 * k as u64),
            ("w", w.len(), groups as u64 * k as u64 * n as u64),
            ("y", y.len(), rows as u64 * n as u64),
            ("start", start.len(), groups as u64 + 1),
            ("blocks", blocks.len(), groups as u64 + 1),
        ] {
            if got as u64 != need || got == 0 {
                return Err(refuse(format!(
                    "`{name}` holds {got} elements, {groups} groups of {k} → {n} over {rows} rows need {need}"
                )));
            }
        }
        if y.len() > u32::MAX as usize {
            return Err(refuse(format!(
                "y holds {} elements, past the kernel's 32-bit indexing",
                y.len()
            )));
        }
        let a_map = self
            .maps
            .swizzled_rows(&self.device, a, (rows as u64, k as u64), BLOCK_M)?;
        let w_map =
            self.maps
                .swizzled_rows(&self.device, w, (groups as u64 * k as u64, n as u64), 64)?;
        let tiles = pieces as u64 * n.div_ceil(BLOCK_N) as u64;
        let sms = self.device.multiprocessors().max(1) as u64;
        let config = kiln::LaunchConfig {
            grid: (tiles.clamp(1, sms) as u32, 1, 1),
            block: (THREADS, 1, 1),
            dyn_shared_bytes: dyn_shared_bytes(STAGES),
        };
        grouped_gemm_wgmma::launch(
            &self.kernel,
            &config,
            a,
            w,
            &*a_map,
            &*w_map,
            start,
            blocks,
            y,
            groups,
            k,
            n,
        )
    }
}
