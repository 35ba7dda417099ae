//! Flash-decoding: attention of one query token per sequence over a KV cache, split along
//! the sequence across warps and merged by log-sum-exp — by a second kernel, or inside the
//! first by the last block of each (batch, KV head) to finish, so that a short cache's
//! decode is one launch (the tuner picks per shape); optionally over an index list of
//! selected keys per (batch, KV head), which the sparse pipelines (HATA, CLO, Chelsea) reuse;
//! optionally with a per-entry logit bias `log n_j` from entry sizes (Chelsea's merged
//! cache: an entry that stands for `n_j` tokens gets their attention mass).

use crate::common::{warp_max, warp_sum};
use crate::tile::*;
use crate::tuning::Choices;
use kiln::prelude::*;
use kiln::tune::{tune, Entry, Space, Store, TuneKey, TuneOptions};
use kiln::{timing, DeviceBuffer, Kernel, LaunchConfig, RuntimeError};
use kiln_dsl::{device, kernel};
use std::sync::Mutex;

/// Keys a warp processes per step.
pub const KEYS_PER_STEP: u32 = 16;
/// Warps (independent splits) per block of [`flash_decode`].
pub const WARPS: u32 = 2;
/// Most splits [`decode_merge`] accepts (its weights live in shared memory).
pub const MAX_SPLITS: u32 = 4096;

