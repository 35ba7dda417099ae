//! The Hopper GEMM (sm_90a): `C = A·Bᵀ` on warpgroup MMA, fed by the copy engine through a
//! ring of 48 KiB stages guarded by transaction barriers, one producer warpgroup and two
//! consumers, in persistent blocks (one per multiprocessor) that walk the tiles of C.
//!
//! Why this shape: `mma.sync` tops out at ~638 TFLOP/s on an H200 and the tile-layer GEMM at
//! ~190 with 48 KiB of static shared memory; `wgmma` reads both operands straight from shared
//! memory (no `ldmatrix`, no register copies of A and B), TMA moves a whole stage with one
//! instruction per operand, and up to 192 KiB of dynamic shared memory keep 3–4 stages in
//! flight. The producer warpgroup gives its registers to the consumers (`setmaxnreg`), whose
//! 64 × 256 accumulators take 128 registers per thread. Persistence lets the ring run on into
//! the next tile while the consumers store the last one (measured: 0.76 → 0.90 of cuBLAS at
//! 4096³ on an H200).

use std::sync::Arc;

use kiln::prelude::*;
use kiln::tensor_map::TensorMapCache;
use kiln::{Device, DeviceBuffer, Kernel, RuntimeError};
use kiln_dsl::{device, kernel};

/// Threads per block: one producer and two consumer warpgroups.
pub const THREADS: u32 = 384;
/// The block tile: rows of C per block.
pub const BLOCK_M: u32 = 128;
/// The block tile: columns of C per block (one `m64n256k16` per consumer and k-step).
pub const BLOCK_N: u32 = 256;
/// The depth of one stage (k columns).
pub const BLOCK_K: u32 = 64;
/// The ring's stages and the tile-row group of the launch order used by default: the best
/// of the six variants at 4096³ and 8192³ on an H200 (`bench-results/h200-2026-12-04-wgmma-gemm`).
pub const DEFAULT_VARIANT: Variant = Variant {
    stages: 3,
    group: 16,
};

/// A compiled form of [`gemm_wgmma`]: stages in the shared-memory ring (2 to 4) and the rows
/// of tiles per group of the launch order (1: row by row).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Variant {
    /// Stages of 48 KiB in the ring.
    pub stages: u32,
    /// Tile rows per launch-order group.
    pub group: u32,
}
/// Elements of one stage: A `128 × 64` then B `256 × 64`.
pub const STAGE_ELEMS: u32 = (BLOCK_M + BLOCK_N) * BLOCK_K;

