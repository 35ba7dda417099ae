//! CLO's speed on a GPU, ours and the baselines in the same run:
//!
//! - [`gather_bandwidth`]: the zero-copy gather of scattered rows from mapped host memory
//!   against one pinned host-to-device memcpy of the same bytes (the PCIe roofline), and
//!   against the CPU gather into pinned staging plus that memcpy (baseline (a)'s transfer);
//!   the rows are random tokens, ascending per KV head (as a miss lists them), and the fetch
//!   lists rotate over distinct rows so that no timed run reads what another left in L2.
//! - [`step_speeds`]: decode steps of a [`CloModel`] with each [`Transfer`] over the same
//!   query trajectory (the model rewinds between them, so every transfer sees the same hits
//!   and selections): device time per step (events around the step), host CPU time of the
//!   thread that issues it (`CLOCK_THREAD_CPUTIME_ID`, so a host blocked in a wait does not
//!   count, but a host gathering rows does), wall time, and the hit rate.
//! - [`resident_speeds`]: the whole cache on the GPU instead (baseline (c)): dense
//!   flash-decoding over it, and a HATA step (append, score, top-k, sparse attention).

use half::bf16;
use kiln::prelude::*;
use kiln::{timing, Device, DeviceBuffer, LaunchConfig, RuntimeError};

use crate::attention::decode::{DecodeScratch, DecodeShape, FlashDecode};
use crate::clo::fidelity::drift;
use crate::clo::kernels::{clo_gather, GATHER_ROWS, GATHER_WARPS};
use crate::clo::model::{CloConfig, CloError, CloModel, LayerParams, Transfer};
use crate::hata::decoder::{Budget, HataConfig, HataLayer};
use crate::verify::Rng;

/// CPU time of the calling thread, in milliseconds.
pub fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 * 1e-6
}

/// Fills `x` with pseudo-random bf16 values in `[-1, 1)`, on every core.
pub fn fill_random(x: &mut [bf16], seed: u64) {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let chunk = x.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (i, part) in x.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                for v in part.iter_mut() {
                    *v = bf16::from_f32(rng.f32());
                }
            });
        }
    });
}

/// The zero-copy gather against the copy engine, for one fetch of `rows` rows per KV head.
#[derive(Clone, Debug, PartialEq)]
pub struct GatherSpeed {
    /// Bytes per fetch (keys and values).
    pub bytes: f64,
    /// The gather kernel, median ms.
    pub zero_copy_ms: f64,
    /// One pinned host-to-device memcpy of the same bytes, median ms.
    pub memcpy_ms: f64,
    /// The host gathering the rows into pinned staging (median ms of the host's work), which
    /// baseline (a) adds to the memcpy.
    pub host_gather_ms: f64,
}

impl GatherSpeed {
    /// GB/s of a time for this fetch.
    pub fn gb_s(&self, ms: f64) -> f64 {
        self.bytes / ms / 1e6
    }
}

/// Times the gather of `rows` random rows per KV head (`kv_heads` heads of `dim`, bf16) out of
/// a mapped host cache of `cap` tokens (see the module docs), `reps` runs after a warm-up.
pub fn gather_bandwidth(
    device: &Device,
    cap: u32,
    rows: u32,
    kv_heads: u32,
    dim: u32,
    reps: usize,
) -> Result<GatherSpeed, RuntimeError> {
    let (hk, d, n) = (kv_heads as usize, dim as usize, rows as usize);
    let elements = cap as usize * hk * d;
    let mut k_host = device.mapped::<bf16>(elements)?;
    let mut v_host = device.mapped::<bf16>(elements)?;
    fill_random(&mut k_host, 1);
    fill_random(&mut v_host, 2);
    // distinct rows per rotation: together far more than L2
    let rotations = 16usize;
    let mut rng = Rng::new(3);
    let lists: Vec<DeviceBuffer<u32>> = (0..rotations)
        .map(|_| {
            // ascending per KV head, as the plan lists a miss's new tokens
            let mut toks: Vec<u32> = (0..hk * n).map(|_| rng.u32() % cap).collect();
            for head in toks.chunks_mut(n) {
                head.sort_unstable();
            }
            device.upload(&toks)
        })
        .collect::<Result<_, _>>()?;
    let pos: Vec<u32> = (0..hk).flat_map(|_| 0..rows).collect();
    let pos = device.upload(&pos)?;
    let count = device.upload(&vec![rows; hk])?;
    let mut k_slot = device.zeros::<bf16>(n * hk * d)?;
    let mut v_slot = device.zeros::<bf16>(n * hk * d)?;
    let gather = clo_gather::spec()
        .t(Dtype::Bf16)
        .d(dim)
        .r(GATHER_ROWS)
        .staged(false)
        .build(device)?;
    let cfg = LaunchConfig {
        grid: (rows.div_ceil(GATHER_WARPS * GATHER_ROWS), kv_heads, 1),
        block: (GATHER_WARPS * 32, 1, 1),
        dyn_shared_bytes: 0,
    };
    let mut turn = 0usize;
    let zero_copy = timing::time(device, 3, reps, || {
        turn += 1;
        clo_gather::launch(
            &gather,
            &cfg,
            &k_host,
            &v_host,
            &lists[turn % rotations],
            &pos,
            &count,
            &mut k_slot,
            &mut v_slot,
            cap,
            rows,
            rows,
            kv_heads,
            0,
        )
    })?;
    let total = 2 * n * hk * d;
    let mut staging = device.pinned::<bf16>(total)?;
    let mut dst = device.zeros::<bf16>(total)?;
    let stream = device.default_stream();
    let memcpy = timing::time(device, 3, reps, || {
        stream.copy_htod_async(&staging, 0, &mut dst, 0, total)
    })?;
    let toks: Vec<Vec<u32>> = lists
        .iter()
        .map(|l| device.download(l))
        .collect::<Result<_, _>>()?;
    let mut host = Vec::with_capacity(reps);
    for r in 0..reps {
        let list = &toks[r % rotations];
        let t = std::time::Instant::now();
        for h in 0..hk {
            for e in 0..n {
                let src = (list[h * n + e] as usize * hk + h) * d;
                let at = (h * n + e) * d;
                staging[at..at + d].copy_from_slice(&k_host[src..src + d]);
                staging[total / 2 + at..total / 2 + at + d].copy_from_slice(&v_host[src..src + d]);
            }
        }
        host.push(t.elapsed().as_secs_f64() * 1e3);
    }
    host.sort_by(f64::total_cmp);
    Ok(GatherSpeed {
        bytes: (total * 2) as f64,
        zero_copy_ms: zero_copy.median_ms,
        memcpy_ms: memcpy.median_ms,
        host_gather_ms: host[host.len() / 2],
    })
}