/// Partial attention of one split per warp. The `G = H / H_kv` query heads of a KV head
/// (G ≤ 16) are the rows of one 16-row strip, so each key tile feeds the tensor cores once
/// for the whole group. Warp `w` of block `x` handles split `s = 2x + w`: keys
/// `[s·chunk, min((s + 1)·chunk, n_keys))`, 16 at a time through its own two shared stages,
/// so the next tile is in flight while this one is multiplied (the first one loads while
/// the queries land).
///
/// `q` `[B, H, D]`; `k`, `v` `[B, S, H_kv, D]`; with `INDEXED`, the i-th key of (b, h_kv) is
/// token `ids[(b·H_kv + h_kv)·n_keys + i]`, else token `i`. Writes, per query head and split,
/// the normalised partial output `o_part[((b·H + h)·splits + s)·D ..]` (f32) and its
/// log-sum-exp in log2 units `lse_part[(b·H + h)·splits + s]`. With `BIAS`, the logit of
/// token `j` gains `ln counts[(b·S + j)·H_kv + h_kv]` (`counts` `[B, S, H_kv]`, each ≥ 1,
/// or 0 to mask the entry out: a split of masked entries only contributes nothing;
/// read 4 bytes per key, a step ahead into registers so the load hides behind the tile's
/// `mma`s); without it `counts` is never read.
///
/// With `fused`, the kernel also merges: the last block of a (batch, KV head) to finish —
/// a ticket taken with an atomic on `tickets[b·H_kv + h_kv]` after a fence, reset to 0 by
/// that block for the next call — merges its group's splits ([`merge_group`]) into `o`
/// `[B, H, D]` and the natural-log `lse` `[B, H]`, so a decode is one launch (what a short
/// cache, whose few splits merge quickly, gains most from); else [`decode_merge`] does it.
/// Grid `(⌈splits / 2⌉, H_kv, B)`, 64 threads.
#[kernel(
    threads = 64,
    example(T = bf16, D = 128, INDEXED = false, BIAS = false),
    example(T = bf16, D = 128, INDEXED = true, BIAS = false),
    example(T = f16, D = 64, INDEXED = false, BIAS = false),
    example(T = bf16, D = 128, INDEXED = false, BIAS = true)
)]
pub fn flash_decode<T: Float, const D: u32, const INDEXED: bool, const BIAS: bool>(
    q: &[T],
    k: &[T],
    v: &[T],
    ids: &[u32],
    counts: &[f32],
    o_part: &mut [f32],
    lse_part: &mut [f32],
    tickets: &mut [u32],
    o: &mut [T],
    lse: &mut [f32],
    seq: u32,
    n_keys: u32,
    heads: u32,
    kv_heads: u32,
    chunk: u32,
    splits: u32,
    scale: f32,
    fused: bool,
) {
    let ticket = shared::<[u32; 1]>();
    let sq = shared::<[T; 16 * D]>();
    // two stages per warp: tile `i` of warp `w` lives in slot `2w + i % 2`
    let sk = shared::<[[T; 16 * D]; 4]>();
    let sv = shared::<[[T; 16 * D]; 4]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let w = warp_id();
    let hk = block_idx().y;
    let b = block_idx().z;
    let g = heads / kv_heads;
    let head0 = b * heads + hk * g;
    load_tile_async::<T, 16, D, 64>(&mut sq, q, (head0 * D) as u64, D as u64, g, D, t);
    cp_async_commit();
    let split = block_idx().x * 2 + w;
    let ld = (kv_heads * D) as u64;
    let kv_base = ((b as u64 * seq as u64) * kv_heads as u64 + hk as u64) * D as u64;
    let id_base = (b * kv_heads + hk) * n_keys;
    let start = split * chunk;
    let end = (start + chunk).min(n_keys);
    // with BIAS: log2 of the sizes of this lane's four keys of the current tile, and the
    // sizes of the next tile's (loads in flight)
    let cnt_base = b as u64 * seq as u64 * kv_heads as u64 + hk as u64;
    let mut bias = [0.0f32; 4];
    let mut bias_next = [1.0f32; 4];
    // the first key tile starts loading while the queries land
    if split < splits {
        if BIAS {
            fetch_bias::<INDEXED>(
                &mut bias_next,
                counts,
                ids,
                id_base,
                start,
                end,
                cnt_base,
                kv_heads,
            );
        }
        fetch_keys::<T, D, INDEXED>(
            &mut sk[w * 2],
            &mut sv[w * 2],
            k,
            v,
            ids,
            id_base,
            start,
            end,
            kv_base,
            ld,
        );
    }
    cp_async_commit();
    cp_async_wait::<1>(); // the queries landed; the first key tile may still be in flight
    sync_threads();
    // a block's second warp has no split when the count is odd (it still takes part in
    // the fused merge)
    if split < splits {
        let mut qf = [frag_a_zero::<T>(); D / 16];
        load_a_strip::<T, D>(&mut qf, &sq, 0u32);
        let steps = (end - start).div_ceil(16);
        let c = scale * 1.442_695_f32;
        let mut acc = [frag_c_zero(); D / 8];
        let mut m = [f32::NEG_INFINITY; 2];
        let mut l = [0.0f32; 2];
        for i in 0..steps {
            let k0 = start + i * 16;
            let slot = w * 2 + i % 2;
            if BIAS {
                for e in 0..4u32 {
                    bias[e] = bias_next[e].log2();
                }
                if i + 1 < steps {
                    fetch_bias::<INDEXED>(
                        &mut bias_next,
                        counts,
                        ids,
                        id_base,
                        k0 + 16,
                        end,
                        cnt_base,
                        kv_heads,
                    );
                }
            }
            if i + 1 < steps {
                let next = w * 2 + (i + 1) % 2;
                fetch_keys::<T, D, INDEXED>(
                    &mut sk[next],
                    &mut sv[next],
                    k,
                    v,
                    ids,
                    id_base,
                    k0 + 16,
                    end,
                    kv_base,
                    ld,
                );
            }
            cp_async_commit();
            cp_async_wait::<1>(); // tile i landed; tile i + 1 may still be in flight
            sync_warp();
            let mut s = [frag_c_zero(); 2];
            mma_abt::<T, D>(&mut s, &qf, &sk[slot], 0u32);
            scale_strip::<2>(&mut s, c);
            if BIAS {
                for j in 0..2u32 {
                    for r in 0..4u32 {
                        s[j][r] += bias[j * 2 + r % 2];
                    }
                }
            }
            if end - k0 < 16 {
                mask_strip::<2>(&mut s, 0u32, 0u32, end - k0, false, 0u32);
            }
            online_softmax::<2, { D / 8 }>(&mut s, &mut m, &mut l, &mut acc);
            let mut p = [frag_a_zero::<T>(); 1];
            to_a::<T, 2, 1>(&s, &mut p);
            mma_ab::<T, D>(&mut acc, &p, &sv[slot], 0u32);
            sync_warp(); // the slot is refilled two steps later
        }
        let mut total = [0.0f32; 2];
        for r in 0..2u32 {
            total[r] = quad_sum(l[r]);
        }
        let base = ((head0 * splits + split) * D) as u64;
        store_strip::<f32, { D / 8 }>(&acc, &total, o_part, base, (splits * D) as u64, g);
        if lane % 4 == 0 {
            for r in 0..2u32 {
                let row = lane / 4 + r * 8;
                if row < g {
                    lse_part[(head0 + row) * splits + split] = m[r] + total[r].log2();
                }
            }
        }
    }
    if fused {
        thread_fence();
        sync_threads();
        let group = b * kv_heads + hk;
        if t == 0 {
            ticket[0] = atomic_add(&mut tickets[group], 1u32);
        }
        sync_threads();
        if ticket[0] == grid_dim().x - 1 {
            merge_group::<T, D>(o_part, lse_part, o, lse, head0, g, splits, t);
            if t == 0 {
                tickets[group] = 0;
            }
        }
    }
}