/// `c (m × n, f32) = a (m × k) · bᵀ`, `b` stored `n × k` row-major (a linear layer's weight,
/// "B column-major"). `a_map`/`b_map` are the tensor maps of `a` and `b` with boxes of
/// `128 × 64` and `256 × 64` and 128-byte swizzle ([`WgmmaGemm`] builds them). One block per
/// `128 × 256` tile of C, `⌈m / 128⌉·⌈n / 256⌉` blocks in x (ordered in groups of `GROUP` tile
/// rows), 384 threads, `STAGES` × 48 KiB of dynamic shared memory ([`dyn_shared_bytes`]).
///
/// Warpgroup 0 is the producer: one thread waits for a free stage, arms its barrier with the
/// stage's 48 KiB and starts the two box loads. Warpgroups 1 and 2 each own 64 rows of the
/// block tile: they wait for a full stage, issue four `m64n256k16` MMAs over its 64 columns of
/// k, and release the previous stage once its MMAs have retired (one group stays in flight).
/// Rows past `m`, columns past `n` and k past `k` are zero-filled by the copy engine and
/// masked on store.
#[kernel(
    threads = 384,
    example(T = bf16, STAGES = 4, GROUP = 8),
    example(T = f16, STAGES = 3, GROUP = 1)
)]
pub fn gemm_wgmma<T: Float, const STAGES: u32, const GROUP: u32>(
    a: &[T],
    b: &[T],
    a_map: &[u64],
    b_map: &[u64],
    c: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
) {
    let ring = dyn_shared::<T>();
    let full = shared::<[u64; STAGES]>();
    let empty = shared::<[u64; STAGES]>();
    let t = thread_idx().x;
    let wg = t / 128;
    let tiles_n = n.div_ceil(256);
    let tiles_m = m.div_ceil(128);
    let tiles = tiles_m * tiles_n;
    let ktiles = k.div_ceil(64);
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
            // `it` counts stages over all of this block's tiles: the ring runs on across tiles,
            // so the next tile's loads overlap this tile's last MMAs and its stores
            let mut it = 0u32;
            let mut tile = block_idx().x;
            while tile < tiles {
                let tm: u32 = tile_row::<GROUP>(tile, tiles_m, tiles_n);
                let m0 = tm * 128;
                let tn: u32 = tile_col::<GROUP>(tile, tiles_m, tiles_n);
                let n0 = tn * 256;
                for kt in 0..ktiles {
                    let s = it % STAGES;
                    if it >= STAGES {
                        mbarrier_wait(&mut empty[s], (it / STAGES + 1) % 2);
                    }
                    mbarrier_expect_tx(&mut full[s], 49152);
                    let base = s * 24576;
                    tma_load_2d(&mut ring[base], &a_map[0], a, &mut full[s], kt * 64, m0);
                    let b_at = base + 8192;
                    tma_load_2d(&mut ring[b_at], &b_map[0], b, &mut full[s], kt * 64, n0);
                    it += 1;
                }
                tile += grid_dim().x;
            }
        }
    } else {
        setmaxnreg_inc::<232>();
        let mut acc = [0.0f32; 128];
        let mut out = c.vload(0);
        // this consumer's 64 rows of the block tile, at 64 elements (128 bytes) per row
        let rows = (wg - 1) * 4096;
        let w = t % 128 / 32;
        let l = t % 32;
        let odd = l % 2;
        let mut it = 0u32;
        let mut tile = block_idx().x;
        while tile < tiles {
            let tm: u32 = tile_row::<GROUP>(tile, tiles_m, tiles_n);
            let m0 = tm * 128;
            let tn: u32 = tile_col::<GROUP>(tile, tiles_m, tiles_n);
            let n0 = tn * 256;
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
                    let db = wgmma_desc(&ring[base + 8192 + kk * 16], 16, 1024);
                    wgmma::<T>(&mut acc, da, db);
                }
                wgmma_commit();
                // the previous stage's MMAs have retired: hand it back to the producer
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
            // lane pairs swap halves so that each lane stores four consecutive columns: even
            // lanes row r (their own pair, then the odd lane's), odd lanes row r + 8
            let row = m0 + (wg - 1) * 64 + w * 16 + l / 4 + odd * 8;
            for j in 0..32u32 {
                let mut send0 = acc[j * 4];
                let mut send1 = acc[j * 4 + 1];
                if odd == 0 {
                    send0 = acc[j * 4 + 2];
                    send1 = acc[j * 4 + 3];
                }
                let got0 = shfl_xor_sync(0xffff_ffff, send0, 1);
                let got1 = shfl_xor_sync(0xffff_ffff, send1, 1);
                if odd == 0 {
                    out[0] = acc[j * 4];
                    out[1] = acc[j * 4 + 1];
                    out[2] = got0;
                    out[3] = got1;
                } else {
                    out[0] = got0;
                    out[1] = got1;
                    out[2] = acc[j * 4 + 2];
                    out[3] = acc[j * 4 + 3];
                }
                let col = n0 + j * 8 + l % 4 / 2 * 4;
                if row < m && col < n {
                    c.vstore(row * n + col, out);
                }
            }
            tile += grid_dim().x;
        }
    }
}

/// The tile row (of 128 rows of C) of launch-order tile `tile`: tiles go in groups of `GROUP`
/// tile rows, column by column within a group, so the blocks running together share their
/// operands in L2.
#[device]
pub fn tile_row<const GROUP: u32>(tile: u32, tiles_m: u32, tiles_n: u32) -> u32 {
    let per_group = GROUP * tiles_n;
    let first = tile / per_group * GROUP;
    let height = min(tiles_m - first, GROUP);
    first + tile % per_group % height
}

/// The tile column (of 256 columns of C) of launch-order tile `tile` (see [`tile_row`]).
#[device]
pub fn tile_col<const GROUP: u32>(tile: u32, tiles_m: u32, tiles_n: u32) -> u32 {
    let per_group = GROUP * tiles_n;
    let first = tile / per_group * GROUP;
    let height = min(tiles_m - first, GROUP);
    tile % per_group / height
}

/// Dynamic shared memory of [`gemm_wgmma`] with `stages` stages of A and B (bf16/f16).
pub fn dyn_shared_bytes(stages: u32) -> u32 {
    stages * STAGE_ELEMS * 2
}