/// The model a speed case decodes with: `layers` real layers of B = 1, heads 32/8, D 128,
/// rbit 128, `budget` rows per KV head, 64 recent tokens, 4 sinks; random hash weights and
/// random head importances (the speed does not depend on them), random bf16 caches of
/// `prefill` tokens.
pub fn speed_model(
    device: &Device,
    layers: u32,
    prefill: u32,
    budget: u32,
    steps: u32,
) -> Result<CloModel<bf16>, CloError> {
    let cfg = CloConfig {
        layers,
        batch: 1,
        heads: 32,
        kv_heads: 8,
        dim: 128,
        rbit: 128,
        capacity: prefill + steps + 16,
        budget,
        recent: 64,
        sink: 4,
        use_norms: true,
        eta: 0.9,
        p: 2.0,
    };
    let mut rng = Rng::new(11);
    let params: Vec<LayerParams> = (0..layers)
        .map(|_| LayerParams {
            weights: rng.f32s((8 * 128 * 128) as usize),
            importance: (0..32).map(|_| (rng.f32() + 1.0) / 2.0).collect(),
        })
        .collect();
    let mut model = CloModel::new(device, cfg, &params)?;
    for l in 0..layers as usize {
        let (k, v) = model.host_kv_mut(l)?;
        fill_random(k, 100 + 2 * l as u64);
        fill_random(v, 101 + 2 * l as u64);
    }
    model.prefill_in_place(prefill)?;
    Ok(model)
}

/// One transfer's step measurements (medians over the timed steps).
#[derive(Clone, Debug, PartialEq)]
pub struct StepSpeed {
    /// How rows moved.
    pub transfer: Transfer,
    /// Device time of a step (events around it), ms.
    pub step_ms: f64,
    /// CPU time of the issuing thread inside `step`, ms.
    pub host_cpu_ms: f64,
    /// Wall time from the start of `step` to the end of its work, ms.
    pub wall_ms: f64,
    /// Hit rate over the timed steps.
    pub hit_rate: f64,
}