/// Run by the 64 threads (`t`) of [`flash_decode`]'s last block of a group: merges the
/// `splits` partial results of query heads `head0 .. head0 + g` by log-sum-exp into `o` (as
/// `T`) and the natural-log `lse`. Thread `t` takes (head, 4 columns) pairs `t, t + 64, ..`
/// and runs an online merge over the splits (the running maximum rescales the sums), four
/// splits' loads in flight at a time; a split of masked entries only (LSE `−∞`) adds
/// nothing.
#[device]
pub fn merge_group<T: Float, const D: u32>(
    o_part: &[f32],
    lse_part: &[f32],
    o: &mut [T],
    lse: &mut [f32],
    head0: u32,
    g: u32,
    splits: u32,
    t: u32,
) {
    for p in (t..g * (D / 4)).step_by(64) {
        let row = head0 + p / (D / 4);
        let col = p % (D / 4) * 4;
        let mut m = f32::NEG_INFINITY;
        let mut den = 0.0f32;
        let mut acc = [0.0f32; 4];
        let mut s0 = 0u32;
        while s0 < splits {
            let mut l = [f32::NEG_INFINITY; 4];
            let mut x = [[0.0f32; 4]; 4];
            for u in 0..4u32 {
                let s = s0 + u;
                if s < splits {
                    l[u] = lse_part[row * splits + s];
                    let y = o_part.vload((row * splits + s) * D + col);
                    for e in 0..4u32 {
                        x[u][e] = y[e];
                    }
                }
            }
            for u in 0..4u32 {
                if l[u] > f32::NEG_INFINITY {
                    let top = m.max(l[u]);
                    let old = (m - top).exp2();
                    let w = (l[u] - top).exp2();
                    den = den * old + w;
                    for e in 0..4u32 {
                        acc[e] = acc[e] * old + w * x[u][e];
                    }
                    m = top;
                }
            }
            s0 += 4;
        }
        for e in 0..4u32 {
            o[row * D + col + e] = (acc[e] / den) as T;
        }
        if col == 0 {
            lse[row] = (m + den.log2()) * 0.693_147_2_f32;
        }
    }
}

/// One warp starts copying keys `k0 .. min(k0 + 16, end)` of its (batch, KV head) into the
/// K and V tiles: rows `k0 ..` of the cache, or the tokens the index list names.
#[device]
pub fn fetch_keys<T: Float, const D: u32, const INDEXED: bool>(
    tk: &mut Shared<[T; 16 * D]>,
    tv: &mut Shared<[T; 16 * D]>,
    k: &[T],
    v: &[T],
    ids: &[u32],
    id_base: u32,
    k0: u32,
    end: u32,
    kv_base: u64,
    ld: u64,
) {
    let lane = lane_id();
    let rows = end - k0;
    if INDEXED {
        gather_tile_async::<T, 16, D, 32>(&mut tk, k, ids, id_base + k0, rows, kv_base, ld, lane);
        gather_tile_async::<T, 16, D, 32>(&mut tv, v, ids, id_base + k0, rows, kv_base, ld, lane);
    } else {
        let at = kv_base + k0 as u64 * ld;
        load_tile_async::<T, 16, D, 32>(&mut tk, k, at, ld, rows, D, lane);
        load_tile_async::<T, 16, D, 32>(&mut tv, v, at, ld, rows, D, lane);
    }
}

/// Starts loading the sizes of the four keys a lane's scores cover in the tile at `k0`
/// (columns `lane % 4 · 2 + {0, 1}` and `+ 8` of each row: `sizes[2j + e]` for key
/// `k0 + 8j + lane % 4 · 2 + e`), 1 for keys at or past `end`. Nothing here uses the
/// values, so the loads stay in flight until the next step takes their `log2`. `cnt_base`
/// is `b·S·H_kv + h_kv`; the key's token is its index or, when `INDEXED`, from `ids`.
#[device]
pub fn fetch_bias<const INDEXED: bool>(
    sizes: &mut [f32; 4],
    counts: &[f32],
    ids: &[u32],
    id_base: u32,
    k0: u32,
    end: u32,
    cnt_base: u64,
    kv_heads: u32,
) {
    let lane = lane_id();
    for j in 0..2u32 {
        for e in 0..2u32 {
            let key = k0 + j * 8 + lane % 4 * 2 + e;
            let mut x = 1.0f32;
            if key < end {
                let token = if INDEXED { ids[id_base + key] } else { key };
                x = counts[cnt_base + token as u64 * kv_heads as u64];
            }
            sizes[j * 2 + e] = x;
        }
    }
}

/// Threads per block of [`decode_merge`].
pub const MERGE_THREADS: u32 = 256;

