//! Chelsea's kernels against their float64 references: one round of soft matching on
//! random chunks with random sizes, whole compressions (prefill and incremental) through the
//! host API, and flash-decoding with the `log n` bias. Inputs are random (never all zero),
//! rounded to the element type; outputs are poisoned first.

use crate::attention::decode::{DecodeScratch, DecodeShape, FlashDecode};
use crate::chelsea::compress::{ChelseaCache, ChelseaConfig};
use crate::chelsea::kernels::{chelsea_round, ROUND_THREADS};
use crate::chelsea::reference::{self, CacheDims, CompressedRef, Entries, Method, Similarity};
use kiln_runtime::{Device, DeviceBuffer, LaunchConfig};

use crate::verify::{ensure, ensure_eq, rel_err, Real, Rng, VerifyError};

/// Relative-error bound of keys, values and attention outputs rounded to `T`.
fn tolerance<T: Real>() -> f64 {
    match T::DTYPE {
        kiln_codegen::Dtype::Bf16 => 1e-2,
        _ => 2e-3,
    }
}

fn random<T: Real>(rng: &mut Rng, n: usize) -> Vec<T> {
    rng.f32s(n).into_iter().map(T::from_f32).collect()
}

fn widen<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

fn rounder<T: Real>() -> impl Fn(f64) -> f64 {
    |x| T::from_f32(x as f32).to_f32() as f64
}

fn mismatch(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Mismatch(e.to_string())
}

/// One launch of [`chelsea_round`]: `chunks` chunks of `m` entries (from row 3 of a cache
/// with random sizes 1–4), `r` merges each, similarity `similarity`, written from row 5 of
/// poisoned outputs; keys, values and sizes against [`reference::merge_round`] per chunk.
/// Key channel 0 is constant (a zero spread: its standardised value must be 0) and channel
/// 1 carries a large offset (an outlier channel). With `nan_key`, the first key of every
/// chunk is NaN: its chunk must still keep exactly `m − r` entries with the reference's
/// sizes (keys and values, NaN there, are not compared). Rows outside the chunks' output
/// slots must keep their poison.
pub fn round_case<T: Real>(
    dev: &Device,
    (d, m, r, chunks): (usize, usize, usize, usize),
    similarity: Similarity,
    nan_key: bool,
    seed: u64,
) -> Result<(), VerifyError> {
    let (b, hk) = (2usize, 2usize);
    let (row_in, row_out) = (3usize, 5usize);
    let seq_in = row_in + chunks * m + 2;
    let seq_out = row_out + chunks * (m - r) + 1;
    let mut rng = Rng::new(seed);
    let mut k = random::<T>(&mut rng, b * seq_in * hk * d);
    for row in k.chunks_mut(d) {
        row[0] = T::from_f32(0.75);
        row[1] = T::from_f32(6.0 + row[1].to_f32());
    }
    if nan_key {
        for bb in 0..b {
            for c in 0..chunks {
                for h in 0..hk {
                    let at = ((bb * seq_in + row_in + c * m) * hk + h) * d;
                    k[at..at + d].fill(T::NAN);
                }
            }
        }
    }
    let v = random::<T>(&mut rng, b * seq_in * hk * d);
    let n: Vec<f32> = (0..b * seq_in * hk)
        .map(|_| (1 + rng.u32() % 4) as f32)
        .collect();
    let kernel = chelsea_round::spec().t(T::DTYPE).d(d as u32).build(dev)?;
    let mut k_out = dev.upload(&vec![T::NAN; b * seq_out * hk * d])?;
    let mut v_out = dev.upload(&vec![T::NAN; b * seq_out * hk * d])?;
    let mut n_out = dev.upload(&vec![f32::NAN; b * seq_out * hk])?;
    let cfg = LaunchConfig {
        grid: (chunks as u32, hk as u32, b as u32),
        block: (ROUND_THREADS, 1, 1),
        dyn_shared_bytes: 0,
    };
    chelsea_round::launch(
        &kernel,
        &cfg,
        &dev.upload(&k)?,
        &dev.upload(&v)?,
        &dev.upload(&n)?,
        &mut k_out,
        &mut v_out,
        &mut n_out,
        seq_in as u32,
        seq_out as u32,
        hk as u32,
        row_in as u32,
        row_out as u32,
        m as u32,
        r as u32,
        false,
        similarity == Similarity::Standardised,
    )?;
    let (kw, vw) = (widen(&k), widen(&v));
    let (got_k, got_v) = (widen(&dev.download(&k_out)?), widen(&dev.download(&v_out)?));
    let got_n = dev.download(&n_out)?;
    let round = rounder::<T>();
    let what = format!(
        "chelsea_round {:?} D={d} m={m} r={r} {similarity:?}",
        T::DTYPE
    );
    let (mut want_k, mut want_v, mut gk, mut gv) = (vec![], vec![], vec![], vec![]);
    for bb in 0..b {
        for h in 0..hk {
            let tok = |s: usize, seq: usize| (bb * seq + s) * hk + h;
            for c in 0..chunks {
                let rows = row_in + c * m..row_in + (c + 1) * m;
                let chunk = Entries {
                    k: rows
                        .clone()
                        .map(|s| kw[tok(s, seq_in) * d..][..d].to_vec())
                        .collect(),
                    v: rows
                        .clone()
                        .map(|s| vw[tok(s, seq_in) * d..][..d].to_vec())
                        .collect(),
                    n: rows.map(|s| n[tok(s, seq_in)] as f64).collect(),
                };
                let want = reference::merge_round(&chunk, r, similarity, &round);
                for (i, ((wk, wv), wn)) in want.k.iter().zip(&want.v).zip(&want.n).enumerate() {
                    let o = tok(row_out + c * (m - r) + i, seq_out);
                    ensure_eq!(
                        got_n[o] as f64,
                        *wn,
                        "{what}: size of entry {i} of chunk {c} (b {bb}, h {h})"
                    );
                    want_k.extend_from_slice(wk);
                    want_v.extend_from_slice(wv);
                    gk.extend_from_slice(&got_k[o * d..][..d]);
                    gv.extend_from_slice(&got_v[o * d..][..d]);
                }
            }
        }
    }
    for bb in 0..b {
        for h in 0..hk {
            for s in (0..row_out).chain(row_out + chunks * (m - r)..seq_out) {
                ensure!(
                    got_n[(bb * seq_out + s) * hk + h].is_nan(),
                    "{what}: row {s} (b {bb}, h {h}) lies outside the chunks' slots but was written"
                );
            }
        }
    }
    if nan_key {
        return Ok(());
    }
    let (ek, ev) = (rel_err(&gk, &want_k), rel_err(&gv, &want_v));
    let tol = tolerance::<T>();
    ensure!(
        ek < tol && ev < tol,
        "{what}: relative error K {ek:.2e}, V {ev:.2e} (bound {tol:.0e})"
    );
    Ok(())
}

