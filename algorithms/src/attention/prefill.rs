//! Flash attention forward (prefill) on tensor cores, built on the tile layer.

use std::sync::Arc;

use crate::tile::*;
use crate::tuning::{Choices, Variants};
use kiln::prelude::*;
use kiln::tune::{tune, Entry, Point, Space, Store, TuneKey, TuneOptions};
use kiln::{timing, Device, DeviceBuffer, Kernel, LaunchConfig, RuntimeError};
use kiln_dsl::kernel;

/// Queries per block (4 warps × 32 rows).
pub const BLOCK_Q: u32 = 128;
/// Threads per block.
pub const THREADS: u32 = 128;
/// Keys per step when none is tuned.
pub const DEFAULT_BK: u32 = 32;
/// The key-tile sizes the tuner tries (those whose tiles fit the 48 KiB of static shared
/// memory next to the 128-row Q tile: see [`key_tile_fits`]).
pub const KEY_TILES: [u32; 3] = [16, 32, 64];

/// Whether the Q tile (128 × D) and the K and V tiles (BK × D) fit in static shared memory.
pub fn key_tile_fits(dim: u32, bk: u32) -> bool {
    (BLOCK_Q + 2 * bk) * dim * 2 <= 48 * 1024
}

/// `O = softmax(scale · Q·Kᵀ) · V` and its row log-sum-exp, for `q` `[B, H, S_q, D]` and
/// `k`, `v` `[B, H_kv, S_kv, D]` (GQA: query head `h` reads KV head `h / (H / H_kv)`).
/// `o` is `[B, H, S_q, D]`, `lse` `[B, H, S_q]` (natural log). With `CAUSAL`, query `i` sees
/// keys `j ≤ i + S_kv − S_q` (aligned at the end, as FlashAttention-2).
///
/// Grid `(⌈S_q / 128⌉, H, B)`, 128 threads. Each warp owns two 16-row strips of queries, so
/// every K and V fragment read from shared memory feeds two `mma`s; the block walks the keys
/// `BK` at a time (tuned; see [`KEY_TILES`]). K and V tiles arrive by `cp_async` in separate
/// groups: the next K tile loads while P·V runs, the next V tile while Q·Kᵀ and the softmax
/// run. Q stays in shared memory and is read per 16-column step.
#[kernel(
    threads = 128,
    example(T = bf16, D = 128, CAUSAL = false, BK = 32),
    example(T = bf16, D = 128, CAUSAL = true, BK = 16),
    example(T = f16, D = 64, CAUSAL = true, BK = 64)
)]
pub fn flash_attn_fwd<T: Float, const D: u32, const CAUSAL: bool, const BK: u32>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &mut [T],
    lse: &mut [f32],
    s_q: u32,
    s_kv: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
) {
    let sq = shared::<[T; 128 * D]>();
    let sk = shared::<[T; BK * D]>();
    let sv = shared::<[T; BK * D]>();
    let t = thread_idx().x;
    let row0 = warp_id() * 32;
    let q0 = block_idx().x * 128;
    let h = block_idx().y;
    let b = block_idx().z;
    let hk = h / (heads / kv_heads);
    let q_base = ((b * heads + h) as u64 * s_q as u64 + q0 as u64) * D as u64;
    let kv_base = (b * kv_heads + hk) as u64 * s_kv as u64 * D as u64;
    let offset = s_kv - s_q;
    // key tiles this block needs: all of them, or up to the diagonal of its last query
    let mut tiles = s_kv.div_ceil(BK);
    if CAUSAL {
        tiles = tiles.min((q0 + 128 + offset).div_ceil(BK));
    }
    load_tile_async::<T, 128, D, 128>(&mut sq, q, q_base, D as u64, s_q - q0, D, t);
    load_tile_async::<T, BK, D, 128>(&mut sk, k, kv_base, D as u64, s_kv, D, t);
    cp_async_commit();
    load_tile_async::<T, BK, D, 128>(&mut sv, v, kv_base, D as u64, s_kv, D, t);
    cp_async_commit();

    let mut acc = [[frag_c_zero(); D / 8]; 2];
    let mut m = [[f32::NEG_INFINITY; 2]; 2];
    let mut l = [[0.0f32; 2]; 2];
    let c = scale * 1.442_695_f32;
    for j in 0..tiles {
        let k0 = j * BK;
        cp_async_wait::<1>(); // K_j (and Q) landed; V_j may still be in flight
        sync_threads();
        let mut s = [[frag_c_zero(); BK / 8]; 2];
        for kk in 0..D / 16 {
            mma_block::<T, D, D, true>(&mut s, &sq, row0, &sk, 0u32, kk * 16);
        }
        let mut p = [[frag_a_zero::<T>(); BK / 16]; 2];
        for i in 0..2u32 {
            let rows = q0 + row0 + i * 16;
            scale_strip::<{ BK / 8 }>(&mut s[i], c);
            if k0 + BK > s_kv || (CAUSAL && k0 + BK > rows + offset) {
                mask_strip::<{ BK / 8 }>(&mut s[i], rows, k0, s_kv, CAUSAL, offset);
            }
            online_softmax::<{ BK / 8 }, { D / 8 }>(&mut s[i], &mut m[i], &mut l[i], &mut acc[i]);
            to_a::<T, { BK / 8 }, { BK / 16 }>(&s[i], &mut p[i]);
        }
        sync_threads(); // every warp is done with K_j
        if j + 1 < tiles {
            let next = kv_base + ((k0 + BK) * D) as u64;
            load_tile_async::<T, BK, D, 128>(&mut sk, k, next, D as u64, s_kv - k0 - BK, D, t);
            cp_async_commit();
            cp_async_wait::<1>(); // V_j landed
        } else {
            cp_async_wait_all();
        }
        sync_threads();
        mma_ab_block::<T, D>(&mut acc, &p, &sv, 0u32);
        sync_threads(); // every warp is done with V_j
        if j + 1 < tiles {
            let next = kv_base + ((k0 + BK) * D) as u64;
            load_tile_async::<T, BK, D, 128>(&mut sv, v, next, D as u64, s_kv - k0 - BK, D, t);
            cp_async_commit();
        }
    }
    let lane = lane_id();
    let valid = (s_q - q0).min(128);
    for i in 0..2u32 {
        let r0 = row0 + i * 16;
        let mut total = [0.0f32; 2];
        for r in 0..2u32 {
            total[r] = quad_sum(l[i][r]);
        }
        if r0 < valid {
            store_strip::<T, { D / 8 }>(
                &acc[i],
                &total,
                o,
                q_base + (r0 * D) as u64,
                D as u64,
                valid - r0,
            );
        }
        if lane % 4 == 0 {
            for r in 0..2u32 {
                let row = r0 + lane / 4 + r * 8;
                if row < valid {
                    let at = (b * heads + h) as u64 * s_q as u64 + (q0 + row) as u64;
                    lse[at] = (m[i][r] + total[r].log2()) * 0.693_147_2_f32;
                }
            }
        }
    }
}