/// Decodes `warmup + steps` tokens with each of `transfers` from the model's current length
/// (rewinding to it before each), queries drifting by `rho` (seeded, the same trajectory for
/// every transfer), and measures the last `steps` (see the module docs).
pub fn step_speeds(
    device: &Device,
    model: &mut CloModel<bf16>,
    transfers: &[Transfer],
    (warmup, steps): (usize, usize),
    rho: f64,
) -> Result<Vec<StepSpeed>, CloError> {
    let c = *model.config();
    let start = model.len();
    let (layers, hd, kvd) = (
        c.layers as usize,
        (c.heads * c.dim) as usize,
        (c.kv_heads * c.dim) as usize,
    );
    let main = device.default_stream();
    let mut out = Vec::new();
    for &transfer in transfers {
        model.rewind(start)?;
        let mut rng = Rng::new(21);
        let mut queries: Vec<Vec<f64>> = (0..layers)
            .map(|_| rng.f32s(hd).iter().map(|&x| x as f64).collect())
            .collect();
        let (mut gpu, mut cpu, mut wall) = (Vec::new(), Vec::new(), Vec::new());
        let mut misses_before = 0u64;
        for step in 0..warmup + steps {
            for (l, q) in queries.iter_mut().enumerate() {
                for head in q.chunks_mut(c.dim as usize) {
                    drift(head, rho, &mut rng);
                }
                let qb: Vec<bf16> = q.iter().map(|&x| bf16::from_f64(x)).collect();
                let kn: Vec<bf16> = rng.f32s(kvd).into_iter().map(bf16::from_f32).collect();
                let vn: Vec<bf16> = rng.f32s(kvd).into_iter().map(bf16::from_f32).collect();
                let i = model.inputs_mut(l)?;
                device.write(i.q, &qb)?;
                device.write(i.k_new, &kn)?;
                device.write(i.v_new, &vn)?;
            }
            if step == warmup {
                misses_before = model.misses()?.iter().flatten().map(|&m| m as u64).sum();
            }
            device.synchronize()?;
            let e0 = main.record_timed()?;
            let (c0, w0) = (thread_cpu_ms(), std::time::Instant::now());
            model.step(transfer)?;
            let c1 = thread_cpu_ms();
            let e1 = main.record_timed()?;
            let ms = e0.elapsed_ms(&e1)?;
            if step >= warmup {
                gpu.push(ms);
                cpu.push(c1 - c0);
                wall.push(w0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let misses: u64 = model.misses()?.iter().flatten().map(|&m| m as u64).sum();
        let lookups = (steps * layers) as u64 * (c.batch * c.kv_heads) as u64;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        out.push(StepSpeed {
            transfer,
            step_ms: median(gpu),
            host_cpu_ms: median(cpu),
            wall_ms: median(wall),
            hit_rate: 1.0 - (misses - misses_before) as f64 / lookups as f64,
        });
    }
    model.rewind(start)?;
    Ok(out)
}

/// Baseline (c), one layer with its whole cache on the GPU: dense flash-decoding over `seq`
/// tokens and a HATA step with `budget` keys (median ms each).
pub fn resident_speeds(
    device: &Device,
    model: &CloModel<bf16>,
    budget: u32,
    reps: usize,
) -> Result<(f64, f64), CloError> {
    let c = *model.config();
    let seq = model.len();
    let (k_host, v_host) = model.host_kv(0)?;
    let row = (c.kv_heads * c.dim) as usize;
    let k = device.upload(&k_host[..seq as usize * row])?;
    let v = device.upload(&v_host[..seq as usize * row])?;
    let q = device.upload(&vec![bf16::from_f32(0.5); (c.heads * c.dim) as usize])?;
    let mut o = device.zeros::<bf16>((c.heads * c.dim) as usize)?;
    let mut lse = device.zeros::<f32>(c.heads as usize)?;
    let shape = DecodeShape {
        batch: 1,
        heads: c.heads,
        kv_heads: c.kv_heads,
        seq,
        dim: c.dim,
    };
    let dense = FlashDecode::new(device, Dtype::Bf16, c.dim, false)?;
    let mut scratch = DecodeScratch::new(device, 1, c.dim as usize)?;
    let scale = 1.0 / (c.dim as f32).sqrt();
    let t_dense = timing::time(device, 3, reps, || {
        dense
            .run(
                &shape,
                &q,
                &k,
                &v,
                None,
                seq,
                scale,
                &mut o,
                &mut lse,
                &mut scratch,
            )
            .map_err(RuntimeError::from)
    })?;
    let hcfg = HataConfig {
        batch: 1,
        heads: c.heads,
        kv_heads: c.kv_heads,
        dim: c.dim,
        rbit: c.rbit,
        capacity: seq + reps as u32 + 8,
        budget: Budget::Count(budget),
        sink: c.sink,
        recent: c.recent,
        use_norms: true,
        dense: false,
        center_keys: false,
    };
    let mut rng = Rng::new(31);
    let weights = rng.f32s((c.kv_heads * c.dim * c.rbit) as usize);
    let hata_err = |e: crate::hata::decoder::HataError| CloError::Config(e.to_string());
    let mut hata = HataLayer::<bf16>::new(device, hcfg, &weights).map_err(hata_err)?;
    hata.prefill(&k, &v, seq).map_err(hata_err)?;
    let kn = device.upload(&vec![bf16::from_f32(0.25); row])?;
    let t_hata = timing::time(
        device,
        3,
        reps.min(hcfg.capacity as usize - seq as usize - 3),
        || {
            hata.step(&q, &kn, &kn, &mut o, &mut lse)
                .map_err(|e| RuntimeError::InvalidInput {
                    what: "hata step",
                    reason: e.to_string(),
                })
        },
    )?;
    Ok((t_dense.median_ms, t_hata.median_ms))
}
