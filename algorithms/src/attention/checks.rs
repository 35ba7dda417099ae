//! Flash attention (prefill) and flash-decoding against their float64 references, on fresh
//! random inputs rounded to the element type, with poisoned outputs.

use crate::attention::decode::{DecodeScratch, DecodeShape, FlashDecode};
use crate::attention::hopper::WgmmaPrefill;
use crate::attention::prefill::{flash_attn_fwd, PrefillCall, BLOCK_Q, THREADS};
use crate::attention::reference::{self, PrefillShape};
use kiln_runtime::{Device, DeviceBuffer, LaunchConfig};

use crate::verify::{ensure, rel_err, Real, Rng, VerifyError};

/// Relative-error bounds for an output rounded to `T` (probabilities are rounded to `T` too
/// before P·V), and for the f32 log-sum-exp.
fn tolerances<T: Real>() -> (f64, f64) {
    match T::DTYPE {
        kiln_codegen::Dtype::Bf16 => (1e-2, 1e-5),
        _ => (2e-3, 1e-5),
    }
}

/// `n` random values rounded to `T`, scaled by `amp`, and the same values as f64.
fn random<T: Real>(rng: &mut Rng, n: usize, amp: f32) -> (Vec<T>, Vec<f64>) {
    let vals: Vec<T> = rng
        .f32s(n)
        .into_iter()
        .map(|x| T::from_f32(x * amp))
        .collect();
    let wide = vals.iter().map(|x| x.to_f32() as f64).collect();
    (vals, wide)
}

fn widen<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// Runs one prefill kernel on one shape and compares O and LSE with the reference: the tile
/// layer's `flash_attn_fwd` with key tile `Some(bk)`, or (`None`) the Hopper kernel.
pub fn prefill_case<T: Real>(
    dev: &Device,
    s: PrefillShape,
    bk: Option<u32>,
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let d = s.dim;
    let (q, qw) = random::<T>(&mut rng, s.batch * s.heads * s.s_q * d, 2.0);
    let (k, kw) = random::<T>(&mut rng, s.batch * s.kv_heads * s.s_kv * d, 2.0);
    let (v, vw) = random::<T>(&mut rng, s.batch * s.kv_heads * s.s_kv * d, 1.0);
    let scale = 1.0 / (d as f64).sqrt();
    let mut o = dev.upload(&vec![T::NAN; q.len()])?;
    let mut lse = dev.upload(&vec![f32::NAN; s.batch * s.heads * s.s_q])?;
    let (q, k, v) = (dev.upload(&q)?, dev.upload(&k)?, dev.upload(&v)?);
    let Some(bk) = bk else {
        let call = PrefillCall {
            batch: s.batch as u32,
            heads: s.heads as u32,
            kv_heads: s.kv_heads as u32,
            s_q: s.s_q as u32,
            s_kv: s.s_kv as u32,
            dim: d as u32,
            causal: s.causal,
        };
        WgmmaPrefill::new(dev, T::DTYPE).run(&call, &q, &k, &v, &mut o, &mut lse, scale as f32)?;
        let (want_o, want_lse) = reference::prefill(&s, &qw, &kw, &vw, scale);
        let what = format!("flash_attn_wgmma {:?} {s:?}", T::DTYPE);
        return compare::<T>(dev, &what, (&o, &lse), (&want_o, &want_lse));
    };
    let kernel = flash_attn_fwd::spec()
        .t(T::DTYPE)
        .d(d as u32)
        .causal(s.causal)
        .bk(bk)
        .build(dev)?;
    let cfg = LaunchConfig {
        grid: (
            (s.s_q as u32).div_ceil(BLOCK_Q),
            s.heads as u32,
            s.batch as u32,
        ),
        block: (THREADS, 1, 1),
        dyn_shared_bytes: 0,
    };
    flash_attn_fwd::launch(
        &kernel,
        &cfg,
        &q,
        &k,
        &v,
        &mut o,
        &mut lse,
        s.s_q as u32,
        s.s_kv as u32,
        s.heads as u32,
        s.kv_heads as u32,
        scale as f32,
    )?;
    let (want_o, want_lse) = reference::prefill(&s, &qw, &kw, &vw, scale);
    let what = format!("flash_attn_fwd {:?} {s:?} BK={bk}", T::DTYPE);
    compare::<T>(dev, &what, (&o, &lse), (&want_o, &want_lse))
}

