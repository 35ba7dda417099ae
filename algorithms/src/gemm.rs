//! Dense GEMM on tensor cores, written with the tile layer: `C = A·B` with A row-major and
//! B row-major or column-major, any M, N, K that are multiples of 16 (tails are zero-filled
//! in shared memory and masked on store).

use std::sync::Arc;

use crate::tile::*;
use crate::tuning::{Choices, Variants};
use kiln::prelude::*;
use kiln::tune::{tune, Entry, Point, Space, Store, TuneKey, TuneOptions};
use kiln::{timing, Device, DeviceBuffer, Kernel, RuntimeError};
use kiln_dsl::{device, kernel};

/// Threads per block (8 warps, 2 × 4, each computing `BM / 2 × BN / 4` of C).
pub const THREADS: u32 = 256;
/// The block tile (rows, columns of C) used when none is tuned: 128 × 128.
pub const DEFAULT_TILE: (u32, u32) = (128, 128);

/// `C = A·B`: `a` is `m × k` row-major; `b` is `k × n` row-major, or with `B_COL` column-major
/// (stored as `n × k` row-major, i.e. `Bᵀ`); `c` is `m × n` row-major f32. `m`, `n` and `k`
/// must be multiples of 16. Each block computes a `BM × BN` tile of C (`BM`, `BN` ∈ {64, 128};
/// the autotuner picks them per shape), 8 warps of `BM / 2 × BN / 4` each. Grid
/// `(⌈n / BN⌉, ⌈m / BM⌉)`, 256 threads.
///
/// K advances 32 at a time through a three-stage `cp_async` pipeline (two tiles in flight
/// while the third is multiplied); tiles are swizzled, so no padding and no bank conflicts.
#[kernel(
    threads = 256,
    example(T = bf16, B_COL = false, BM = 128, BN = 128),
    example(T = bf16, B_COL = true, BM = 128, BN = 128),
    example(T = f16, B_COL = false, BM = 64, BN = 128)
)]
pub fn gemm<T: Float, const B_COL: bool, const BM: u32, const BN: u32>(
    a: &[T],
    b: &[T],
    c: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
) {
    let sa = shared::<[[T; BM * 32]; 3]>();
    let sb = shared::<[[T; BN * 32]; 3]>();
    let t = thread_idx().x;
    let warp = warp_id();
    let m0 = block_idx().y * BM;
    let n0 = block_idx().x * BN;
    let wm = warp / 4 * (BM / 2);
    let wn = warp % 4 * (BN / 4);
    let tiles = k.div_ceil(32);
    let mut acc = [[frag_c_zero(); BN / 32]; BM / 32];
    for st in 0..2u32 {
        if st < tiles {
            load_stage::<T, B_COL, BM, BN>(
                &mut sa[st],
                &mut sb[st],
                a,
                b,
                m0,
                n0,
                st * 32,
                m,
                n,
                k,
                t,
            );
        }
        cp_async_commit();
    }
    for kt in 0..tiles {
        cp_async_wait::<1>();
        sync_threads();
        // the stage loaded next was consumed in the previous step, which every thread has left
        let ahead = kt + 2;
        if ahead < tiles {
            let st = ahead % 3;
            load_stage::<T, B_COL, BM, BN>(
                &mut sa[st],
                &mut sb[st],
                a,
                b,
                m0,
                n0,
                ahead * 32,
                m,
                n,
                k,
                t,
            );
        }
        cp_async_commit();
        let st = kt % 3;
        for kk in 0..2u32 {
            if B_COL {
                mma_block::<T, 32, 32, true>(&mut acc, &sa[st], wm, &sb[st], wn, kk * 16);
            } else {
                mma_block::<T, 32, BN, false>(&mut acc, &sa[st], wm, &sb[st], wn, kk * 16);
            }
        }
    }
    store_block::<{ BM / 32 }, { BN / 32 }>(&acc, c, m0 + wm, n0 + wn, n, m, n);
}