/// Merges the splits of [`flash_decode`] by log-sum-exp: `o[(b·H + h)·D ..]` as `T`, and
/// the natural-log `lse[b·H + h]`. Grid `(H, B)`, 256 threads; at most [`MAX_SPLITS`] splits.
/// The block reads every split's LSE once (kept in shared memory), finds the largest and
/// turns each into a weight; then each warp sums its share of the splits' rows with 16-byte
/// loads (`D / 4` lanes per row, so a warp covers `128 / D` rows at once), eight rows' loads
/// in flight per lane — 64 rows per round trip at D = 128, where four warps with 4-byte
/// loads took 16: the merge of a short cache is a chain of such round trips. The per-warp
/// sums meet in shared memory in a fixed order, so the result is deterministic.
#[kernel(threads = 256, example(T = bf16, D = 128), example(T = f16, D = 64))]
pub fn decode_merge<T: Float, const D: u32>(
    o_part: &[f32],
    lse_part: &[f32],
    o: &mut [T],
    lse: &mut [f32],
    heads: u32,
    splits: u32,
) {
    let weights = shared::<[f32; 4096]>();
    let sums = shared::<[f32; 1024]>();
    let lanes = shared::<[f32; 8]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let w = warp_id();
    let bh = block_idx().y * heads + block_idx().x;
    let first = bh * splits;
    let mut mx = f32::NEG_INFINITY;
    for s in (t..splits).step_by(256) {
        let l = lse_part[first + s];
        weights[s] = l;
        mx = mx.max(l);
    }
    let wm: f32 = warp_max(mx);
    if lane == 0 {
        lanes[w] = wm;
    }
    sync_threads();
    let mut top = lanes[0];
    for i in 1..8u32 {
        top = top.max(lanes[i]);
    }
    sync_threads();
    let mut den = 0.0f32;
    for s in (t..splits).step_by(256) {
        let e = (weights[s] - top).exp2();
        weights[s] = e;
        den += e;
    }
    let ws: f32 = warp_sum(den);
    if lane == 0 {
        lanes[w] = ws;
    }
    sync_threads();
    let mut total = 0.0f32;
    for i in 0..8u32 {
        total += lanes[i];
    }
    // lane l of warp w: columns (l % (D / 4))·4 .. + 4 of the rows of "slot"
    // w·(128 / D) + l / (D / 4); slot k sums splits k, k + slots, k + 2·slots, ...
    let per_row = D / 4;
    let slots = 8 * (32 / per_row);
    let slot = w * (32 / per_row) + lane / per_row;
    let col = lane % per_row * 4;
    let mut acc = [0.0f32; 4];
    let mut s0 = slot;
    while s0 < splits {
        let mut x = [[0.0f32; 4]; 8];
        let mut e = [0.0f32; 8];
        for u in 0..8u32 {
            let s = s0 + u * slots;
            if s < splits {
                e[u] = weights[s];
                let y = o_part.vload((first + s) * D + col);
                for j in 0..4u32 {
                    x[u][j] = y[j];
                }
            }
        }
        for u in 0..8u32 {
            for j in 0..4u32 {
                acc[j] += e[u] * x[u][j];
            }
        }
        s0 += 8 * slots;
    }
    for j in 0..4u32 {
        sums[slot * D + col + j] = acc[j];
    }
    sync_threads();
    for d in (t..D).step_by(256) {
        let mut sum = 0.0f32;
        for k in 0..slots {
            sum += sums[k * D + d];
        }
        o[bh * D + d] = (sum / total) as T;
    }
    if t == 0 {
        lse[bh] = (top + total.log2()) * 0.693_147_2_f32;
    }
}

/// One cache a decode call reads: keys and values `[B, S, H_kv, D]` and, for kernels built
/// with [`FlashDecode::with_counts`], entry sizes `[B, S, H_kv]`.
#[derive(Clone, Copy)]
pub struct DecodeInputs<'a, T: kiln::Element> {
    /// Keys.
    pub k: &'a DeviceBuffer<T>,
    /// Values.
    pub v: &'a DeviceBuffer<T>,
    /// Entry sizes (the `log n` bias), or `None`.
    pub counts: Option<&'a DeviceBuffer<f32>>,
}

/// The shape of one decode-attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    /// Sequences in the batch.
    pub batch: u32,
    /// Query heads.
    pub heads: u32,
    /// KV heads (`heads` must be a multiple, with at most 16 query heads per KV head).
    pub kv_heads: u32,
    /// Tokens in the KV cache (its `S` dimension).
    pub seq: u32,
    /// Head dimension (64 or 128).
    pub dim: u32,
}

/// Why a decode-attention call was refused before launch.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The shape or the buffers do not fit together.
    #[error("flash-decoding: {0}")]
    Shape(String),
    /// Compiling or launching failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Flash-decoding for one element type and head dimension: the compiled kernels and the
/// split size. Build once, call [`FlashDecode::run`] every decode step.
pub struct FlashDecode {
    partial: Kernel,
    merge: Kernel,
    dtype: Dtype,
    indexed: bool,
    bias: bool,
    dim: u32,
    /// Keys per split (a multiple of 16); `None` uses the tuned split size of the shape's
    /// bucket in `store`, else one picked from the device's size.
    pub chunk: Option<u32>,
    /// Whether the splits are merged inside the attention kernel (one launch, see
    /// [`flash_decode`]'s `fused`) or by [`decode_merge`]; `None` uses the tuned choice of
    /// the shape's bucket, else [`default_fused`].
    pub fused: Option<bool>,
    /// Where tuned split sizes are kept (the compile-cache folder by default).
    pub store: Store,
    chunks: Choices<TuneKey, Option<(u32, bool)>>,
    /// The last call's shape, key count and settings, and the split they gave:
    /// a decode loop asks for the same one every step, and building its tuning key
    /// (strings) would add host time before every launch.
    last: Mutex<Option<LastChoice>>,
    /// Stands in for the index list of dense attention (never read).
    no_ids: DeviceBuffer<u32>,
    /// Stands in for the sizes without the `log n` bias (never read).
    no_counts: DeviceBuffer<f32>,
}

/// A call's shape, key count, `chunk` and `fused` settings, and the split size and merge
/// they gave.
type LastChoice = (DecodeShape, u32, (Option<u32>, Option<bool>), Split);

/// How a call splits its keys: keys per split, and whether the kernel merges the splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Keys per split (a multiple of 16).
    pub chunk: u32,
    /// Whether [`flash_decode`] merges the splits itself (else [`decode_merge`]).
    pub fused: bool,
}