/// Downloads O and LSE and compares them with the reference by relative norm error.
fn compare<T: Real>(
    dev: &Device,
    what: &str,
    (o, lse): (&DeviceBuffer<T>, &DeviceBuffer<f32>),
    (want_o, want_lse): (&[f64], &[f64]),
) -> Result<(), VerifyError> {
    let got_o = widen(&dev.download(o)?);
    let got_lse: Vec<f64> = dev.download(lse)?.iter().map(|x| *x as f64).collect();
    let (tol_o, tol_lse) = tolerances::<T>();
    let (eo, el) = (rel_err(&got_o, want_o), rel_err(&got_lse, want_lse));
    ensure!(
        eo < tol_o && el < tol_lse,
        "{what}: relative error O {eo:.2e} (bound {tol_o:.0e}), LSE {el:.2e} (bound {tol_lse:.0e})"
    );
    Ok(())
}

/// Runs flash-decoding on one shape (dense, or over a random index list of `n_keys`
/// distinct tokens) with split size `chunk` (`None`: the default), its splits merged by
/// [`decode_merge`](crate::attention::decode::decode_merge) and inside the kernel, against
/// the reference.
pub fn decode_case<T: Real>(
    dev: &Device,
    s: DecodeShape,
    indexed: Option<u32>,
    chunk: Option<u32>,
    seed: u64,
) -> Result<(), VerifyError> {
    let mut rng = Rng::new(seed);
    let (b, h, hk, seq, d) = (
        s.batch as usize,
        s.heads as usize,
        s.kv_heads as usize,
        s.seq as usize,
        s.dim as usize,
    );
    let (q, qw) = random::<T>(&mut rng, b * h * d, 2.0);
    let (k, kw) = random::<T>(&mut rng, b * seq * hk * d, 2.0);
    let (v, vw) = random::<T>(&mut rng, b * seq * hk * d, 1.0);
    let n_keys = indexed.unwrap_or(s.seq);
    // a random subset of distinct tokens per (batch, KV head), in random order
    let ids: Option<Vec<u32>> = indexed.map(|n| {
        let mut all = Vec::with_capacity(b * hk * n as usize);
        for _ in 0..b * hk {
            let mut tokens: Vec<u32> = (0..s.seq).collect();
            for i in 0..n as usize {
                let j = i + (rng.u32() as usize) % (tokens.len() - i);
                tokens.swap(i, j);
            }
            all.extend_from_slice(&tokens[..n as usize]);
        }
        all
    });
    let scale = 1.0 / (d as f64).sqrt();
    let mut decode = FlashDecode::new(dev, T::DTYPE, s.dim, ids.is_some())
        .map_err(|e| VerifyError::Mismatch(e.to_string()))?;
    decode.chunk = chunk;
    let mut o = dev.upload(&vec![T::NAN; b * h * d])?;
    let mut lse = dev.upload(&vec![f32::NAN; b * h])?;
    let mut scratch = DecodeScratch::new(dev, 1, d)?;
    let ids_dev = ids.as_ref().map(|i| dev.upload(i)).transpose()?;
    let (q, k, v) = (dev.upload(&q)?, dev.upload(&k)?, dev.upload(&v)?);
    let (want_o, want_lse) = reference::decode(
        b,
        h,
        hk,
        seq,
        d,
        &qw,
        &kw,
        &vw,
        ids.as_deref(),
        n_keys as usize,
        scale,
    );
    // the splits merged by decode_merge and inside the kernel, each twice on poisoned
    // outputs (the fused merge's tickets must be back at 0 for the second call)
    for fused in [false, true] {
        decode.fused = Some(fused);
        for call in 0..2 {
            dev.write(&mut o, &vec![T::NAN; b * h * d])?;
            dev.write(&mut lse, &vec![f32::NAN; b * h])?;
            decode
                .run(
                    &s,
                    &q,
                    &k,
                    &v,
                    ids_dev.as_ref(),
                    n_keys,
                    scale as f32,
                    &mut o,
                    &mut lse,
                    &mut scratch,
                )
                .map_err(|e| VerifyError::Mismatch(e.to_string()))?;
            let what = format!(
                "flash_decode {:?} {s:?} indexed={indexed:?} chunk={chunk:?} fused={fused} call {call}",
                T::DTYPE
            );
            compare::<T>(dev, &what, (&o, &lse), (&want_o, &want_lse))?;
        }
    }
    Ok(())
}

