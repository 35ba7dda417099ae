//! The tile layer: warp-level building blocks for tensor-core kernels, written in Kiln.
//!
//! Conventions (all of them follow `mma.sync` m16n8k16, f16/bf16 inputs, f32 accumulation):
//! - A warp owns a *strip* of 16 rows. A lane holds rows `lane / 4` and `lane / 4 + 8` of
//!   every accumulator (`FragC` registers 0–1 and 2–3) and columns `2·(lane % 4)` and `+1`.
//! - A strip of scores or outputs is a `[FragC; N]` (16 × 8N); a strip of an A operand is a
//!   `[FragA<T>; K]` (16 × 16K).
//! - Shared tiles are one-dimensional shared arrays of `R × W` elements holding a row-major
//!   `R × W` block *swizzled* by [`swz`]: no padding, and both the eight rows an `ldmatrix`
//!   reads and the rows a warp's `cp_async` copies write fall in distinct banks.
//! - Loads that cover a whole tile are block-level (`THREADS` threads, each with its index
//!   `t`); fragment loads and `mma` are warp-level.

use kiln::prelude::*;
use kiln_dsl::device;

/// Offset of element `(row, col)` of a swizzled shared tile with `W` columns (`W` = 32 or a
/// multiple of 64 halves): the 16-byte chunk `col / 8` of a row is stored at chunk
/// `col / 8 ^ f(row)`, which spreads any eight consecutive rows over all 32 banks.
#[device]
pub fn swz<const W: u32>(row: u32, col: u32) -> u32 {
    let flip = if W >= 64 { row % 8 } else { row / 2 % 4 };
    row * W + (col / 8 ^ flip) * 8 + col % 8
}

/// Starts asynchronous 16-byte copies of an `R × W` block of a row-major global matrix into
/// the swizzled shared tile `tile`: tile element `(r, c)` comes from `src[base + r·ld + c]`.
/// Elements of rows at or past `rows`, or of columns at or past `cols`, are zero-filled (tails;
/// `cols` must be a multiple of 8). Every one of the `THREADS` threads calls it with its
/// index `t`; commit the group and wait for it as usual.
#[device]
pub fn load_tile_async<T: Float, const R: u32, const W: u32, const THREADS: u32>(
    tile: &mut Shared<[T; R * W]>,
    src: &[T],
    base: u64,
    ld: u64,
    rows: u32,
    cols: u32,
    t: u32,
) {
    for v in (t..R * W / 8).step_by(THREADS) {
        let r = v / (W / 8);
        let c = v % (W / 8) * 8;
        let at: u32 = swz::<W>(r, c);
        if r < rows && c < cols {
            cp_async(&mut tile[at], &src[base + r as u64 * ld + c as u64]);
        } else {
            for e in 0..8u32 {
                tile[at + e] = 0.0;
            }
        }
    }
}

/// Like [`load_tile_async`] for rows picked by an index list: tile row `r < rows` comes from
/// global row `ids[id0 + r]`, i.e. `src[base + ids[id0 + r]·ld + c]`; rows at or past `rows`
/// are zero-filled. Sparse attention gathers the selected keys with it.
#[device]
pub fn gather_tile_async<T: Float, const R: u32, const W: u32, const THREADS: u32>(
    tile: &mut Shared<[T; R * W]>,
    src: &[T],
    ids: &[u32],
    id0: u32,
    rows: u32,
    base: u64,
    ld: u64,
    t: u32,
) {
    for v in (t..R * W / 8).step_by(THREADS) {
        let r = v / (W / 8);
        let c = v % (W / 8) * 8;
        let at: u32 = swz::<W>(r, c);
        if r < rows {
            let row = ids[id0 + r] as u64;
            cp_async(&mut tile[at], &src[base + row * ld + c as u64]);
        } else {
            for e in 0..8u32 {
                tile[at + e] = 0.0;
            }
        }
    }
}