/// The split sizes the tuner tries (with the default of [`default_chunk`]). The short
/// ones (32, 48) serve short caches — a merged cache at B = 1 may have a few thousand keys
/// per KV head, too few splits of 64 to fill the card — and the in-between sizes let the
/// number of splits land nearer a whole wave.
pub const CHUNKS: [i64; 12] = [32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096];

impl FlashDecode {
    /// Compiles the kernels for element type `dtype` (bf16 or f16), head dimension `dim`,
    /// and dense (`indexed = false`) or index-list attention.
    pub fn new(
        device: &kiln::Device,
        dtype: Dtype,
        dim: u32,
        indexed: bool,
    ) -> Result<FlashDecode, DecodeError> {
        FlashDecode::build(device, dtype, dim, indexed, false)
    }

    /// Like [`FlashDecode::new`], for attention over a merged cache whose entry `j` stands
    /// for `counts[j]` tokens: its logit gains `ln counts[j]` (call
    /// [`FlashDecode::run_with_counts`]).
    pub fn with_counts(
        device: &kiln::Device,
        dtype: Dtype,
        dim: u32,
        indexed: bool,
    ) -> Result<FlashDecode, DecodeError> {
        FlashDecode::build(device, dtype, dim, indexed, true)
    }

    fn build(
        device: &kiln::Device,
        dtype: Dtype,
        dim: u32,
        indexed: bool,
        bias: bool,
    ) -> Result<FlashDecode, DecodeError> {
        if dim != 64 && dim != 128 {
            return Err(DecodeError::Shape(format!(
                "head dimension {dim} is not supported (64 or 128)"
            )));
        }
        let partial = flash_decode::spec()
            .t(dtype)
            .d(dim)
            .indexed(indexed)
            .bias(bias)
            .build(device)?;
        let merge = decode_merge::spec().t(dtype).d(dim).build(device)?;
        Ok(FlashDecode {
            partial,
            merge,
            dtype,
            indexed,
            bias,
            dim,
            chunk: None,
            fused: None,
            store: Store::default_location(),
            chunks: Choices::default(),
            last: Mutex::new(None),
            no_ids: device.zeros(1)?,
            no_counts: device.zeros(1)?,
        })
    }

    /// The tuning-store key of a call: the specialisation, and batch, KV heads and keys
    /// bucketed to powers of two.
    pub fn tune_key(&self, shape: &DecodeShape, n_keys: u32) -> TuneKey {
        let device = &self.partial.device;
        let name = format!(
            "kiln_algorithms::attention::decode::flash_decode [D={}, INDEXED={}, T={}, G={}]{}",
            self.dim,
            self.indexed as u8,
            self.dtype,
            shape.heads / shape.kv_heads.max(1),
            if self.bias { " BIAS" } else { "" }
        );
        TuneKey::new(
            &name,
            &device.name(),
            &device.arch().sm_name(),
            &[shape.batch as u64, shape.kv_heads as u64, n_keys as u64],
        )
    }

    /// The split size used for `n_keys` keys: [`FlashDecode::chunk`] if set, else the tuned
    /// one, else [`default_chunk`]. Never more than [`MAX_SPLITS`] splits.
    pub fn chunk_for(&self, shape: &DecodeShape, n_keys: u32, multiprocessors: u32) -> u32 {
        self.split_for(shape, n_keys, multiprocessors).chunk
    }

