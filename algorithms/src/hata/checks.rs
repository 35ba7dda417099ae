//! HATA's encode, score and cache-append kernels against their plain-Rust references.

use crate::attention::reference as attention_reference;
use crate::hata::append::{hata_append, THREADS as APPEND_THREADS};
use crate::hata::decoder::{Budget, HataConfig, HataLayer, SCORE_GRANULE};
use crate::hata::encode::{
    self, group_launch, hash_encode, hash_encode_group, key_mean, key_sum_partial, mean_launch,
    scatter_rows, MEAN_TOKENS, VECTORS_PER_WARP,
};
use crate::hata::reference;
use crate::hata::score::{self, hash_score};
use kiln_runtime::{Device, LaunchConfig};

use crate::verify::{ensure, ensure_eq, rel_err, Real, Rng, VerifyError};

/// Codes must match bit for bit, except columns whose dot product is within f32 rounding of
/// zero (the kernel sums in f32, the reference in f64).
fn codes_match(
    what: &str,
    got: &[u32],
    x: &[f64],
    w: &[f64],
    rbit: usize,
) -> Result<(), VerifyError> {
    let want = reference::encode(x, w, rbit);
    let proj = reference::projections(x, w, rbit);
    let scale: f64 = x.iter().map(|v| v.abs()).sum::<f64>() + 1.0;
    for j in 0..rbit {
        let (g, e) = (got[j / 32] >> (j % 32) & 1, want[j / 32] >> (j % 32) & 1);
        ensure!(
            g == e || proj[j].abs() < 1e-5 * scale,
            "{what}: bit {j} is {g}, want {e} (projection {:.3e})",
            proj[j]
        );
    }
    Ok(())
}

/// A key's code (as [`codes_match`]) and its norm (relative 1e-5) against the reference.
fn key_matches(
    what: &str,
    (code, norm): (&[u32], f32),
    x: &[f64],
    w: &[f64],
    rbit: usize,
) -> Result<(), VerifyError> {
    codes_match(what, code, x, w, rbit)?;
    let want = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    ensure!(
        ((norm as f64) - want).abs() <= 1e-5 * want,
        "{what}: norm {norm} want {want}"
    );
    Ok(())
}