/// Why a prefill call was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrefillError {
    /// The shape or the buffers do not fit together.
    #[error("flash attention: {0}")]
    Shape(String),
    /// Compiling, launching or tuning failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<PrefillError> for RuntimeError {
    fn from(e: PrefillError) -> RuntimeError {
        match e {
            PrefillError::Runtime(r) => r,
            PrefillError::Shape(reason) => RuntimeError::InvalidInput {
                what: "attention shape",
                reason,
            },
        }
    }
}

/// The shape of a prefill call: `q`, `o` `[B, H, S_q, D]`, `k`, `v` `[B, H_kv, S_kv, D]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillCall {
    /// Sequences.
    pub batch: u32,
    /// Query heads.
    pub heads: u32,
    /// KV heads (a divisor of `heads`).
    pub kv_heads: u32,
    /// Query tokens.
    pub s_q: u32,
    /// Key tokens (at least `s_q` when causal).
    pub s_kv: u32,
    /// Head dimension: 64 or 128.
    pub dim: u32,
    /// Mask keys after each query (aligned at the end).
    pub causal: bool,
}

/// Flash attention forward for one element type: compiles each (D, causal, key tile) once
/// and uses the key tile the autotuner stored for the call's bucket (else [`DEFAULT_BK`]).
pub struct Prefill {
    device: Device,
    dtype: Dtype,
    /// Where tuned key tiles are kept.
    pub store: Store,
    kernels: Variants<(u32, bool, u32)>,
    key_tiles: Choices<TuneKey, u32>,
    /// The Hopper kernel, on an sm_90 GPU.
    hopper: Option<super::hopper::WgmmaPrefill>,
}

impl Prefill {
    /// Flash attention of `dtype` (bf16 or f16) on `device`, reading tuned tiles from `store`.
    pub fn new(device: &Device, dtype: Dtype, store: Store) -> Prefill {
        Prefill {
            device: device.clone(),
            dtype,
            store,
            kernels: Variants::default(),
            key_tiles: Choices::default(),
            hopper: (device.is_gpu() && super::hopper::WgmmaPrefill::supported(device))
                .then(|| super::hopper::WgmmaPrefill::new(device, dtype)),
        }
    }

    /// The tuning-store key of a call: the specialisation and its sizes, bucketed.
    pub fn tune_key(&self, c: &PrefillCall) -> TuneKey {
        let name = format!(
            "kiln_algorithms::attention::prefill::flash_attn_fwd [CAUSAL={}, D={}, T={}]",
            c.causal as u8, c.dim, self.dtype
        );
        let sizes = [c.batch * c.heads, c.s_q, c.s_kv].map(u64::from);
        TuneKey::new(
            &name,
            &self.device.name(),
            &self.device.arch().sm_name(),
            &sizes,
        )
    }

    /// The key tile used for a call: the stored winner, else [`DEFAULT_BK`].
    pub fn key_tile_for(&self, c: &PrefillCall) -> u32 {
        let key = self.tune_key(c);
        self.key_tiles.get(key.clone(), || {
            self.store
                .lookup(&key)
                .map(|e| e.winner.get("BK") as u32)
                .filter(|bk| KEY_TILES.contains(bk))
                .unwrap_or(DEFAULT_BK)
        })
    }