/// The A fragment (16 × 16) at `(row0, col0)` of a swizzled row-major tile.
#[device]
pub fn load_a<T: Float, const W: u32, const S: u32>(
    tile: &Shared<[T; S]>,
    row0: u32,
    col0: u32,
) -> FragA<T> {
    let lane = lane_id();
    ldmatrix_x4::<T>(&tile[swz::<W>(row0 + lane % 16, col0 + lane / 16 * 8)])
}

/// Two B fragments (16 × 8, k × n) at once, for columns `n0 ..` and `n0 + 8 ..` from row
/// `k0` of a tile stored k-major (a row per k: V in P·V, a row-major B in A·B), with one
/// `ldmatrix.x4.trans`: split them with [`b_lo`] and [`b_hi`].
#[device]
pub fn load_b_pair<T: Float, const W: u32, const S: u32>(
    tile: &Shared<[T; S]>,
    k0: u32,
    n0: u32,
) -> FragA<T> {
    let lane = lane_id();
    ldmatrix_x4_trans::<T>(&tile[swz::<W>(k0 + lane % 16, n0 + lane / 16 * 8)])
}

/// Two B fragments (16 × 8, k × n) at once, whose columns are rows `n0 ..` and `n0 + 8 ..`
/// from column `k0` of a tile stored n-major (a row per n: K in Q·Kᵀ, a column-major B),
/// with one `ldmatrix.x4`: split them with [`b_lo`] and [`b_hi`].
#[device]
pub fn load_bt_pair<T: Float, const W: u32, const S: u32>(
    tile: &Shared<[T; S]>,
    n0: u32,
    k0: u32,
) -> FragA<T> {
    let lane = lane_id();
    ldmatrix_x4::<T>(&tile[swz::<W>(n0 + lane / 16 * 8 + lane % 8, k0 + lane / 8 % 2 * 8)])
}

/// The first B fragment of a pair from [`load_b_pair`] / [`load_bt_pair`] (registers 0–1).
#[device]
pub fn b_lo<T: Float>(pair: FragA<T>) -> FragB<T> {
    let mut b = frag_b_zero::<T>();
    b[0] = pair[0];
    b[1] = pair[1];
    b
}

/// The second B fragment of a pair (registers 2–3).
#[device]
pub fn b_hi<T: Float>(pair: FragA<T>) -> FragB<T> {
    let mut b = frag_b_zero::<T>();
    b[0] = pair[2];
    b[1] = pair[3];
    b
}

/// The A fragments of the 16-row strip at `row0` of a swizzled tile, all `16·K` columns.
#[device]
pub fn load_a_strip<T: Float, const W: u32, const K: u32, const S: u32>(
    dst: &mut [FragA<T>; K],
    tile: &Shared<[T; S]>,
    row0: u32,
) {
    for kk in 0..K {
        dst[kk] = load_a::<T, W>(&tile, row0, kk * 16);
    }
}

/// `acc += a · bᵀ` for a strip: `acc[j]` (16 × 8) gains the products of the strip `a`
/// (16 × 16K) with rows `n0 + 8j ..` of the n-major tile `b` (Q·Kᵀ: scores of 8N keys).
#[device]
pub fn mma_abt<T: Float, const W: u32, const N: u32, const K: u32, const S: u32>(
    acc: &mut [FragC; N],
    a: &[FragA<T>; K],
    b: &Shared<[T; S]>,
    n0: u32,
) {
    for kk in 0..K {
        for j in (0..N).step_by(2) {
            let pair: FragA<T> = load_bt_pair::<T, W>(&b, n0 + j * 8, kk * 16);
            acc[j] = mma(a[kk], b_lo(pair), acc[j]);
            acc[j + 1] = mma(a[kk], b_hi(pair), acc[j + 1]);
        }
    }
}

