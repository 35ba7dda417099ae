//! Chelsea's kernels: one round of chunked soft matching ([`chelsea_round`]) and the row
//! copies that move sink and recent tokens around it ([`chelsea_copy`]).

use crate::tile::*;
use kiln::prelude::*;
use kiln_dsl::{device, kernel};

/// Threads per block of [`chelsea_round`].
pub const ROUND_THREADS: u32 = 256;
/// The largest chunk [`chelsea_round`] takes (its shared arrays are sized for it).
pub const MAX_CHUNK: u32 = 512;

/// One round of chunked soft matching over every chunk of every (batch, KV head).
///
/// Block `(i, h, b)` takes chunk `i` of KV head `h` of sequence `b`: the `m` entries at rows
/// `row_in + i·m ..` of `k_in`, `v_in` (`[B, seq_in, H_kv, D]`) with sizes `n_in`
/// (`[B, seq_in, H_kv]`, or all 1 when `unit_counts`). A = the entries at even positions,
/// B = those at odd positions. Every a finds the b of highest cosine similarity (ties: the
/// lower b) — with `standardise`, the cosine of the keys standardised per channel over the
/// chunk (`z = (x − μ)·w` stored as `T`, μ and w rounded to `T`, as
/// `reference::standardiser` defines them; else of the keys as stored); the `r` a's with the highest similarity (ties: the lower a) merge into their
/// b: `k_b ← (n_b·k_b + Σ n_a·k_a) / (n_b + Σ n_a)`, the same for v, `n_b += Σ n_a`,
/// accumulated in f32. The `m − r` surviving entries keep their order and go to rows
/// `row_out + i·(m − r) ..` of the outputs (`[B, seq_out, H_kv, D]`, never the inputs).
///
/// The per-channel mean and spread come first (128 threads, 8 channels each, partial sums
/// over rows met in shared memory in a fixed order). The similarities run on the tensor
/// cores: each warp holds a 16-row strip of a's as A fragments, and the b's stream through
/// shared memory 64 at a time (two stages, the next in flight while the current one is
/// standardised in place and multiplied), so a chunk's similarity matrix is never stored —
/// each lane keeps a running best per row. The products of `T` values are exact in f32, so
/// this is the f32 similarity of the (standardised) keys; dividing by their norms (f32,
/// from the same values) gives the cosine. A chunk with more than 128 a's takes two passes.
/// The top-r is a rank count in shared memory; the merge takes a thread per 8 values of an
/// entry (16-byte loads), with each b's merged a's listed in shared memory in ascending
/// order, so the sums are deterministic. `m ≤ 512`; grid `(chunks, H_kv, B)`, 256 threads.
#[kernel(
    threads = 256,
    example(T = bf16, D = 128),
    example(T = f16, D = 64)
)]
pub fn chelsea_round<T: Float, const D: u32>(
    k_in: &[T],
    v_in: &[T],
    n_in: &[f32],
    k_out: &mut [T],
    v_out: &mut [T],
    n_out: &mut [f32],
    seq_in: u32,
    seq_out: u32,
    kv_heads: u32,
    row_in: u32,
    row_out: u32,
    m: u32,
    r: u32,
    unit_counts: bool,
    standardise: bool,
) {
    // A strips (128 rows) while a pass starts, then B tiles (64 rows, two stages)
    let tiles = shared::<[[T; 64 * D]; 2]>();
    let inv_norm = shared::<[f32; 512]>();
    let best = shared::<[f32; 256]>();
    let target = shared::<[u32; 256]>();
    let before = shared::<[u32; 260]>();
    let count = shared::<[u32; 256]>();
    let first = shared::<[u32; 256]>();
    let list = shared::<[u32; 256]>();
    // per-channel shift and weight of the similarity, and the partial sums that give them
    let mu = shared::<[f32; D]>();
    let wt = shared::<[f32; D]>();
    let part = shared::<[f32; 1024]>();
    let t = thread_idx().x;
    let lane = lane_id();
    let w = warp_id();
    let chunk = block_idx().x;
    let h = block_idx().y;
    let b = block_idx().z;
    let na = m.div_ceil(2);
    let nb = m / 2;
    let ld = (kv_heads * D) as u64;
    // row 0 of this chunk in the input, and of its output
    let in0 = ((b as u64 * seq_in as u64 + (row_in + chunk * m) as u64) * kv_heads as u64
        + h as u64)
        * D as u64;
    let out_rows = m - r;
    let out_row0 = b as u64 * seq_out as u64 + (row_out + chunk * out_rows) as u64;
    let n_row0 =
        (b as u64 * seq_in as u64 + (row_in + chunk * m) as u64) * kv_heads as u64 + h as u64;

    let groups = D / 8;
    // the standardiser: thread t < 128 sums channels (t % groups)·8 .. + 8 over the rows
    // t / groups, + parts, ...; thread c < D adds the parts of channel c in order
    let parts = 128 / groups;
    if t < D {
        mu[t] = 0.0;
        wt[t] = 1.0;
    }
    if standardise {
        for pass in 0..2u32 {
            if t < 128 {
                let col = t % groups * 8;
                let mut acc = [0.0f32; 8];
                for e in (t / groups..m).step_by(parts) {
                    let x = k_in.vload((in0 + e as u64 * ld + col as u64) as u32);
                    for j in 0..8u32 {
                        let f = x[j] as f32;
                        if pass == 0 {
                            acc[j] += f;
                        } else {
                            let dv = f - mu[col + j];
                            acc[j] += dv * dv;
                        }
                    }
                }
                for j in 0..8u32 {
                    part[t / groups * D + col + j] = acc[j];
                }
            }
            sync_threads();
            if t < D {
                let mut sum = 0.0f32;
                for p in 0..parts {
                    sum += part[p * D + t];
                }
                if pass == 0 {
                    mu[t] = ((sum / m as f32) as T) as f32;
                } else {
                    let var = sum / m as f32;
                    let floor = 1e-6f32 * mu[t] * mu[t] + 1e-8f32;
                    wt[t] = ((1.0f32 / (var + floor).sqrt()) as T) as f32;
                }
            }
            sync_threads();
        }
    }
    sync_threads();

    // inverse norms of every entry's standardised key: a thread per 8 values (16-byte
    // loads, all in flight at once), the D / 8 threads of an entry meet by shuffles
    for base in (0..m * groups).step_by(256) {
        let item = base + t;
        let mut ss = 0.0f32;
        if item < m * groups {
            let col = item % groups * 8;
            let x = k_in.vload((in0 + (item / groups) as u64 * ld + col as u64) as u32);
            for j in 0..8u32 {
                let f = (((x[j] as f32) - mu[col + j]) * wt[col + j]) as T as f32;
                ss += f * f;
            }
        }
        let mut o = 1u32;
        while o < groups {
            ss += shfl_xor_sync(0xffff_ffff, ss, o);
            o *= 2;
        }
        if item < m * groups && item % groups == 0 {
            inv_norm[item / groups] = if ss > 0.0 { 1.0 / ss.sqrt() } else { 0.0 };
        }
    }

    // best b of every a: 16 a's per warp, 128 per pass
    let tiles_b = nb.div_ceil(64);
    for pass in 0..na.div_ceil(128) {
        let a0 = pass * 128;
        sync_threads(); // the tiles' previous users are done
        for half in 0..2u32 {
            let first = a0 + half * 64;
            let rows = if first < na { (na - first).min(64) } else { 0 };
            load_tile_async::<T, 64, D, 256>(
                &mut tiles[half],
                k_in,
                in0 + 2 * first as u64 * ld,
                2 * ld,
                rows,
                D,
                t,
            );
        }
        cp_async_commit();
        cp_async_wait_all();
        sync_threads();
        if standardise {
            for half in 0..2u32 {
                let first = a0 + half * 64;
                let rows = if first < na { (na - first).min(64) } else { 0 };
                standardise_tile::<T, D>(&mut tiles[half], rows, &mu, &wt, t);
            }
            sync_threads();
        }
        let mut qf = [frag_a_zero::<T>(); D / 16];
        load_a_strip::<T, D>(&mut qf, &tiles[w / 4], w % 4 * 16);
        sync_threads(); // the strips are in registers: the tiles take B now
        let mut top = [f32::NEG_INFINITY; 2];
        let mut arg = [0u32; 2];
        if tiles_b > 0 {
            load_tile_async::<T, 64, D, 256>(
                &mut tiles[0],
                k_in,
                in0 + ld,
                2 * ld,
                nb.min(64),
                D,
                t,
            );
        }
        cp_async_commit();
        for bt in 0..tiles_b {
            if bt + 1 < tiles_b {
                let next = (bt + 1) * 64;
                load_tile_async::<T, 64, D, 256>(
                    &mut tiles[(bt + 1) % 2],
                    k_in,
                    in0 + (2 * next + 1) as u64 * ld,
                    2 * ld,
                    (nb - next).min(64),
                    D,
                    t,
                );
            }
            cp_async_commit();
            cp_async_wait::<1>();
            sync_threads();
            if standardise {
                standardise_tile::<T, D>(&mut tiles[bt % 2], (nb - bt * 64).min(64), &mu, &wt, t);
                sync_threads();
            }
            let mut s = [frag_c_zero(); 8];
            mma_abt::<T, D>(&mut s, &qf, &tiles[bt % 2], 0u32);
            for j in 0..8u32 {
                for e in 0..4u32 {
                    let col = bt * 64 + j * 8 + lane % 4 * 2 + e % 2;
                    if col < nb {
                        let cos = s[j][e] * inv_norm[2 * col + 1];
                        if cos > top[e / 2] {
                            top[e / 2] = cos;
                            arg[e / 2] = col;
                        }
                    }
                }
            }
            sync_threads(); // the stage is refilled next step
        }
        // the four lanes of a row meet: the highest similarity, then the lower b
        for hh in 0..2u32 {
            let mut v = top[hh];
            let mut i = arg[hh];
            for o in 1..3u32 {
                let ov = shfl_xor_sync(0xffff_ffff, v, o);
                let oi = shfl_xor_sync(0xffff_ffff, i, o);
                if ov > v || (ov == v && oi < i) {
                    v = ov;
                    i = oi;
                }
            }
            let a = a0 + w * 16 + lane / 4 + hh * 8;
            if lane % 4 == 0 && a < na {
                // a key with NaN/inf components ranks last (as in the reference) instead of
                // escaping the rank order: exactly r entries merge in every chunk
                let sim = v * inv_norm[2 * a];
                best[a] = if sim.is_nan() { f32::NEG_INFINITY } else { sim };
                target[a] = i;
            }
        }
    }
    sync_threads();

    // the top r edges: rank of each a by similarity (ties: the lower a first); an a
    // outside them keeps its place (`target` = 0xffff_ffff)
    for a in (t..na).step_by(256) {
        let mine = best[a];
        let mut rank = 0u32;
        for o in 0..na {
            let x = best[o];
            if x > mine || (x == mine && o < a) {
                rank += 1;
            }
        }
        if rank >= r {
            target[a] = 0xffff_ffff;
        }
    }
    sync_threads();

    // where entries go and what merges into each b: before[i] = merged a's among a < i,
    // and the merged a's of b, ascending, at list[first[b] .. first[b] + count[b]]
    for a in (t..na + 1).step_by(256) {
        let mut c = 0u32;
        for o in 0..a {
            if target[o] != 0xffff_ffff {
                c += 1;
            }
        }
        before[a] = c;
    }
    for bb in (t..nb).step_by(256) {
        let mut c = 0u32;
        for a in 0..na {
            if target[a] == bb {
                c += 1;
            }
        }
        count[bb] = c;
    }
    sync_threads();
    for bb in (t..nb).step_by(256) {
        let mut off = 0u32;
        for o in 0..bb {
            off += count[o];
        }
        first[bb] = off;
        for a in 0..na {
            if target[a] == bb {
                list[off] = a;
                off += 1;
            }
        }
    }
    sync_threads();

    // merge and compact: a thread per 8 values of an entry; entry e goes to e minus the
    // merged a's before it
    for item in (t..m * groups).step_by(256) {
        let e = item / groups;
        let col = (item % groups * 8) as u64;
        let merged_a = e % 2 == 0 && target[e / 2] != 0xffff_ffff;
        if !merged_a {
            let out = (out_row0 + (e - before[(e + 1) / 2]) as u64) * kv_heads as u64 + h as u64;
            let n_e = if unit_counts {
                1.0f32
            } else {
                n_in[n_row0 + e as u64 * kv_heads as u64]
            };
            let row = in0 + e as u64 * ld + col;
            // buffers hold fewer than 2^32 elements (the launch checks), so u32 indices fit
            let xk = k_in.vload(row as u32);
            let xv = v_in.vload(row as u32);
            let mut kk = [0.0f32; 8];
            let mut vv = [0.0f32; 8];
            for j in 0..8u32 {
                kk[j] = n_e * xk[j] as f32;
                vv[j] = n_e * xv[j] as f32;
            }
            let mut total = n_e;
            if e % 2 == 1 {
                let bb = e / 2;
                for i in first[bb]..first[bb] + count[bb] {
                    let a = list[i];
                    let n_a = if unit_counts {
                        1.0f32
                    } else {
                        n_in[n_row0 + 2 * a as u64 * kv_heads as u64]
                    };
                    let src = in0 + 2 * a as u64 * ld + col;
                    let ak = k_in.vload(src as u32);
                    let av = v_in.vload(src as u32);
                    for j in 0..8u32 {
                        kk[j] += n_a * ak[j] as f32;
                        vv[j] += n_a * av[j] as f32;
                    }
                    total += n_a;
                }
            }
            let inv = 1.0f32 / total;
            let dst = out * D as u64 + col;
            for j in 0..8u32 {
                k_out[dst + j as u64] = (kk[j] * inv) as T;
                v_out[dst + j as u64] = (vv[j] * inv) as T;
            }
            if col == 0 {
                n_out[out] = total;
            }
        }
    }
}