/// Encodes a cache of keys (centred on a random mean per sequence and KV head) and a step's
/// query heads (not centred), scores the keys, appends a new key (centred); computes the mean
/// keys with `key_sum_partial` + `key_mean`; `rbit` 128 or 256, D 64 or 128, `hk` KV heads
/// with GQA groups of 4.
pub fn hata_kernels_case<T: Real>(
    dev: &Device,
    d: usize,
    rbit: usize,
    hk: usize,
    seed: u64,
) -> Result<(), VerifyError> {
    let (b, s, g) = (2usize, 600usize, 4usize);
    let h = hk * g;
    let words = rbit / 32;
    let mut rng = Rng::new(seed);
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let keys: Vec<T> = round(rng.f32s(b * s * hk * d));
    let queries: Vec<T> = round(rng.f32s(b * h * d));
    let w: Vec<f32> = rng.f32s(hk * d * rbit);
    let wide = |v: &[T]| -> Vec<f64> { v.iter().map(|x| x.to_f32() as f64).collect() };
    let (kw, qw) = (wide(&keys), wide(&queries));
    let ww: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let w_dev = dev.upload(&w)?;
    // centres [B, H_kv, D]: keys are encoded as k − μ
    let mu: Vec<f32> = rng.f32s(b * hk * d);
    let mu_dev = dev.upload(&mu)?;
    let centred = |x: &[f64], bb: usize, hh: usize| -> Vec<f64> {
        let m = &mu[(bb * hk + hh) * d..][..d];
        x.iter().zip(m).map(|(v, c)| v - *c as f64).collect()
    };
    // keys with 8 vectors per warp (prefill); a decode step's query heads by GQA group
    let encode = hash_encode::spec()
        .t(T::DTYPE)
        .d(d as u32)
        .rbit(rbit as u32)
        .v(VECTORS_PER_WARP)
        .build(dev)?;
    let encode_group = |g: usize| {
        hash_encode_group::spec()
            .t(T::DTYPE)
            .d(d as u32)
            .rbit(rbit as u32)
            .g(g as u32)
            .build(dev)
    };
    // keys: cache layout [B, S, H_kv, D] → codes [B, S, H_kv, words], norms [B, S, H_kv]
    let n_keys = (b * s * hk) as u32;
    let mut k_codes = dev.upload(&vec![0xdead_beefu32; b * s * hk * words])?;
    let mut norms = dev.upload(&vec![f32::NAN; b * s * hk])?;
    let per_batch = (s * hk) as u32;
    hash_encode::launch(
        &encode,
        &encode::launch_config(n_keys, hk as u32),
        &dev.upload(&keys)?,
        &w_dev,
        &mu_dev,
        true,
        &mut k_codes,
        &mut norms,
        n_keys,
        hk as u32,
        1,
        per_batch,
        per_batch,
        0,
        per_batch,
        0,
        true,
    )?;
    let k_codes_host = dev.download(&k_codes)?;
    let norms_host = dev.download(&norms)?;
    // the same keys from token `r0` on, read in place from the cache layout (the catch-up
    // after dense steps): rows past `r0` match the prefill's, the rest stay poisoned
    let r0 = 37usize;
    let tail = ((s - r0) * hk) as u32;
    let mut tail_codes = dev.upload(&vec![0xdead_beefu32; b * s * hk * words])?;
    let mut tail_norms = dev.upload(&vec![f32::NAN; b * s * hk])?;
    let row0 = (r0 * hk) as u32;
    hash_encode::launch(
        &encode,
        &encode::launch_config(b as u32 * tail, hk as u32),
        &dev.upload(&keys)?,
        &w_dev,
        &mu_dev,
        true,
        &mut tail_codes,
        &mut tail_norms,
        b as u32 * tail,
        hk as u32,
        1,
        tail,
        per_batch,
        row0,
        per_batch,
        row0,
        true,
    )?;
    let (tail_codes, tail_norms) = (dev.download(&tail_codes)?, dev.download(&tail_norms)?);
    for row in 0..b * s * hk {
        let (want_code, want_norm) = if row % (s * hk) >= r0 * hk {
            (&k_codes_host[row * words..][..words], norms_host[row])
        } else {
            (&[0xdead_beefu32; 8][..words], f32::NAN)
        };
        ensure_eq!(
            &tail_codes[row * words..][..words],
            want_code,
            "codes of row {row} encoded from token {r0} on"
        );
        ensure!(
            tail_norms[row].to_bits() == want_norm.to_bits(),
            "norm of row {row} encoded from token {r0} on: {}, want {want_norm}",
            tail_norms[row]
        );
    }
    for row in 0..b * s * hk {
        let head = row % hk;
        let x = centred(&kw[row * d..][..d], row / (s * hk), head);
        let wh = &ww[head * d * rbit..][..d * rbit];
        key_matches(
            &format!("key row {row}"),
            (&k_codes_host[row * words..][..words], norms_host[row]),
            &x,
            wh,
            rbit,
        )?;
    }
    // the mean key of each (sequence, KV head) over the first `len` tokens
    let len = s - 7;
    let (sums, mean, splits) = mean_launch(len as u32, b as u32, hk as u32, d as u32);
    let mut partial = dev.upload(&vec![f32::NAN; b * hk * splits as usize * d])?;
    let mut means = dev.upload(&vec![f32::NAN; b * hk * d])?;
    let k_dev = dev.upload(&keys)?;
    let sum_kernel = key_sum_partial::spec()
        .t(T::DTYPE)
        .d(d as u32)
        .span(MEAN_TOKENS)
        .build(dev)?;
    // keys of `len` tokens in prefill layout [B, len, H_kv, D]
    let prefix: Vec<T> = (0..b)
        .flat_map(|bb| keys[bb * s * hk * d..][..len * hk * d].iter().copied())
        .collect();
    let prefix_dev = dev.upload(&prefix)?;
    drop(k_dev);
    key_sum_partial::launch(
        &sum_kernel,
        &sums,
        &prefix_dev,
        &mut partial,
        len as u32,
        hk as u32,
    )?;
    let mean_kernel = key_mean::spec().d(d as u32).build(dev)?;
    key_mean::launch(
        &mean_kernel,
        &mean,
        &partial,
        &mut means,
        splits,
        len as u32,
    )?;
    let got_mean: Vec<f64> = dev.download(&means)?.iter().map(|&x| x as f64).collect();
    let want_mean: Vec<f64> = (0..b * hk * d)
        .map(|i| {
            let (bb, hh, c) = (i / (hk * d), i / d % hk, i % d);
            (0..len)
                .map(|t| kw[((bb * s + t) * hk + hh) * d + c])
                .sum::<f64>()
                / len as f64
        })
        .collect();
    let e = rel_err(&got_mean, &want_mean);
    ensure!(e < 1e-5, "key means: relative error {e:.2e}");
    // queries [B, H, D] → codes [B, H, words], head h uses KV head h / g
    let mut q_codes = dev.upload(&vec![0xdead_beefu32; b * h * words])?;
    let mut unused = dev.zeros::<f32>(1)?;
    hash_encode_group::launch(
        &encode_group(g)?,
        &group_launch(hk as u32, b as u32, rbit as u32),
        &dev.upload(&queries)?,
        &w_dev,
        &mu_dev,
        false,
        &mut q_codes,
        &mut unused,
        hk as u32,
        h as u32,
        h as u32,
        0,
        false,
    )?;
    let q_codes_host = dev.download(&q_codes)?;
    for row in 0..b * h {
        let head = (row % h) / g;
        codes_match(
            &format!("query row {row}"),
            &q_codes_host[row * words..][..words],
            &qw[row * d..][..d],
            &ww[head * d * rbit..][..d * rbit],
            rbit,
        )?;
    }
    // scores of `cols` columns with the cache length `n = len + ahead` in device memory, sink
    // 3, recent 5, with norms: HATA's use (recent kept, +∞) and CLO's (left out, −∞), a
    // length inside the sink and recent windows, and an empty cache
    let cols = s - 6;
    let (sink, recent) = (3usize, 5usize);
    let score = hash_score::spec()
        .rbit(rbit as u32)
        .g(g as u32)
        .build(dev)?;
    for (len, ahead, hand) in [
        (cols, 0usize, f32::INFINITY),
        (cols - 100, 0, f32::INFINITY),
        (cols - 40, 1, f32::NEG_INFINITY),
        (4, 0, f32::INFINITY),
        (2, 1, f32::NEG_INFINITY),
        (0, 0, f32::INFINITY),
    ] {
        let n = len + ahead;
        let mut scores = dev.upload(&vec![f32::NAN; b * hk * cols])?;
        hash_score::launch(
            &score,
            &score::launch_config(cols as u32, hk as u32, b as u32),
            &q_codes,
            &k_codes,
            &norms,
            &mut scores,
            &dev.upload(&[len as u32])?,
            ahead as u32,
            cols as u32,
            s as u32,
            hk as u32,
            sink as u32,
            recent as u32,
            hand,
            true,
        )?;
        let got = dev.download(&scores)?;
        for bb in 0..b {
            for hh in 0..hk {
                let qs: Vec<&[u32]> = (0..g)
                    .map(|gg| &q_codes_host[((bb * h) + hh * g + gg) * words..][..words])
                    .collect();
                for t in 0..cols {
                    let row = (bb * s + t) * hk + hh;
                    let got = got[(bb * hk + hh) * cols + t];
                    let forced = if t >= n {
                        Some(f32::NEG_INFINITY)
                    } else if t + recent >= n {
                        Some(hand)
                    } else if t < sink {
                        Some(f32::INFINITY)
                    } else {
                        None
                    };
                    if let Some(want) = forced {
                        ensure!(
                            got == want,
                            "token {t} of a cache of {n} (b {bb}, h {hh}) must score {want}, got {got}"
                        );
                        continue;
                    }
                    let want = reference::score(
                        &qs,
                        &k_codes_host[row * words..][..words],
                        rbit,
                        Some(norms_host[row] as f64),
                    );
                    let got = got as f64;
                    ensure!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "score of (b {bb}, h {hh}, token {t}) at length {n}: {got}, want {want}"
                    );
                }
            }
        }
    }
    // append: a new key per (batch, KV head) at position `s - 1` of the cache
    let new: Vec<T> = round(rng.f32s(b * hk * d));
    let mut cache = dev.upload(&keys)?;
    let append = scatter_rows::spec().t(T::DTYPE).build(dev)?;
    let n = (b * hk * d) as u32;
    scatter_rows::launch(
        &append,
        &LaunchConfig::for_elements(n, 256),
        &dev.upload(&new)?,
        &mut cache,
        n,
        (hk * d) as u32,
        (s * hk * d) as u64,
        ((s - 1) * hk * d) as u64,
    )?;
    let cache = dev.download(&cache)?;
    for bb in 0..b {
        for t in 0..s {
            let at = (bb * s + t) * hk * d;
            let want = if t == s - 1 {
                &new[bb * hk * d..][..hk * d]
            } else {
                &keys[at..][..hk * d]
            };
            ensure_eq!(
                &cache[at..][..hk * d],
                want,
                "cache row (b {bb}, token {t})"
            );
        }
    }
    // the new keys' codes and norms go to row `s - 1` (poisoned buffers: nothing else written)
    let mut codes_new = dev.upload(&vec![0xdead_beefu32; b * s * hk * words])?;
    let mut norms_new = dev.upload(&vec![f32::NAN; b * s * hk])?;
    hash_encode_group::launch(
        &encode_group(1)?,
        &group_launch(hk as u32, b as u32, rbit as u32),
        &dev.upload(&new)?,
        &w_dev,
        &mu_dev,
        true,
        &mut codes_new,
        &mut norms_new,
        hk as u32,
        hk as u32,
        (s * hk) as u32,
        ((s - 1) * hk) as u32,
        true,
    )?;
    let (codes_new, norms_new) = (dev.download(&codes_new)?, dev.download(&norms_new)?);
    let new_w = wide(&new);
    for row in 0..b * s * hk {
        let (bb, t, hh) = (row / (s * hk), row / hk % s, row % hk);
        let got = &codes_new[row * words..][..words];
        if t != s - 1 {
            ensure!(
                got.iter().all(|&c| c == 0xdead_beef) && norms_new[row].is_nan(),
                "new-key encode wrote row {row} (token {t}), not only token {}",
                s - 1
            );
            continue;
        }
        let x = centred(&new_w[(bb * hk + hh) * d..][..d], bb, hh);
        key_matches(
            &format!("new key (b {bb}, h {hh})"),
            (got, norms_new[row]),
            &x,
            &ww[hh * d * rbit..][..d * rbit],
            rbit,
        )?;
    }
    Ok(())
}