/// The cache's first `len` entries: keys, values `[B, len, H_kv, D]` and sizes, as f64.
fn cache_entries<T: Real + kiln_runtime::prelude::Float>(
    dev: &Device,
    cache: &ChelseaCache<T>,
) -> Result<CompressedRef, VerifyError> {
    let c = cache.config();
    let (b, cap, hk, d) = (
        c.batch as usize,
        c.capacity as usize,
        c.kv_heads as usize,
        c.dim as usize,
    );
    let len = cache.len() as usize;
    let rows = |x: Vec<f64>, w: usize| -> Vec<f64> {
        (0..b)
            .flat_map(|bb| x[bb * cap * hk * w..][..len * hk * w].to_vec())
            .collect()
    };
    let sizes: Vec<f64> = dev
        .download(cache.counts())?
        .iter()
        .map(|x| *x as f64)
        .collect();
    Ok(CompressedRef {
        k: rows(widen(&dev.download(cache.keys())?), d),
        v: rows(widen(&dev.download(cache.values())?), d),
        n: rows(sizes, 1),
        len,
    })
}

/// Compresses a random prefill of `len` tokens through [`ChelseaCache::compress`] at
/// `ratio` (`len = 0`: none, the cache starts empty), then appends tokens one by one until
/// a chunk has been compressed incrementally; after each, the cache against
/// [`reference::compress`] of the tokens so far, and attention over it (with and without
/// the bias) against [`reference::decode`]. `method` is the round fraction and similarity.
pub fn cache_case<T: Real + kiln_runtime::prelude::Float>(
    dev: &Device,
    (d, chunk, len, ratio): (usize, u32, usize, f64),
    method: Method,
    seed: u64,
) -> Result<(), VerifyError> {
    let (b, h, hk, sink, recent) = (2usize, 4usize, 2usize, 3u32, 7u32);
    let cfg = ChelseaConfig {
        batch: b as u32,
        heads: h as u32,
        kv_heads: hk as u32,
        dim: d as u32,
        chunk,
        ratio,
        sink,
        recent,
        capacity: len as u32 + sink + chunk + recent + 4,
        round_fraction: method.fraction,
        similarity: method.similarity,
    };
    let mut rng = Rng::new(seed);
    let total = len + (sink + chunk + recent) as usize;
    let k_all = random::<T>(&mut rng, b * total * hk * d);
    let v_all = random::<T>(&mut rng, b * total * hk * d);
    let q = random::<T>(&mut rng, b * h * d);
    let row = hk * d;
    let prefix = |x: &[T], n: usize| -> Vec<T> {
        (0..b)
            .flat_map(|bb| x[bb * total * row..][..n * row].to_vec())
            .collect()
    };
    let token = |x: &[T], s: usize| -> Vec<T> {
        (0..b)
            .flat_map(|bb| x[(bb * total + s) * row..][..row].to_vec())
            .collect()
    };
    let mut cache = ChelseaCache::<T>::new(dev, cfg).map_err(mismatch)?;
    let what = format!(
        "chelsea cache {:?} D={d} chunk={chunk} ratio={ratio} prefill={len} {method:?}",
        <T as Real>::DTYPE
    );
    if len > 0 {
        cache
            .compress(
                &dev.upload(&prefix(&k_all, len))?,
                &dev.upload(&prefix(&v_all, len))?,
                len as u32,
            )
            .map_err(mismatch)?;
        compare_cache(
            dev,
            &mut cache,
            (&prefix(&k_all, len), &prefix(&v_all, len)),
            len,
            &q,
            &format!("{what} after prefill"),
        )?;
    }
    // append until an append does not grow the cache: a chunk was compressed
    let mut seen = len;
    let mut compressed = false;
    while !compressed && seen < total {
        let before = cache.len();
        cache
            .append(
                &dev.upload(&token(&k_all, seen))?,
                &dev.upload(&token(&v_all, seen))?,
            )
            .map_err(mismatch)?;
        seen += 1;
        compressed = cache.len() <= before;
    }
    ensure!(
        compressed,
        "{what}: {} appended tokens compressed no chunk",
        seen - len
    );
    compare_cache(
        dev,
        &mut cache,
        (&prefix(&k_all, seen), &prefix(&v_all, seen)),
        seen,
        &q,
        &format!("{what} after {} appended tokens", seen - len),
    )
}