/// Standardises the first `rows` rows of a swizzled 64 × D shared tile of keys in place:
/// element `(r, c)` becomes `((x − mu[c])·wt[c])` stored as `T` (rows past `rows` stay
/// zero). Every one of the 256 threads calls it with its index `t`.
#[device]
pub fn standardise_tile<T: Float, const D: u32>(
    tile: &mut Shared<[T; 64 * D]>,
    rows: u32,
    mu: &Shared<[f32; D]>,
    wt: &Shared<[f32; D]>,
    t: u32,
) {
    for item in (t..rows * (D / 8)).step_by(256) {
        let r = item / (D / 8);
        let c = item % (D / 8) * 8;
        let at: u32 = swz::<D>(r, c);
        for e in 0..8u32 {
            tile[at + e] = (((tile[at + e] as f32) - mu[c + e]) * wt[c + e]) as T;
        }
    }
}

/// Copies token rows between caches laid out `[B, seq, width]`: rows `src_row0 ..` of `src`
/// (`src_seq` rows per sequence) to rows `dst_row0 ..` of `dst` (`dst_seq` per sequence),
/// `rows` of them per sequence; `width` is `H_kv·D` for keys and values and `H_kv` for the
/// sizes. With `fill`, writes 1 instead of reading `src` (the sizes of unmerged tokens).
/// The two ranges must not overlap. Grid `(⌈rows·width / 256⌉, B)`, 256 threads.
#[kernel(threads = 256, example(T = bf16), example(T = f32))]
pub fn chelsea_copy<T: Float>(
    src: &[T],
    dst: &mut [T],
    src_seq: u32,
    dst_seq: u32,
    src_row0: u32,
    dst_row0: u32,
    rows: u32,
    width: u32,
    fill: bool,
) {
    let i = block_idx().x * 256 + thread_idx().x;
    let b = block_idx().y as u64;
    if i < rows * width {
        let w = width as u64;
        let at = (b * dst_seq as u64 + dst_row0 as u64) * w + i as u64;
        if fill {
            dst[at] = 1.0;
        } else {
            dst[at] = src[(b * src_seq as u64 + src_row0 as u64) * w + i as u64];
        }
    }
}