/// Encode (keys with norms, query heads by GQA group), score (sink and recent forced in)
/// and cache append: bf16 with D = 128, rbit 128, 2 KV heads and f16 with D = 64, rbit 256,
/// 3 KV heads (which do not divide a block's 256 threads: the score kernel idles some).
pub fn hata_kernels_match_reference(dev: &Device) -> Result<(), VerifyError> {
    hata_kernels_case::<half::bf16>(dev, 128, 128, 2, 41)?;
    hata_kernels_case::<half::f16>(dev, 64, 256, 3, 42)
}

/// The decode step's append on poisoned random buffers: [`hata_append`] writes the new key,
/// value, code, norm and size 1 at position `len[0]` of every sequence and nothing else,
/// and moves the length on (`len` `[pos + 1, 0]` after, the ticket back at 0); without
/// `hash` (a dense step) it leaves codes and norms as they were.
fn append_case<T: Real>(
    dev: &Device,
    (b, hk, d, words): (usize, usize, usize, usize),
    hash: bool,
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let cap = 37usize;
    let pos = 1 + rng.u32() as usize % (cap - 1);
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let (k0, v0) = (
        round(rng.f32s(b * cap * hk * d)),
        round(rng.f32s(b * cap * hk * d)),
    );
    let (codes0, norms0) = (rng.u32s(b * cap * hk * words), rng.f32s(b * cap * hk));
    let sizes0 = rng.f32s(b * cap * hk);
    let (k_new, v_new) = (round(rng.f32s(b * hk * d)), round(rng.f32s(b * hk * d)));
    let (new_codes, new_norms) = (rng.u32s(b * hk * words), rng.f32s(b * hk));
    let (mut k, mut v) = (dev.upload(&k0)?, dev.upload(&v0)?);
    let (mut codes, mut norms) = (dev.upload(&codes0)?, dev.upload(&norms0)?);
    let mut sizes = dev.upload(&sizes0)?;
    let mut len = dev.upload(&[pos as u32, 0])?;
    let kernel = hata_append::spec()
        .t(T::DTYPE)
        .d(d as u32)
        .words(words as u32)
        .build(dev)?;
    hata_append::launch(
        &kernel,
        &LaunchConfig {
            grid: (b as u32, 1, 1),
            block: (APPEND_THREADS, 1, 1),
            dyn_shared_bytes: 0,
        },
        &mut len,
        &dev.upload(&k_new)?,
        &dev.upload(&v_new)?,
        &dev.upload(&new_codes)?,
        &dev.upload(&new_norms)?,
        &mut k,
        &mut v,
        &mut codes,
        &mut norms,
        &mut sizes,
        cap as u32,
        hk as u32,
        hash,
    )?;
    // the reference: the same cache with row `pos` of every sequence replaced
    fn placed<E: Copy>(
        old: &[E],
        new: &[E],
        b: usize,
        cap: usize,
        row: usize,
        pos: usize,
    ) -> Vec<E> {
        let mut out = old.to_vec();
        for bb in 0..b {
            out[(bb * cap + pos) * row..][..row].copy_from_slice(&new[bb * row..][..row]);
        }
        out
    }
    let bits = |x: Vec<T>| -> Vec<u32> { x.iter().map(|e| e.to_f32().to_bits()).collect() };
    ensure!(
        bits(dev.download(&k)?) == bits(placed(&k0, &k_new, b, cap, hk * d, pos)),
        "hata_append: keys (len {pos})"
    );
    ensure!(
        bits(dev.download(&v)?) == bits(placed(&v0, &v_new, b, cap, hk * d, pos)),
        "hata_append: values (len {pos})"
    );
    let norm_bits = |x: &[f32]| -> Vec<u32> { x.iter().map(|e| e.to_bits()).collect() };
    let (want_codes, want_norms) = if hash {
        (
            placed(&codes0, &new_codes, b, cap, hk * words, pos),
            placed(&norms0, &new_norms, b, cap, hk, pos),
        )
    } else {
        (codes0.clone(), norms0.clone())
    };
    ensure_eq!(
        dev.download(&codes)?,
        want_codes,
        "hata_append: codes (len {pos}, hash {hash})"
    );
    ensure_eq!(
        norm_bits(&dev.download(&norms)?),
        norm_bits(&want_norms),
        "hata_append: norms (len {pos}, hash {hash})"
    );
    ensure_eq!(
        dev.download(&len)?,
        vec![pos as u32 + 1, 0],
        "hata_append: the length and ticket after appending at {pos}"
    );
    ensure_eq!(
        norm_bits(&dev.download(&sizes)?),
        norm_bits(&placed(&sizes0, &vec![1.0; b * hk], b, cap, hk, pos)),
        "hata_append: sizes (len {pos})"
    );
    Ok(())
}