/// `acc += a · b` for a strip: `acc[j]` (16 × 8, columns `8j ..` of the output) gains the
/// products of the strip `a` (16 × 16K) with rows `k0 ..` of the k-major tile `b` (P·V).
#[device]
pub fn mma_ab<T: Float, const W: u32, const N: u32, const K: u32, const S: u32>(
    acc: &mut [FragC; N],
    a: &[FragA<T>; K],
    b: &Shared<[T; S]>,
    k0: u32,
) {
    for kk in 0..K {
        for j in (0..N).step_by(2) {
            let pair: FragA<T> = load_b_pair::<T, W>(&b, k0 + kk * 16, j * 8);
            acc[j] = mma(a[kk], b_lo(pair), acc[j]);
            acc[j + 1] = mma(a[kk], b_hi(pair), acc[j + 1]);
        }
    }
}

/// Maximum over the four lanes that hold the same rows of a strip.
#[device]
pub fn quad_max(v: f32) -> f32 {
    let a = v.max(shfl_xor_sync(0xffff_ffff, v, 1));
    a.max(shfl_xor_sync(0xffff_ffff, a, 2))
}

/// Sum over the four lanes that hold the same rows of a strip.
#[device]
pub fn quad_sum(v: f32) -> f32 {
    let a = v + shfl_xor_sync(0xffff_ffff, v, 1);
    a + shfl_xor_sync(0xffff_ffff, a, 2)
}

/// Row maxima of a strip: `m[0]` for row `lane / 4`, `m[1]` for row `lane / 4 + 8`, over
/// the whole 8N columns (reduced across the quad).
#[device]
pub fn row_max<const N: u32>(s: &[FragC; N], m: &mut [f32; 2]) {
    for h in 0..2u32 {
        let mut x = f32::NEG_INFINITY;
        for j in 0..N {
            x = x.max(s[j][2 * h]).max(s[j][2 * h + 1]);
        }
        m[h] = quad_max(x);
    }
}

/// This lane's share of the row sums of a strip (its two columns of every fragment); the
/// full sums are `quad_sum` of it.
#[device]
pub fn row_sum_partial<const N: u32>(s: &[FragC; N], l: &mut [f32; 2]) {
    for h in 0..2u32 {
        let mut x = 0.0f32;
        for j in 0..N {
            x += s[j][2 * h] + s[j][2 * h + 1];
        }
        l[h] = x;
    }
}

/// Multiplies every score of a strip by `c` (the softmax scale times log2(e), so that the
/// rest of the softmax uses `exp2`).
#[device]
pub fn scale_strip<const N: u32>(s: &mut [FragC; N], c: f32) {
    for j in 0..N {
        for r in 0..4u32 {
            s[j][r] *= c;
        }
    }
}

/// Sets to −∞ the scores a query may not see: columns (keys) at or past `n_keys`, and when
/// `causal`, keys after the query (key `k` is visible to query `q` when `k ≤ q + offset`).
/// The strip's rows are queries `q0 ..`, its columns keys `k0 ..`.
#[device]
pub fn mask_strip<const N: u32>(
    s: &mut [FragC; N],
    q0: u32,
    k0: u32,
    n_keys: u32,
    causal: bool,
    offset: u32,
) {
    let lane = lane_id();
    for j in 0..N {
        for r in 0..4u32 {
            let q = q0 + lane / 4 + r / 2 * 8;
            let key = k0 + j * 8 + lane % 4 * 2 + r % 2;
            if key >= n_keys || (causal && key > q + offset) {
                s[j][r] = f32::NEG_INFINITY;
            }
        }
    }
}