    /// The split size and merge used for `n_keys` keys: each the setting
    /// ([`FlashDecode::chunk`], [`FlashDecode::fused`]) if given, else the tuned one, else
    /// [`default_chunk`] and [`default_fused`].
    pub fn split_for(&self, shape: &DecodeShape, n_keys: u32, multiprocessors: u32) -> Split {
        let settings = (self.chunk, self.fused);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, n, set, split)) = *last {
            if s == *shape && n == n_keys && set == settings {
                return split;
            }
        }
        let split = self.pick_split(shape, n_keys, multiprocessors);
        *last = Some((*shape, n_keys, settings, split));
        split
    }

    fn pick_split(&self, shape: &DecodeShape, n_keys: u32, multiprocessors: u32) -> Split {
        let least = n_keys.div_ceil(MAX_SPLITS);
        let tuned = || {
            let key = self.tune_key(shape, n_keys);
            self.chunks.get(key.clone(), || {
                self.store
                    .lookup(&key)
                    .map(|e| (e.winner.get("CHUNK") as u32, e.winner.get("FUSED") != 0))
            })
        };
        let (chunk, fused) = match (self.chunk, self.fused) {
            (Some(c), Some(f)) => (Some(c), Some(f)),
            (c, f) => {
                let t = tuned();
                (c.or(t.map(|t| t.0)), f.or(t.map(|t| t.1)))
            }
        };
        let chunk = chunk
            .unwrap_or_else(|| default_chunk(shape, n_keys, multiprocessors))
            .max(least)
            .max(16)
            .div_ceil(16)
            * 16;
        let fused = fused.unwrap_or_else(|| default_fused(n_keys.div_ceil(chunk)));
        Split { chunk, fused }
    }

    /// Searches the split size for one call (on the given inputs, which it overwrites `o`
    /// and `lse` with), checks every candidate's output against the first one's, and stores
    /// the winner under [`FlashDecode::tune_key`]; later calls in that bucket use it.
    #[allow(clippy::too_many_arguments)]
    pub fn tune<T: kiln::Element + Into<f32> + Copy>(
        &mut self,
        shape: &DecodeShape,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        ids: Option<&DeviceBuffer<u32>>,
        n_keys: u32,
        scale: f32,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        scratch: &mut DecodeScratch,
        options: &TuneOptions,
    ) -> Result<Entry, DecodeError> {
        let inputs = [DecodeInputs { k, v, counts: None }];
        self.tune_rotating(
            shape, q, &inputs, ids, n_keys, scale, o, lse, scratch, options,
        )
    }

    /// [`FlashDecode::tune`] with the timed runs rotating over several caches of the same
    /// shape (`inputs`, with entry sizes exactly when built with
    /// [`FlashDecode::with_counts`]), as a benchmark that rotates its inputs times them: a
    /// cache smaller than the L2 would otherwise be timed from the L2, which favours other
    /// split sizes than reading it from device memory. Outputs are compared on `inputs[0]`.
    #[allow(clippy::too_many_arguments)]
    pub fn tune_rotating<T: kiln::Element + Into<f32> + Copy>(
        &mut self,
        shape: &DecodeShape,
        q: &DeviceBuffer<T>,
        inputs: &[DecodeInputs<'_, T>],
        ids: Option<&DeviceBuffer<u32>>,
        n_keys: u32,
        scale: f32,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        scratch: &mut DecodeScratch,
        options: &TuneOptions,
    ) -> Result<Entry, DecodeError> {
        if inputs.is_empty() {
            return Err(DecodeError::Shape("tuning needs at least one input".into()));
        }
        let least = n_keys.div_ceil(MAX_SPLITS) as i64;
        // the hand-picked default competes too, so tuning can only match or beat it
        let device_mps = self.partial.device.multiprocessors();
        let mut chunks = CHUNKS.to_vec();
        chunks.push(default_chunk(shape, n_keys, device_mps).div_ceil(16) as i64 * 16);
        // one split of all the keys, so that a call with fewer keys than the shortest split
        // still has a candidate
        chunks.push(n_keys.div_ceil(16).max(1) as i64 * 16);
        chunks.sort_unstable();
        chunks.dedup();
        let space = Space::new()
            .dim("CHUNK", &chunks)
            .dim("FUSED", &[0, 1])
            .constraint(
                "at most MAX_SPLITS splits, and no split larger than all the keys",
                move |p| p.get("CHUNK") >= least && p.get("CHUNK") < 2 * n_keys.max(16) as i64,
            );
        let key = self.tune_key(shape, n_keys);
        let key_memo = key.clone();
        let store = std::mem::replace(&mut self.store, Store::in_dir(None));
        let saved = (self.chunk, self.fused);
        let device = self.partial.device.clone();
        let this = &mut *self;
        let result = tune(
            &key,
            &space,
            &store,
            options,
            |_| Ok(()),
            |p, _| {
                this.chunk = Some(p.get("CHUNK") as u32);
                this.fused = Some(p.get("FUSED") != 0);
                let mut turn = 0usize;
                let t = timing::time(&device, 3, 20, || {
                    let x = &inputs[turn % inputs.len()];
                    turn += 1;
                    Ok(this.run_with_counts(
                        shape, q, x.k, x.v, ids, x.counts, n_keys, scale, o, lse, scratch,
                    )?)
                })
                .map_err(|e| e.to_string())?;
                let x = &inputs[0];
                this.run_with_counts(
                    shape, q, x.k, x.v, ids, x.counts, n_keys, scale, o, lse, scratch,
                )
                .map_err(|e| e.to_string())?;
                let mut out: Vec<f32> = device
                    .download(o)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(Into::into)
                    .collect();
                out.extend(device.download(lse).map_err(|e| e.to_string())?);
                Ok((t.median_ms, Some(out)))
            },
            |want: &Vec<f32>, got: &Vec<f32>| crate::tuning::close(want, got, 1e-2),
        );
        (self.chunk, self.fused) = saved;
        self.store = store;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let entry = result?;
        self.chunks.set(
            key_memo,
            Some((
                entry.winner.get("CHUNK") as u32,
                entry.winner.get("FUSED") != 0,
            )),
        );
        Ok(entry)
    }

    /// Attention of `q` `[B, H, D]` over `n_keys` keys of the cache `k`, `v`
    /// `[B, S, H_kv, D]` (or a cache of more sequences, of which the first `B` are read): the first `n_keys` tokens, or with an index list, tokens
    /// `ids[(b·H_kv + h_kv)·n_keys + i]` (each below `S`; the buffer may be longer). Writes `o` `[B, H, D]` and the
    /// natural-log `lse` `[B, H]`. `scratch` holds the partial results and grows as needed.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: kiln::Element>(
        &self,
        shape: &DecodeShape,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        ids: Option<&DeviceBuffer<u32>>,
        n_keys: u32,
        scale: f32,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        scratch: &mut DecodeScratch,
    ) -> Result<(), DecodeError> {
        self.run_with_counts(shape, q, k, v, ids, None, n_keys, scale, o, lse, scratch)
    }

    /// [`FlashDecode::run`], over a merged cache when built with
    /// [`FlashDecode::with_counts`]: entry `j` of (b, h_kv) stands for
    /// `counts[(b·S + j)·H_kv + h_kv]` tokens (`[B, S, H_kv]`, each ≥ 1, or 0 for an entry
    /// to leave out) and its logit gains the log of that. `counts` must be given exactly when the kernels were built for it.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_counts<T: kiln::Element>(
        &self,
        shape: &DecodeShape,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        ids: Option<&DeviceBuffer<u32>>,
        counts: Option<&DeviceBuffer<f32>>,
        n_keys: u32,
        scale: f32,
        o: &mut DeviceBuffer<T>,
        lse: &mut DeviceBuffer<f32>,
        scratch: &mut DecodeScratch,
    ) -> Result<(), DecodeError> {
        let s = shape;
        let shape_err = |m: String| Err(DecodeError::Shape(m));
        if s.dim != self.dim {
            return shape_err(format!("built for D = {}, called with {}", self.dim, s.dim));
        }
        if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) || s.heads / s.kv_heads > 16 {
            return shape_err(format!(
                "{} query heads over {} KV heads: need a multiple, at most 16 per KV head",
                s.heads, s.kv_heads
            ));
        }
        if n_keys == 0 || (!self.indexed && n_keys > s.seq) {
            return shape_err(format!("{n_keys} keys of a cache of {} tokens", s.seq));
        }
        let (b, h, hk, d) = (
            s.batch as usize,
            s.heads as usize,
            s.kv_heads as usize,
            s.dim as usize,
        );
        let expect = |name: &str, got: usize, want: usize| -> Result<(), DecodeError> {
            if got == want {
                Ok(())
            } else {
                Err(DecodeError::Shape(format!(
                    "`{name}` holds {got} elements, the shape needs {want}"
                )))
            }
        };
        // a cache may hold room for more sequences than the call reads (a continuous batch
        // that has retired some): whole sequences past the first `batch` are never read
        let whole_sequences = |name: &str, got: usize, per_seq: usize| -> Result<(), DecodeError> {
            if got >= b * per_seq && got.is_multiple_of(per_seq.max(1)) {
                Ok(())
            } else {
                Err(DecodeError::Shape(format!(
                    "`{name}` holds {got} elements: the shape needs {} ({b} sequences of {per_seq}), or whole sequences more",
                    b * per_seq
                )))
            }
        };
        expect("q", q.len(), b * h * d)?;
        whole_sequences("k", k.len(), s.seq as usize * hk * d)?;
        whole_sequences("v", v.len(), s.seq as usize * hk * d)?;
        if k.len() != v.len() {
            return shape_err(format!(
                "`k` holds {} elements, `v` {}: they must match",
                k.len(),
                v.len()
            ));
        }
        expect("o", o.len(), b * h * d)?;
        expect("lse", lse.len(), b * h)?;
        let device = &self.partial.device;
        let Split { chunk, fused } = self.split_for(s, n_keys, device.multiprocessors());
        let splits = n_keys.div_ceil(chunk);
        scratch.ensure(device, b * h * splits as usize, d, b * hk)?;
        let ids = match (self.indexed, ids) {
            (true, Some(ids)) => {
                // a longer buffer (sized for the largest budget) is fine: rows are n_keys apart
                let need = b * hk * n_keys as usize;
                if ids.len() < need {
                    return shape_err(format!(
                        "`ids` holds {} elements, the shape needs at least {need}",
                        ids.len()
                    ));
                }
                ids
            }
            (true, None) => return shape_err("built for an index list, but none was given".into()),
            (false, Some(_)) => {
                return shape_err("built for dense attention, but an index list was given".into())
            }
            (false, None) => &self.no_ids,
        };
        let counts = match (self.bias, counts) {
            (true, Some(c)) => {
                whole_sequences("counts", c.len(), s.seq as usize * hk)?;
                c
            }
            (true, None) => {
                return shape_err(
                    "built for entry sizes (`log n` bias), but none were given".into(),
                )
            }
            (false, Some(_)) => {
                return shape_err("built without entry sizes, but sizes were given".into())
            }
            (false, None) => &self.no_counts,
        };
        let partial_cfg = LaunchConfig {
            grid: (splits.div_ceil(WARPS), s.kv_heads, s.batch),
            block: (WARPS * 32, 1, 1),
            dyn_shared_bytes: 0,
        };
        flash_decode::launch(
            &self.partial,
            &partial_cfg,
            q,
            k,
            v,
            ids,
            counts,
            &mut scratch.o_part,
            &mut scratch.lse_part,
            &mut scratch.tickets,
            o,
            lse,
            s.seq,
            n_keys,
            s.heads,
            s.kv_heads,
            chunk,
            splits,
            scale,
            fused,
        )?;
        if fused {
            return Ok(());
        }
        let merge_cfg = LaunchConfig {
            grid: (s.heads, s.batch, 1),
            block: (MERGE_THREADS, 1, 1),
            dyn_shared_bytes: 0,
        };
        decode_merge::launch(
            &self.merge,
            &merge_cfg,
            &scratch.o_part,
            &scratch.lse_part,
            o,
            lse,
            s.heads,
            splits,
        )?;
        Ok(())
    }
}