/// Starts the copies of one 32-deep stage: A rows `m0 ..` (BM × 32), and B rows `k0 ..`
/// (32 × BN, row-major B) or B columns `n0 ..` (BN × 32, column-major B).
#[device]
pub fn load_stage<T: Float, const B_COL: bool, const BM: u32, const BN: u32>(
    sa: &mut Shared<[T; BM * 32]>,
    sb: &mut Shared<[T; BN * 32]>,
    a: &[T],
    b: &[T],
    m0: u32,
    n0: u32,
    k0: u32,
    m: u32,
    n: u32,
    k: u32,
    t: u32,
) {
    let a_base = m0 as u64 * k as u64 + k0 as u64;
    load_tile_async::<T, BM, 32, 256>(&mut sa, a, a_base, k as u64, m - m0, k - k0, t);
    if B_COL {
        let b_base = n0 as u64 * k as u64 + k0 as u64;
        load_tile_async::<T, BN, 32, 256>(&mut sb, b, b_base, k as u64, n - n0, k - k0, t);
    } else {
        let b_base = k0 as u64 * n as u64 + n0 as u64;
        load_tile_async::<T, 32, BN, 256>(&mut sb, b, b_base, n as u64, k - k0, n - n0, t);
    }
}

/// The launch shape of [`gemm`] with a `bm × bn` block tile.
pub fn launch_config(m: u32, n: u32, (bm, bn): (u32, u32)) -> kiln::LaunchConfig {
    kiln::LaunchConfig {
        grid: (n.div_ceil(bn), m.div_ceil(bm), 1),
        block: (THREADS, 1, 1),
        dyn_shared_bytes: 0,
    }
}

/// Why a GEMM call was refused.
#[derive(Debug, thiserror::Error)]
pub enum GemmError {
    /// The sizes or buffers do not fit together.
    #[error("gemm: {0}")]
    Shape(String),
    /// Compiling, launching or tuning failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<GemmError> for RuntimeError {
    fn from(e: GemmError) -> RuntimeError {
        match e {
            GemmError::Runtime(r) => r,
            GemmError::Shape(reason) => RuntimeError::InvalidInput {
                what: "gemm",
                reason,
            },
        }
    }
}

/// The tile-layer GEMM for one element type: compiles each (layout, block tile) once, and
/// uses the block tile the autotuner stored for the shape's bucket (else [`DEFAULT_TILE`]).
pub struct Gemm {
    device: Device,
    dtype: Dtype,
    store: Store,
    kernels: Variants<(bool, (u32, u32))>,
    tiles: Choices<TuneKey, (u32, u32)>,
    /// The Hopper GEMM, built on first use on an sm_90 GPU.
    hopper: std::sync::Mutex<Option<Arc<hopper::WgmmaGemm>>>,
}

/// The block tiles the tuner tries.
pub const TILES: [(u32, u32); 4] = [(64, 64), (64, 128), (128, 64), (128, 128)];

impl Gemm {
    /// A GEMM of `dtype` (bf16 or f16) inputs on `device`, reading tuned tiles from `store`.
    pub fn new(device: &Device, dtype: Dtype, store: Store) -> Gemm {
        Gemm {
            device: device.clone(),
            dtype,
            store,
            kernels: Variants::default(),
            tiles: Choices::default(),
            hopper: std::sync::Mutex::new(None),
        }
    }

    /// The Hopper GEMM when this device runs it (an sm_90 GPU), built once.
    fn hopper(&self) -> Result<Option<Arc<hopper::WgmmaGemm>>, RuntimeError> {
        if !self.device.is_gpu() || !hopper::WgmmaGemm::supported(&self.device) {
            return Ok(None);
        }
        let mut slot = self.hopper.lock().map_err(|_| RuntimeError::InvalidInput {
            what: "gemm",
            reason: "the Hopper GEMM's slot was poisoned".into(),
        })?;
        if slot.is_none() {
            *slot = Some(Arc::new(hopper::WgmmaGemm::new(&self.device, self.dtype)?));
        }
        Ok(slot.clone())
    }

    /// The tuning-store key of a shape: sizes bucketed to powers of two.
    pub fn tune_key(&self, m: u32, n: u32, k: u32, b_col: bool) -> TuneKey {
        let name = format!(
            "kiln_algorithms::gemm::gemm [T={}, B_COL={}]",
            self.dtype, b_col as u8
        );
        TuneKey::new(
            &name,
            &self.device.name(),
            &self.device.arch().sm_name(),
            &[m as u64, n as u64, k as u64],
        )
    }

    /// The block tile used for a shape: the stored winner, else [`DEFAULT_TILE`].
    pub fn tile_for(&self, m: u32, n: u32, k: u32, b_col: bool) -> (u32, u32) {
        let key = self.tune_key(m, n, k, b_col);
        self.tiles.get(key.clone(), || {
            self.store
                .lookup(&key)
                .map(|e| winner_tile(&e))
                .filter(|t| TILES.contains(t))
                .unwrap_or(DEFAULT_TILE)
        })
    }