/// One step of the online softmax over a strip of scores already in log2 units: updates
/// the running row maxima `m` and this lane's partial row sums `l`, rescales the output
/// strip `o`, and replaces `s` by the probabilities `exp2(s − m)`.
#[device]
pub fn online_softmax<const N: u32, const NO: u32>(
    s: &mut [FragC; N],
    m: &mut [f32; 2],
    l: &mut [f32; 2],
    o: &mut [FragC; NO],
) {
    let mut mx = [0.0f32; 2];
    row_max::<N>(&s, &mut mx);
    for h in 0..2u32 {
        let m_new = m[h].max(mx[h]);
        // a row that has seen only masked scores keeps m = −∞: subtract 0 so exp2 gives 0
        let base = if m_new == f32::NEG_INFINITY {
            0.0f32
        } else {
            m_new
        };
        let alpha = (m[h] - base).exp2();
        m[h] = m_new;
        for j in 0..NO {
            o[j][2 * h] *= alpha;
            o[j][2 * h + 1] *= alpha;
        }
        for j in 0..N {
            s[j][2 * h] = (s[j][2 * h] - base).exp2();
            s[j][2 * h + 1] = (s[j][2 * h + 1] - base).exp2();
        }
        l[h] *= alpha;
    }
    let mut add = [0.0f32; 2];
    row_sum_partial::<N>(&s, &mut add);
    l[0] += add[0];
    l[1] += add[1];
}

/// A strip of probabilities (accumulator layout, 16 × 8N) as the A operand of P·V
/// (16 × 16K with K = N / 2), rounded to `T`.
#[device]
pub fn to_a<T: Float, const N: u32, const K: u32>(s: &[FragC; N], p: &mut [FragA<T>; K]) {
    for k in 0..K {
        p[k][0] = pack2::<T>(s[2 * k][0], s[2 * k][1]);
        p[k][1] = pack2::<T>(s[2 * k][2], s[2 * k][3]);
        p[k][2] = pack2::<T>(s[2 * k + 1][0], s[2 * k + 1][1]);
        p[k][3] = pack2::<T>(s[2 * k + 1][2], s[2 * k + 1][3]);
    }
}

/// Writes a 16 × 8N strip, each row divided by `l` (`l[0]` for row `lane / 4`, `l[1]` for
/// row `lane / 4 + 8`), as `T`: row `r` goes to `out[base + r·ld ..]`; rows at or past
/// `rows` are skipped.
#[device]
pub fn store_strip<T: Float, const N: u32>(
    o: &[FragC; N],
    l: &[f32; 2],
    out: &mut [T],
    base: u64,
    ld: u64,
    rows: u32,
) {
    let lane = lane_id();
    let mut at = [0xffff_ffff_ffff_ffffu64; 2];
    for h in 0..2u32 {
        let r = lane / 4 + h * 8;
        if r < rows {
            at[h] = base + r as u64 * ld;
        }
    }
    store_strip_rows::<T, N>(&o, &l, out, &at);
}

/// Writes a 16 × 8N strip, each row divided by `l`, as `T`, to rows anywhere in `out`:
/// this lane's row `lane / 4 + 8h` starts at `out[at[h]]` (`u64::MAX`: not written).
/// Un-permuting attention outputs (rows scattered by an index) uses it directly.
#[device]
pub fn store_strip_rows<T: Float, const N: u32>(
    o: &[FragC; N],
    l: &[f32; 2],
    out: &mut [T],
    at: &[u64; 2],
) {
    let lane = lane_id();
    for h in 0..2u32 {
        if at[h] != 0xffff_ffff_ffff_ffffu64 {
            // a row that saw only masked keys (l = 0) stores 0, not 0/0
            let inv = if l[h] > 0.0 { 1.0f32 / l[h] } else { 0.0f32 };
            let row = at[h] + (lane % 4 * 2) as u64;
            for j in 0..N {
                let e = row + (j * 8) as u64;
                out[e] = (o[j][2 * h] * inv) as T;
                out[e + 1] = (o[j][2 * h + 1] * inv) as T;
            }
        }
    }
}

/// One 16-deep step of a warp's `(16·M) × (8·N)` block of `C = A·B`: `acc[i][j]` gains
/// A(rows `a_row0 + 16i ..`, columns `k0 ..`) · B(rows `k0 ..`, columns `b_n0 + 8j ..`). The
/// A tile is row-major; the B tile is k-major, or n-major (a column-major B) when `BT`.
/// Each fragment is loaded once and used M or N times.
#[device]
pub fn mma_block<
    T: Float,
    const WA: u32,
    const WB: u32,
    const BT: bool,
    const M: u32,
    const N: u32,
    const SA: u32,
    const SB: u32,