/// The dense baseline the sparse pipelines (HATA, Chelsea) are compared with: flash-decoding
/// of `q` over the whole of each cache in `caches` (`[B, S, H_kv, D]` keys and values, all
/// `shape.seq` tokens), taken in turn so that a set larger than L2 is read from device memory,
/// with its split size tuned first over the same caches (tuned afresh when `options.force`).
/// Returns the median of `reps` timed runs after `warmup` (ms) and the split size used.
pub fn time_dense<T: kiln::Element + Float + Into<f32> + Copy>(
    device: &kiln::Device,
    shape: &DecodeShape,
    q: &DeviceBuffer<T>,
    caches: &[(&DeviceBuffer<T>, &DeviceBuffer<T>)],
    (warmup, reps): (usize, usize),
    options: &TuneOptions,
) -> Result<(f64, u32), DecodeError> {
    let mut decode = FlashDecode::new(device, T::DTYPE, shape.dim, false)?;
    let mut scratch = DecodeScratch::new(device, 1, shape.dim as usize)?;
    let mut out: DeviceBuffer<T> =
        device.zeros((shape.batch * shape.heads * shape.dim) as usize)?;
    let mut lse: DeviceBuffer<f32> = device.zeros((shape.batch * shape.heads) as usize)?;
    let scale = 1.0 / (shape.dim as f32).sqrt();
    let inputs: Vec<DecodeInputs<'_, T>> = caches
        .iter()
        .map(|&(k, v)| DecodeInputs { k, v, counts: None })
        .collect();
    decode.tune_rotating(
        shape,
        q,
        &inputs,
        None,
        shape.seq,
        scale,
        &mut out,
        &mut lse,
        &mut scratch,
        options,
    )?;
    let mut turn = 0usize;
    let t = timing::time(device, warmup, reps, || {
        turn += 1;
        let (k, v) = caches[turn % caches.len().max(1)];
        Ok(decode.run(
            shape,
            q,
            k,
            v,
            None,
            shape.seq,
            scale,
            &mut out,
            &mut lse,
            &mut scratch,
        )?)
    })?;
    Ok((
        t.median_ms,
        decode.chunk_for(shape, shape.seq, device.multiprocessors()),
    ))
}