    fn kernel(&self, c: &PrefillCall, bk: u32) -> Result<Arc<Kernel>, RuntimeError> {
        self.kernels.get(&(c.dim, c.causal, bk), || {
            flash_attn_fwd::spec()
                .t(self.dtype)
                .d(c.dim)
                .causal(c.causal)
                .bk(bk)
                .build(&self.device)
        })
    }

    /// `o = softmax(scale·Q·Kᵀ)·V` and the natural-log `lse` `[B, H, S_q]` (see
    /// [`flash_attn_fwd`]). `bk` picks the key tile of the tile-layer kernel (one of
    /// [`KEY_TILES`] that fits); `None` uses, on an sm_90 GPU, the Hopper kernel
    /// ([`super::hopper::WgmmaPrefill`]), elsewhere the tuned key tile
    /// ([`Prefill::key_tile_for`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: kiln::Element>(
        &self,
        c: &PrefillCall,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        scale: f32,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        bk: Option<u32>,
    ) -> Result<(), PrefillError> {
        if let (None, Some(h)) = (bk, &self.hopper) {
            return Ok(h.run(c, q, k, v, o, lse, scale)?);
        }
        let bk = bk.unwrap_or_else(|| self.key_tile_for(c));
        let refuse = |m: String| Err(PrefillError::Shape(m));
        if c.dim != 64 && c.dim != 128 {
            return refuse(format!("head dimension {} (64 or 128)", c.dim));
        }
        if c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) {
            return refuse(format!(
                "{} query heads over {} KV heads",
                c.heads, c.kv_heads
            ));
        }
        if c.s_q == 0 || c.s_kv == 0 || (c.causal && c.s_kv < c.s_q) {
            return refuse(format!(
                "{} queries over {} keys (causal needs at least as many keys)",
                c.s_q, c.s_kv
            ));
        }
        if !KEY_TILES.contains(&bk) || !key_tile_fits(c.dim, bk) {
            return refuse(format!(
                "key tile {bk} is not one of {KEY_TILES:?} that fits D = {}",
                c.dim
            ));
        }
        let (b, h, hk, d) = (
            c.batch as usize,
            c.heads as usize,
            c.kv_heads as usize,
            c.dim as usize,
        );
        let sizes = [
            ("q", q.len(), b * h * c.s_q as usize * d),
            ("o", o.len(), b * h * c.s_q as usize * d),
            ("lse", lse.len(), b * h * c.s_q as usize),
            ("k", k.len(), b * hk * c.s_kv as usize * d),
            ("v", v.len(), b * hk * c.s_kv as usize * d),
        ];
        if let Some((name, got, want)) = sizes.iter().find(|(_, got, want)| got != want) {
            return refuse(format!(
                "`{name}` holds {got} elements, the shape needs {want}"
            ));
        }
        let kernel = self.kernel(c, bk)?;
        let cfg = LaunchConfig {
            grid: (c.s_q.div_ceil(BLOCK_Q), c.heads, c.batch),
            block: (THREADS, 1, 1),
            dyn_shared_bytes: 0,
        };
        flash_attn_fwd::launch(
            &kernel, &cfg, q, k, v, o, lse, c.s_q, c.s_kv, c.heads, c.kv_heads, scale,
        )?;
        Ok(())
    }

    /// Searches the key tile for one call (overwriting `o` and `lse`), checks each
    /// candidate's LSE against the first one's, and stores the winner.
    #[allow(clippy::too_many_arguments)]
    pub fn tune<T: kiln::Element>(
        &self,
        c: &PrefillCall,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        scale: f32,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        options: &TuneOptions,
    ) -> Result<Entry, PrefillError> {
        let tiles: Vec<i64> = KEY_TILES.iter().map(|&t| t as i64).collect();
        let dim = c.dim;
        let space = Space::new().dim("BK", &tiles).constraint(
            "the Q, K and V tiles fit in 48 KiB of shared memory",
            move |p| key_tile_fits(dim, p.get("BK") as u32),
        );
        let bk = |p: &Point| p.get("BK") as u32;
        let entry = tune(
            &self.tune_key(c),
            &space,
            &self.store,
            options,
            |p| self.kernel(c, bk(p)).map(|_| ()).map_err(|e| e.to_string()),
            |p, _| {
                let t = timing::time(&self.device, 2, 10, || {
                    Ok(self.run(c, q, k, v, scale, o, lse, Some(bk(p)))?)
                })
                .map_err(|e| e.to_string())?;
                Ok((
                    t.median_ms,
                    Some(self.device.download(lse).map_err(|e| e.to_string())?),
                ))
            },
            |want: &Vec<f32>, got: &Vec<f32>| crate::tuning::close(want, got, 1e-5),
        )?;
        self.key_tiles
            .set(self.tune_key(c), entry.winner.get("BK") as u32);
        Ok(entry)
    }
}