/// The launch shape of [`gemm_wgmma`] with `stages` stages: one persistent block per
/// multiprocessor (`sms`), or per tile when there are fewer tiles.
pub fn launch_config(m: u32, n: u32, stages: u32, sms: u32) -> kiln::LaunchConfig {
    let tiles = n.div_ceil(BLOCK_N) as u64 * m.div_ceil(BLOCK_M) as u64;
    kiln::LaunchConfig {
        grid: (tiles.min(sms.max(1) as u64) as u32, 1, 1),
        block: (THREADS, 1, 1),
        dyn_shared_bytes: dyn_shared_bytes(stages),
    }
}

/// Why [`WgmmaGemm`] refused a call.
fn refuse(reason: String) -> RuntimeError {
    RuntimeError::InvalidInput {
        what: "wgmma gemm",
        reason,
    }
}

/// The Hopper GEMM for one element type (bf16 or f16): the kernel compiled once, and the
/// tensor maps of the operands it has seen (keyed by buffer address and shape, so a call on
/// the same buffers uploads nothing).
pub struct WgmmaGemm {
    device: Device,
    kernel: Arc<Kernel>,
    variant: Variant,
    maps: TensorMapCache,
}

impl WgmmaGemm {
    /// Compiles [`gemm_wgmma`] for `dtype` on `device` (an sm_90 GPU, or the emulator
    /// specialising for sm_90); other architectures are refused with the reason.
    pub fn new(device: &Device, dtype: Dtype) -> Result<WgmmaGemm, RuntimeError> {
        WgmmaGemm::with_variant(device, dtype, DEFAULT_VARIANT)
    }

    /// [`WgmmaGemm::new`] with another [`Variant`] (what the bench compares).
    pub fn with_variant(
        device: &Device,
        dtype: Dtype,
        variant: Variant,
    ) -> Result<WgmmaGemm, RuntimeError> {
        if !(2..=4).contains(&variant.stages) || variant.group == 0 {
            return Err(refuse(format!(
                "{variant:?}: 2 to 4 stages (48 KiB each) and a group of at least one row"
            )));
        }
        let kernel = gemm_wgmma::spec()
            .t(dtype)
            .stages(variant.stages)
            .group(variant.group)
            .build(device)?;
        Ok(WgmmaGemm {
            device: device.clone(),
            kernel: Arc::new(kernel),
            variant,
            maps: TensorMapCache::default(),
        })
    }

    /// Registers per thread and static shared bytes of the compiled kernel (GPU only).
    pub fn resources(&self) -> Option<(i32, i32)> {
        self.kernel.resources()
    }

    /// Whether `device` runs this kernel (sm_90: H100, H200).
    pub fn supported(device: &Device) -> bool {
        device.arch() == kiln::kiln_codegen::Arch::SM90
    }

    /// Frees the cached tensor maps (see [`TensorMapCache`]).
    pub fn forget_maps(&self) {
        self.maps.clear();
    }

    /// `c (m × n, f32) = a (m × k) · bᵀ` with `b` stored `n × k`; `k` and `n` must be
    /// multiples of 8 (16-byte rows for the copy engine, column pairs on store).
    pub fn run<T: kiln::Element>(
        &self,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        c: &mut DeviceBuffer<f32>,
        m: u32,
        n: u32,
        k: u32,
    ) -> Result<(), RuntimeError> {
        if m == 0 || n == 0 || k == 0 || !k.is_multiple_of(8) || !n.is_multiple_of(8) {
            return Err(refuse(format!(
                "{m}×{n}×{k}: sizes must be positive, n and k multiples of 8"
            )));
        }
        if m as u64 * n as u64 > u32::MAX as u64 {
            return Err(refuse(format!(
                "{m}×{n}: C has more than 2^32 - 1 elements, past the kernels' 32-bit indexing"
            )));
        }
        for (name, got, need) in [
            ("a", a.len(), m as u64 * k as u64),
            ("b", b.len(), n as u64 * k as u64),
            ("c", c.len(), m as u64 * n as u64),
        ] {
            if got as u64 != need {
                return Err(refuse(format!(
                    "`{name}` holds {got} elements, {m}×{n}×{k} needs {need}"
                )));
            }
        }
        let a_map = self
            .maps
            .swizzled_rows(&self.device, a, (m as u64, k as u64), BLOCK_M)?;
        let b_map = self
            .maps
            .swizzled_rows(&self.device, b, (n as u64, k as u64), BLOCK_N)?;
        gemm_wgmma::launch(
            &self.kernel,
            &launch_config(m, n, self.variant.stages, self.device.multiprocessors()),
            a,
            b,
            &*a_map,
            &*b_map,
            c,
            m,
            n,
            k,
        )
    }
}