/// The cache against the reference compression of `seen` raw tokens, and attention over it.
fn compare_cache<T: Real + kiln_runtime::prelude::Float>(
    dev: &Device,
    cache: &mut ChelseaCache<T>,
    (k, v): (&[T], &[T]),
    seen: usize,
    q: &[T],
    what: &str,
) -> Result<(), VerifyError> {
    let c = *cache.config();
    let dims = CacheDims {
        batch: c.batch as usize,
        seq: seen,
        kv_heads: c.kv_heads as usize,
        dim: c.dim as usize,
    };
    let want = reference::compress(
        dims,
        &widen(k),
        &widen(v),
        (c.chunk as usize, c.keep() as usize),
        (c.sink as usize, c.recent as usize),
        c.method(),
        &rounder::<T>(),
    );
    ensure_eq!(cache.len() as usize, want.len, "{what}: entries");
    let got = cache_entries(dev, cache)?;
    ensure!(got.n == want.n, "{what}: sizes differ from the reference");
    let tol = tolerance::<T>();
    let (ek, ev) = (rel_err(&got.k, &want.k), rel_err(&got.v, &want.v));
    ensure!(
        ek < tol && ev < tol,
        "{what}: relative error K {ek:.2e}, V {ev:.2e} (bound {tol:.0e})"
    );
    let (b, h, d) = (c.batch as usize, c.heads as usize, c.dim as usize);
    let scale = 1.0 / (d as f64).sqrt();
    let q_dev = dev.upload(q)?;
    let mut out = dev.upload(&vec![T::NAN; b * h * d])?;
    let mut lse = dev.upload(&vec![f32::NAN; b * h])?;
    for bias in [false, true] {
        cache
            .attend(&q_dev, &mut out, &mut lse, bias)
            .map_err(mismatch)?;
        let got = widen(&dev.download(&out)?);
        let (o, _) = reference::decode(
            (b, h, c.kv_heads as usize),
            want.len,
            d,
            &widen(q),
            &want.k,
            &want.v,
            bias.then_some(&want.n[..]),
            want.len,
            scale,
        );
        let e = rel_err(&got, &o);
        ensure!(
            e < tol,
            "{what}: attention (bias {bias}) relative error {e:.2e} (bound {tol:.0e})"
        );
    }
    Ok(())
}