/// The prefill checks' shape: 2 sequences, 4 query heads over 2 KV heads.
fn shape(dim: usize, causal: bool, s_q: usize, s_kv: usize) -> PrefillShape {
    PrefillShape {
        batch: 2,
        heads: 4,
        kv_heads: 2,
        s_q,
        s_kv,
        dim,
        causal,
    }
}

/// Prefill: D = 64 and 128, causal and not, both key tiles, GQA, tails in both sequence lengths, bf16 and
/// f16; larger shapes on a GPU than on the emulator.
pub fn prefill_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let (s1, s2) = if dev.is_gpu() { (1000, 777) } else { (80, 40) };
    prefill_case::<half::bf16>(dev, shape(128, false, s1, s1), Some(32), 11)?;
    prefill_case::<half::bf16>(dev, shape(128, true, s2, s1), Some(16), 12)?;
    prefill_case::<half::f16>(dev, shape(64, true, s1, s1), Some(64), 13)?;
    prefill_case::<half::f16>(dev, shape(64, false, s2, s1), Some(16), 14)
}

/// The Hopper prefill: D = 64 and 128, causal and not, GQA, tails in both sequence lengths
/// (key tiles of 128 cross into the next head's keys, which must be masked), bf16 and f16.
/// Passes without running on a GPU that is not sm_90 (the kernel has no specialisation there).
pub fn wgmma_prefill_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    if !WgmmaPrefill::supported(dev) {
        println!(
            "flash_attn_wgmma: skipped, {} is not an sm_90 GPU",
            dev.name()
        );
        return Ok(());
    }
    let (s1, s2) = if dev.is_gpu() {
        (1000, 777)
    } else {
        (200, 136)
    };
    prefill_case::<half::bf16>(dev, shape(128, false, s1, s1), None, 15)?;
    prefill_case::<half::bf16>(dev, shape(128, true, s2, s1), None, 16)?;
    prefill_case::<half::f16>(dev, shape(64, true, s1, s1), None, 17)?;
    prefill_case::<half::f16>(dev, shape(64, false, s2, s1), None, 18)
}

/// Decode: dense and over an index list, GQA 4:1, many splits with a partial last tile,
/// bf16 (D = 128) and f16 (D = 64).
pub fn decode_matches_reference(dev: &Device) -> Result<(), VerifyError> {
    let big = dev.is_gpu();
    let seq = if big { 5000 } else { 300 };
    let shape = |dim| DecodeShape {
        batch: 2,
        heads: 8,
        kv_heads: 2,
        seq,
        dim,
    };
    decode_case::<half::bf16>(dev, shape(128), None, None, 21)?;
    decode_case::<half::bf16>(dev, shape(128), None, Some(48), 22)?;
    decode_case::<half::bf16>(dev, shape(128), Some(seq / 3), Some(32), 23)?;
    decode_case::<half::f16>(dev, shape(64), Some(seq / 2 + 5), None, 24)?;
    decode_case::<half::f16>(dev, shape(64), None, Some(16), 25)
}