/// The split size picked without tuning: enough warps to keep every multiprocessor busy (24
/// per SM) but at least 128 keys per split, so the merge stays small.
pub fn default_chunk(shape: &DecodeShape, n_keys: u32, multiprocessors: u32) -> u32 {
    let groups = (shape.batch * shape.kv_heads).max(1);
    let want_splits = (multiprocessors * 24).div_ceil(groups).max(1);
    n_keys.div_ceil(want_splits).max(128)
}

/// Splits per (batch, KV head) at most for which the untuned choice merges inside the
/// attention kernel.
pub const FUSED_SPLITS: u32 = 8;

/// The merge picked without tuning: inside the attention kernel when a group has at most
/// [`FUSED_SPLITS`] splits (its last block merges them in a few round trips, cheaper than a
/// second launch), else by [`decode_merge`] (whose 256-thread blocks per query head merge
/// many splits faster than one 64-thread block per group).
pub fn default_fused(splits: u32) -> bool {
    splits <= FUSED_SPLITS
}

/// Device memory for the per-split partial results of [`FlashDecode::run`], and the
/// tickets of the fused merge (zero between calls), reused across calls.
pub struct DecodeScratch {
    o_part: DeviceBuffer<f32>,
    lse_part: DeviceBuffer<f32>,
    tickets: DeviceBuffer<u32>,
}

impl DecodeScratch {
    /// Scratch for up to `rows` (query head, split) pairs of `dim` values.
    pub fn new(
        device: &kiln::Device,
        rows: usize,
        dim: usize,
    ) -> Result<DecodeScratch, RuntimeError> {
        Ok(DecodeScratch {
            o_part: device.zeros(rows.max(1) * dim)?,
            lse_part: device.zeros(rows.max(1))?,
            tickets: device.zeros(1)?,
        })
    }

    fn ensure(
        &mut self,
        device: &kiln::Device,
        rows: usize,
        dim: usize,
        groups: usize,
    ) -> Result<(), RuntimeError> {
        if self.lse_part.len() < rows || self.o_part.len() < rows * dim {
            self.o_part = device.zeros(rows * dim)?;
            self.lse_part = device.zeros(rows)?;
        }
        if self.tickets.len() < groups {
            self.tickets = device.zeros(groups)?;
        }
        Ok(())
    }
}

impl From<DecodeError> for RuntimeError {
    fn from(e: DecodeError) -> RuntimeError {
        match e {
            DecodeError::Runtime(e) => e,
            DecodeError::Shape(reason) => RuntimeError::InvalidInput {
                what: "decode shape",
                reason,
            },
        }
    }
}