/// Flash-decoding with the `log n` bias over a random cache with random sizes 1–8, many
/// splits and a partial last tile, against the reference.
pub fn biased_decode_case<T: Real>(
    dev: &Device,
    s: DecodeShape,
    chunk: Option<u32>,
    seed: u64,
) -> Result<(), VerifyError> {
    let (b, h, hk, seq, d) = (
        s.batch as usize,
        s.heads as usize,
        s.kv_heads as usize,
        s.seq as usize,
        s.dim as usize,
    );
    let mut rng = Rng::new(seed);
    let q = random::<T>(&mut rng, b * h * d);
    let k = random::<T>(&mut rng, b * seq * hk * d);
    let v = random::<T>(&mut rng, b * seq * hk * d);
    let n: Vec<f32> = (0..b * seq * hk)
        .map(|_| (1 + rng.u32() % 8) as f32)
        .collect();
    let n_keys = s.seq - 3;
    let scale = 1.0 / (d as f64).sqrt();
    let mut decode = FlashDecode::with_counts(dev, T::DTYPE, s.dim, false).map_err(mismatch)?;
    decode.chunk = chunk;
    let mut o: DeviceBuffer<T> = dev.upload(&vec![T::NAN; b * h * d])?;
    let mut lse = dev.upload(&vec![f32::NAN; b * h])?;
    let mut scratch = DecodeScratch::new(dev, 1, d)?;
    decode
        .run_with_counts(
            &s,
            &dev.upload(&q)?,
            &dev.upload(&k)?,
            &dev.upload(&v)?,
            None,
            Some(&dev.upload(&n)?),
            n_keys,
            scale as f32,
            &mut o,
            &mut lse,
            &mut scratch,
        )
        .map_err(mismatch)?;
    let nw: Vec<f64> = n.iter().map(|x| *x as f64).collect();
    let (want_o, want_lse) = reference::decode(
        (b, h, hk),
        seq,
        d,
        &widen(&q),
        &widen(&k),
        &widen(&v),
        Some(&nw),
        n_keys as usize,
        scale,
    );
    let got_lse: Vec<f64> = dev.download(&lse)?.iter().map(|x| *x as f64).collect();
    let (eo, el) = (
        rel_err(&widen(&dev.download(&o)?), &want_o),
        rel_err(&got_lse, &want_lse),
    );
    let tol = tolerance::<T>();
    ensure!(
        eo < tol && el < 1e-5,
        "flash_decode with sizes {:?} {s:?} chunk={chunk:?}: relative error O {eo:.2e} (bound {tol:.0e}), LSE {el:.2e}",
        T::DTYPE
    );
    Ok(())
}

/// Every Chelsea kernel: rounds at D 64/128, bf16/f16, both similarities, chunk sizes with
/// odd halves and two passes; compressions at 50%, 75% and 80% with an incremental chunk
/// (round fractions ½, ¼ and ⅛), and one of a cache filled by appends alone; the biased
/// decode. Larger shapes on a GPU.
pub fn chelsea_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let big = dev.is_gpu();
    let (plain, std) = (Similarity::Cosine, Similarity::Standardised);
    round_case::<half::bf16>(dev, (128, 64, 32, 3), std, false, 31)?;
    round_case::<half::bf16>(dev, (128, 64, 16, 3), plain, false, 40)?;
    round_case::<half::f16>(dev, (64, 27, 9, 2), std, false, 32)?;
    round_case::<half::f16>(dev, (64, 27, 9, 2), plain, false, 41)?;
    // a NaN key in every chunk, with both similarities
    round_case::<half::bf16>(dev, (128, 64, 16, 2), std, true, 42)?;
    round_case::<half::bf16>(dev, (128, 64, 16, 2), plain, true, 43)?;
    round_case::<half::bf16>(
        dev,
        (64, if big { 512 } else { 300 }, 100, 2),
        std,
        false,
        33,
    )?;
    let len = if big { 3000 } else { 200 };
    let method = |fraction, similarity| Method {
        fraction,
        similarity,
    };
    cache_case::<half::bf16>(dev, (128, 64, len, 0.5), method(0.5, plain), 34)?;
    cache_case::<half::f16>(dev, (64, 64, len, 0.75), method(0.25, std), 35)?;
    let chunk = if big { 256 } else { 64 };
    cache_case::<half::bf16>(dev, (64, chunk, len, 0.8), method(0.125, std), 36)?;
    cache_case::<half::f16>(dev, (128, 64, 0, 0.8), method(0.25, std), 39)?;
    let shape = |dim| DecodeShape {
        batch: 2,
        heads: 8,
        kv_heads: 2,
        seq: if big { 5000 } else { 300 },
        dim,
    };
    biased_decode_case::<half::bf16>(dev, shape(128), Some(48), 37)?;
    // more splits than decode_merge's lanes take in one round trip (64 rows at D = 128,
    // 128 at D = 64), so its loop runs twice
    let long = |dim, seq| DecodeShape { seq, ..shape(dim) };
    biased_decode_case::<half::bf16>(dev, long(128, 1200), Some(16), 42)?;
    biased_decode_case::<half::f16>(dev, long(64, 2200), Some(16), 43)?;
    biased_decode_case::<half::f16>(dev, shape(64), None, 38)
}