/// [`append_case`] for bf16 with D = 128, 4 code words, 2 sequences of 2 KV heads (with and
/// without hashing), and f16 with D = 64, 8 code words, 1 sequence of 3 KV heads.
pub fn append_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    append_case::<half::bf16>(dev, (2, 2, 128, 4), true, 51)?;
    append_case::<half::bf16>(dev, (2, 2, 128, 4), false, 53)?;
    append_case::<half::f16>(dev, (1, 3, 64, 8), true, 52)
}

/// The decoder end to end on random data: prefill, then decode steps that append a token
/// each; every step's selection must hold the sink and recent tokens and be exactly the
/// top-k of the kernel's own scores (ties to the lower index), and its output must match a
/// float64 attention over the selected keys. A dense layer (and a dense step below the
/// crossover, the first `dense_steps`) must match dense attention. Every step runs through
/// a replayed graph and, in a twin layer, kernel by kernel: the two must agree to the bit.
pub fn decoder_case<T: Real + kiln_codegen::prelude::Float>(
    dev: &Device,
    cfg: HataConfig,
    prefill_len: usize,
    (steps, dense_steps): (usize, usize),
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let (b, h, hk, d) = (
        cfg.batch as usize,
        cfg.heads as usize,
        cfg.kv_heads as usize,
        cfg.dim as usize,
    );
    let cap = cfg.capacity as usize;
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let weights: Vec<f32> = rng.f32s(hk * d * cfg.rbit as usize);
    // the same steps through captured graphs and launched kernel by kernel: the same kernels
    // with the same arguments, so the results must agree to the bit
    let mut layer = HataLayer::<T>::new(dev, cfg, &weights).map_err(mismatch)?;
    let mut eager = HataLayer::<T>::new(dev, cfg, &weights).map_err(mismatch)?;
    // the first `dense_steps` steps decode dense, then the layer turns sparse
    let below = if dense_steps > 0 {
        (prefill_len + dense_steps + 1) as u32
    } else {
        0
    };
    layer.set_dense_below(below);
    eager.set_dense_below(below);
    eager.set_graphs(false);
    // the whole sequence of keys and values, in cache layout [B, cap, H_kv, D]
    let total = prefill_len + steps;
    let mut keys = vec![T::from_f32(0.0); b * cap * hk * d];
    let mut values = keys.clone();
    for bb in 0..b {
        for t in 0..total {
            let at = (bb * cap + t) * hk * d;
            keys[at..at + hk * d].copy_from_slice(&round(rng.f32s(hk * d)));
            values[at..at + hk * d].copy_from_slice(&round(rng.f32s(hk * d)));
        }
    }
    let rows_of = |src: &[T], t0: usize, n: usize| -> Vec<T> {
        let mut out = Vec::with_capacity(b * n * hk * d);
        for bb in 0..b {
            out.extend_from_slice(&src[(bb * cap + t0) * hk * d..][..n * hk * d]);
        }
        out
    };
    let (k0, v0) = (
        dev.upload(&rows_of(&keys, 0, prefill_len))?,
        dev.upload(&rows_of(&values, 0, prefill_len))?,
    );
    for l in [&mut layer, &mut eager] {
        l.prefill(&k0, &v0, prefill_len as u32).map_err(mismatch)?;
    }
    // one set of step buffers, rewritten each step, so the graph is replayed
    let mut q_buf = dev.upload(&vec![T::from_f32(0.0); b * h * d])?;
    let mut k_new = dev.upload(&vec![T::from_f32(0.0); b * hk * d])?;
    let mut v_new = dev.upload(&vec![T::from_f32(0.0); b * hk * d])?;
    let mut out = dev.upload(&vec![T::NAN; b * h * d])?;
    let mut lse = dev.upload(&vec![f32::NAN; b * h])?;
    let mut out_e = dev.upload(&vec![T::NAN; b * h * d])?;
    let mut lse_e = dev.upload(&vec![f32::NAN; b * h])?;
    let wide = |v: &[T]| -> Vec<f64> { v.iter().map(|x| x.to_f32() as f64).collect() };
    // the layer centres its keys on the prefill's mean key, or on 0
    let got_mean: Vec<f64> = dev
        .download(layer.key_mean())?
        .iter()
        .map(|&x| x as f64)
        .collect();
    let kw = wide(&keys);
    let want_mean: Vec<f64> = (0..b * hk * d)
        .map(|i| {
            let (bb, hh, c) = (i / (hk * d), i / d % hk, i % d);
            let sum: f64 = (0..prefill_len)
                .map(|t| kw[((bb * cap + t) * hk + hh) * d + c])
                .sum();
            if cfg.center_keys {
                sum / prefill_len as f64
            } else {
                0.0
            }
        })
        .collect();
    ensure!(
        got_mean
            .iter()
            .zip(&want_mean)
            .all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())),
        "the layer's key means differ from the prefill's"
    );
    for step in 0..steps {
        let t = prefill_len + step;
        let q = round(rng.f32s(b * h * d));
        dev.write(&mut q_buf, &q)?;
        dev.write(&mut k_new, &rows_of(&keys, t, 1))?;
        dev.write(&mut v_new, &rows_of(&values, t, 1))?;
        for (o, l) in [(&mut out, &mut lse), (&mut out_e, &mut lse_e)] {
            dev.write(o, &vec![T::NAN; b * h * d])?;
            dev.write(l, &vec![f32::NAN; b * h])?;
        }
        layer
            .step(&q_buf, &k_new, &v_new, &mut out, &mut lse)
            .map_err(mismatch)?;
        eager
            .step(&q_buf, &k_new, &v_new, &mut out_e, &mut lse_e)
            .map_err(mismatch)?;
        let bits = |v: Vec<T>| -> Vec<u32> { v.iter().map(|x| x.to_f32().to_bits()).collect() };
        ensure!(
            bits(dev.download(&out)?) == bits(dev.download(&out_e)?)
                && dev.download(&lse)?.iter().map(|x| x.to_bits()).eq(dev.download(&lse_e)?.iter().map(|x| x.to_bits())),
            "step {step}: the graph-replayed step differs from the same step launched kernel by kernel"
        );
        let len = t + 1;
        let k_sel = layer.budget_for(len as u32) as usize;
        let ids: Option<Vec<u32>> = if layer.is_sparse() {
            let got = dev.download(layer.selected())?;
            ensure!(
                got == dev.download(eager.selected())?,
                "step {step}: the graph-replayed selection differs from the eager one"
            );
            let scores = dev.download(layer.scores())?;
            let cols = layer.score_columns() as usize;
            let mut ids = Vec::with_capacity(b * hk * k_sel);
            for row in 0..b * hk {
                let mut mine: Vec<u32> = got[row * k_sel..][..k_sel].to_vec();
                mine.sort_unstable();
                ensure!(
                    scores[row * cols + len..][..cols - len]
                        .iter()
                        .all(|&x| x == f32::NEG_INFINITY),
                    "step {step}, row {row}: columns past the cache are not masked"
                );
                let row_scores: Vec<f64> = scores[row * cols..][..len]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let want = reference::top_k(&row_scores, k_sel);
                ensure_eq!(mine, want, "step {step}, row {row}: selection");
                for forced in
                    (0..cfg.sink as usize).chain(len.saturating_sub(cfg.recent as usize)..len)
                {
                    ensure!(
                        mine.binary_search(&(forced as u32)).is_ok(),
                        "step {step}, row {row}: forced token {forced} not selected"
                    );
                }
                ids.extend_from_slice(&got[row * k_sel..][..k_sel]);
            }
            Some(ids)
        } else {
            None
        };
        let n_keys = if ids.is_some() { k_sel } else { len };
        let (want_o, want_lse) = attention_reference::decode(
            b,
            h,
            hk,
            cap,
            d,
            &wide(&q),
            &wide(&keys),
            &wide(&values),
            ids.as_deref(),
            n_keys,
            1.0 / (d as f64).sqrt(),
        );
        let got_o = wide(&dev.download(&out)?);
        let got_lse: Vec<f64> = dev.download(&lse)?.iter().map(|&x| x as f64).collect();
        let (eo, el) = (rel_err(&got_o, &want_o), rel_err(&got_lse, &want_lse));
        ensure!(
            eo < 1e-2 && el < 1e-5,
            "step {step} ({} keys of {len}): relative error O {eo:.2e}, LSE {el:.2e}",
            n_keys
        );
    }
    // after a sparse step every cached key has its code and norm, also those of the dense
    // steps, which the first sparse step encoded
    if layer.is_sparse() {
        let words = cfg.rbit as usize / 32;
        let ww: Vec<f64> = weights.iter().map(|&x| x as f64).collect();
        for l in [&layer, &eager] {
            let (codes, norms) = l.key_codes();
            let (codes, norms) = (dev.download(codes)?, dev.download(norms)?);
            for bb in 0..b {
                for t in 0..total {
                    for hh in 0..hk {
                        let row = (bb * cap + t) * hk + hh;
                        let centre = &got_mean[(bb * hk + hh) * d..][..d];
                        let x: Vec<f64> = kw[row * d..][..d]
                            .iter()
                            .zip(centre)
                            .map(|(k, m)| k - m)
                            .collect();
                        key_matches(
                            &format!("cached key (b {bb}, token {t}, KV head {hh})"),
                            (&codes[row * words..][..words], norms[row]),
                            &x,
                            &ww[hh * d * cfg.rbit as usize..][..d * cfg.rbit as usize],
                            cfg.rbit as usize,
                        )?;
                    }
                }
            }
        }
    }
    ensure!(
        layer.capture_error().is_none(),
        "a capture failed: {:?}",
        layer.capture_error()
    );
    let (replays, captures) = layer.graph_counts();
    ensure!(
        captures >= 1 && replays >= 1 && replays + captures == steps as u64,
        "{steps} steps gave {replays} graph replays and {captures} captures"
    );
    ensure!(
        eager.graph_counts() == (0, 0),
        "the eager layer captured a graph"
    );
    Ok(())
}