    fn kernel(&self, b_col: bool, tile: (u32, u32)) -> Result<Arc<Kernel>, RuntimeError> {
        self.kernels.get(&(b_col, tile), || {
            gemm::spec()
                .t(self.dtype)
                .b_col(b_col)
                .bm(tile.0)
                .bn(tile.1)
                .build(&self.device)
        })
    }

    /// `c (m × n, f32) = a (m × k) · b` with `b` `k × n` row-major, or with `b_col` stored
    /// as `n × k` (column-major B); sizes must be multiples of 16. `tile` picks the block
    /// tile (one of [`TILES`]) of the tile-layer (`mma.sync`) kernel; `None` uses the tuned
    /// one ([`Gemm::tile_for`]), or on an sm_90 GPU with column-major B the Hopper GEMM
    /// ([`hopper::WgmmaGemm`], 0.9 of cuBLAS where the tile layer is at 0.25).
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: kiln::Element>(
        &self,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        c: &mut DeviceBuffer<f32>,
        m: u32,
        n: u32,
        k: u32,
        b_col: bool,
        tile: Option<(u32, u32)>,
    ) -> Result<(), GemmError> {
        if m == 0
            || n == 0
            || k == 0
            || !m.is_multiple_of(16)
            || !n.is_multiple_of(16)
            || !k.is_multiple_of(16)
        {
            return Err(GemmError::Shape(format!(
                "{m}×{n}×{k}: every size must be a positive multiple of 16"
            )));
        }
        if let (None, true) = (tile, b_col) {
            if let Some(h) = self.hopper()? {
                return Ok(h.run(a, b, c, m, n, k)?);
            }
        }
        let tile = tile.unwrap_or_else(|| self.tile_for(m, n, k, b_col));
        if !TILES.contains(&tile) {
            return Err(GemmError::Shape(format!(
                "block tile {tile:?} is not one of {TILES:?}"
            )));
        }
        let want = [
            ("a", a.len(), m as usize * k as usize),
            ("b", b.len(), k as usize * n as usize),
            ("c", c.len(), m as usize * n as usize),
        ];
        for (name, got, need) in want {
            if got != need {
                return Err(GemmError::Shape(format!(
                    "`{name}` holds {got} elements, {m}×{n}×{k} needs {need}"
                )));
            }
        }
        let kernel = self.kernel(b_col, tile)?;
        gemm::launch(&kernel, &launch_config(m, n, tile), a, b, c, m, n, k)?;
        Ok(())
    }

    /// Searches the block tiles for one shape (on the given inputs, which it overwrites `c`
    /// with), checks every candidate's output against the first one's, and stores the winner
    /// under [`Gemm::tune_key`]; later calls of [`Gemm::run`] in that bucket use it.
    #[allow(clippy::too_many_arguments)]
    pub fn tune<T: kiln::Element>(
        &self,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        c: &mut DeviceBuffer<f32>,
        m: u32,
        n: u32,
        k: u32,
        b_col: bool,
        options: &TuneOptions,
    ) -> Result<Entry, GemmError> {
        let space = Space::new().dim("BM", &[64, 128]).dim("BN", &[64, 128]);
        let key = self.tune_key(m, n, k, b_col);
        let key_for_memo = key.clone();
        let tile = |p: &Point| (p.get("BM") as u32, p.get("BN") as u32);
        let entry = tune(
            &key,
            &space,
            &self.store,
            options,
            |p| {
                self.kernel(b_col, tile(p))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            |p, _| {
                let t = timing::time(&self.device, 3, 10, || {
                    Ok(self.run(a, b, c, m, n, k, b_col, Some(tile(p)))?)
                })
                .map_err(|e| e.to_string())?;
                let out = self.device.download(c).map_err(|e| e.to_string())?;
                Ok((t.median_ms, Some(out)))
            },
            |want: &Vec<f32>, got: &Vec<f32>| crate::tuning::close(want, got, 1e-5),
        )?;
        self.tiles.set(key_for_memo, winner_tile(&entry));
        Ok(entry)
    }
}

fn winner_tile(e: &Entry) -> (u32, u32) {
    (e.winner.get("BM") as u32, e.winner.get("BN") as u32)
}

pub mod checks;
pub mod hopper;