>(
    acc: &mut [[FragC; N]; M],
    a: &Shared<[T; SA]>,
    a_row0: u32,
    b: &Shared<[T; SB]>,
    b_n0: u32,
    k0: u32,
) {
    let mut fa = [frag_a_zero::<T>(); M];
    for i in 0..M {
        fa[i] = load_a::<T, WA>(&a, a_row0 + i * 16, k0);
    }
    for j in (0..N).step_by(2) {
        let pair: FragA<T> = if BT {
            load_bt_pair::<T, WB>(&b, b_n0 + j * 8, k0)
        } else {
            load_b_pair::<T, WB>(&b, k0, b_n0 + j * 8)
        };
        let lo: FragB<T> = b_lo(pair);
        let hi: FragB<T> = b_hi(pair);
        for i in 0..M {
            acc[i][j] = mma(fa[i], lo, acc[i][j]);
            acc[i][j + 1] = mma(fa[i], hi, acc[i][j + 1]);
        }
    }
}

/// `acc[i] += p[i] · b` for M strips at once: `acc[i][j]` (columns `8j ..`) gains strip
/// `p[i]` (16 × 16K, in registers: probabilities) times rows `k0 ..` of the k-major tile `b`
/// (P·V). Each B fragment is loaded once and used by all M strips.
#[device]
pub fn mma_ab_block<
    T: Float,
    const W: u32,
    const M: u32,
    const N: u32,
    const K: u32,
    const S: u32,
>(
    acc: &mut [[FragC; N]; M],
    p: &[[FragA<T>; K]; M],
    b: &Shared<[T; S]>,
    k0: u32,
) {
    for kk in 0..K {
        for j in (0..N).step_by(2) {
            let pair: FragA<T> = load_b_pair::<T, W>(&b, k0 + kk * 16, j * 8);
            let lo: FragB<T> = b_lo(pair);
            let hi: FragB<T> = b_hi(pair);
            for i in 0..M {
                acc[i][j] = mma(p[i][kk], lo, acc[i][j]);
                acc[i][j + 1] = mma(p[i][kk], hi, acc[i][j + 1]);
            }
        }
    }
}

/// Writes a warp's `(16·M) × (8·N)` block of f32 accumulators to the row-major `c` (`ldc`
/// columns) at `(row0, col0)`, skipping rows at or past `rows` and columns at or past `cols`.
#[device]
pub fn store_block<const M: u32, const N: u32>(
    acc: &[[FragC; N]; M],
    c: &mut [f32],
    row0: u32,
    col0: u32,
    ldc: u32,
    rows: u32,
    cols: u32,
) {
    store_block_as::<f32, M, N, false>(&acc, c, row0, col0, ldc, rows, cols);
}

/// [`store_block`] into `T` (rounded), through SiLU (`x·σ(x)`) first when `SILU` — the
/// epilogue of an expert's up projection.
#[device]
pub fn store_block_as<T: Float, const M: u32, const N: u32, const SILU: bool>(
    acc: &[[FragC; N]; M],
    c: &mut [T],
    row0: u32,
    col0: u32,
    ldc: u32,
    rows: u32,
    cols: u32,
) {
    let lane = lane_id();
    for i in 0..M {
        for h in 0..2u32 {
            let r = row0 + i * 16 + lane / 4 + h * 8;
            if r < rows {
                for j in 0..N {
                    let col = col0 + j * 8 + lane % 4 * 2;
                    if col < cols {
                        let at = r as u64 * ldc as u64 + col as u64;
                        for e in 0..2u32 {
                            let mut x = acc[i][j][2 * h + e];
                            if SILU {
                                x = x / (1.0f32 + (-x).exp());
                            }
                            c[at + e as u64] = x as T;
                        }
                    }
                }
            }
        }
    }
}