fn mismatch(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Mismatch(e.to_string())
}

/// The decoder: sparse steps with a count budget and with a ratio (norm-weighted scores,
/// sinks and recent tokens), a dense layer, dense steps turning sparse, rbit 128 and 256,
/// bf16 and f16, keys centred and not, and the scored columns crossing a granule.
pub fn hata_decoder_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let big = dev.is_gpu();
    let prefill = if big { 3000 } else { 200 };
    let cfg = |dim, rbit, budget, dense, center_keys| HataConfig {
        batch: 2,
        heads: 8,
        kv_heads: 2,
        dim,
        rbit,
        capacity: prefill as u32 + 8,
        budget,
        sink: 4,
        recent: 8,
        use_norms: true,
        center_keys,
        dense,
    };
    let c = |dim, rbit, budget, dense, centre| cfg(dim, rbit, budget, dense, centre);
    decoder_case::<half::bf16>(
        dev,
        c(128, 128, Budget::Count(48), false, true),
        prefill,
        (4, 0),
        51,
    )?;
    decoder_case::<half::f16>(
        dev,
        c(64, 256, Budget::Ratio(0.1), false, false),
        prefill,
        (4, 0),
        52,
    )?;
    decoder_case::<half::bf16>(
        dev,
        c(64, 128, Budget::Count(48), true, true),
        prefill,
        (3, 0),
        53,
    )?;
    // a dense layer whose scored columns run far past the cache: whole splits of the dense
    // attention see only masked rows
    decoder_case::<half::bf16>(
        dev,
        HataConfig {
            capacity: 1500,
            ..c(64, 128, Budget::Count(48), true, true)
        },
        100,
        (3, 0),
        56,
    )?;
    // dense below the crossover for two steps, then sparse (a new graph at the switch)
    decoder_case::<half::bf16>(
        dev,
        c(64, 128, Budget::Count(48), false, true),
        prefill,
        (5, 2),
        55,
    )?;
    // the scored columns grow past a granule during the steps (a new graph is captured)
    let crossing = SCORE_GRANULE as usize - 2;
    decoder_case::<half::bf16>(
        dev,
        HataConfig {
            capacity: crossing as u32 + 100,
            ..c(64, 128, Budget::Count(64), false, true)
        },
        crossing,
        (4, 0),
        54,
    )
}
