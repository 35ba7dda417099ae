//! Tunes the tile-layer kernels at every shape the other benches measure and shows what it
//! bought: for each shape, the hand-picked default and the tuner's winner, re-timed the same
//! way (CUDA events, warm-up, median), plus the tuner's table of every candidate. Winners go
//! to the tuning store (`KILN_CACHE_DIR`), where `Gemm`, `Prefill` and `FlashDecode` find
//! them; run this before `gemm` and `attention` to bench the tuned kernels. Searches:
//! GEMM block tile (BM, BN ∈ {64, 128}) at 2048³, 4096³, 8192³ with B row- and column-major;
//! prefill key tile (BK ∈ {32, 64}) at the `attention` bench's shapes; decode split size
//! (64 … 4096 keys) at its decode shapes. Writes `autotune-<device>.json`.
//! Run: `cargo bench --bench autotune` (needs a GPU).

mod support;

use half::bf16;
use kiln::algorithms::verify::Rng;
use kiln::codegen::Dtype;
use kiln::runtime::tune::{table, Entry, Store, TuneOptions};
use kiln::runtime::{time, Device, DeviceBuffer, RuntimeError};
use kiln_algorithms::attention::decode::{default_chunk, DecodeScratch, FlashDecode};
use kiln_algorithms::attention::prefill::{Prefill, DEFAULT_BK};
use kiln_algorithms::gemm::{Gemm, DEFAULT_TILE};
use support::baseline::{decode_shapes, prefill_shapes};
use support::{gpu, random_bf16, report_with, Roof, Row};

const WARMUP: usize = 3;
const REPS: usize = 20;

/// The two rows of a shape (default, tuned) and the search's table.
struct Outcome {
    rows: Vec<Row>,
    table: String,
}

/// Re-times the default and the winner with the same method and makes their rows.
fn outcome(
    dev: &Device,
    name: &str,
    (work, to_rate, roof): (f64, f64, Roof),
    default: &str,
    entry: &Entry,
    mut run: impl FnMut(bool) -> Result<(), RuntimeError>,
) -> Result<Outcome, RuntimeError> {
    let before = time(dev, WARMUP, REPS, || run(false))?.median_ms;
    let after = time(dev, WARMUP, REPS, || run(true))?.median_ms;
    let row = |label: String, ms: f64, vs: Option<(String, f64)>| Row {
        name: label,
        work,
        median_ms: ms,
        rate: work / ms / to_rate,
        vs,
        roof,
    };
    let default_label = format!("{name} default ({default})");
    Ok(Outcome {
        rows: vec![
            row(default_label.clone(), before, None),
            row(
                format!("{name} tuned ({})", entry.winner.describe()),
                after,
                Some((default_label, before / after)),
            ),
        ],
        table: format!("{name}\n{}", table(entry)),
    })
}

fn gemm_shapes(
    dev: &Device,
    rng: &mut Rng,
    options: &TuneOptions,
) -> Result<Vec<Outcome>, RuntimeError> {
    let gemm = Gemm::new(dev, Dtype::Bf16, Store::default_location());
    let mut out = Vec::new();
    for size in [2048u32, 4096, 8192] {
        let n = size as usize;
        let a = dev.upload(&random_bf16(rng, n * n))?;
        let b = dev.upload(&random_bf16(rng, n * n))?;
        let mut c: DeviceBuffer<f32> = dev.zeros(n * n)?;
        for b_col in [false, true] {
            let entry = gemm.tune(&a, &b, &mut c, size, size, size, b_col, options)?;
            let winner = gemm.tile_for(size, size, size, b_col);
            let layout = if b_col { "B col-major" } else { "B row-major" };
            let flops = 2.0 * (n as f64).powi(3);
            out.push(outcome(
                dev,
                &format!("gemm bf16 {size}^3 {layout}"),
                (flops, 1e9, Roof::TensorCores),
                &format!("BM={}, BN={}", DEFAULT_TILE.0, DEFAULT_TILE.1),
                &entry,
                |tuned| {
                    let tile = if tuned { winner } else { DEFAULT_TILE };
                    Ok(gemm.run(&a, &b, &mut c, size, size, size, b_col, Some(tile))?)
                },
            )?);
        }
    }
    Ok(out)
}

fn prefill_calls(
    dev: &Device,
    rng: &mut Rng,
    options: &TuneOptions,
) -> Result<Vec<Outcome>, RuntimeError> {
    let attn = Prefill::new(dev, Dtype::Bf16, Store::default_location());
    let mut out = Vec::new();
    for s in prefill_shapes() {
        let call = s.prefill_call();
        let q = dev.upload(&random_bf16(rng, s.b * s.hq * s.s * s.d))?;
        let k = dev.upload(&random_bf16(rng, s.b * s.hkv * s.s * s.d))?;
        let v = dev.upload(&random_bf16(rng, s.b * s.hkv * s.s * s.d))?;
        let mut o: DeviceBuffer<bf16> = dev.zeros(s.b * s.hq * s.s * s.d)?;
        let mut lse: DeviceBuffer<f32> = dev.zeros(s.b * s.hq * s.s)?;
        let scale = 1.0 / (s.d as f32).sqrt();
        let entry = attn.tune(&call, &q, &k, &v, scale, &mut o, &mut lse, options)?;
        let winner = attn.key_tile_for(&call);
        out.push(outcome(
            dev,
            &s.name(),
            (s.flops(), 1e9, Roof::TensorCores),
            &format!("BK={DEFAULT_BK}"),
            &entry,
            |tuned| {
                let bk = if tuned { winner } else { DEFAULT_BK };
                Ok(attn.run(&call, &q, &k, &v, scale, &mut o, &mut lse, Some(bk))?)
            },
        )?);
    }
    Ok(out)
}

fn decode_calls(
    dev: &Device,
    rng: &mut Rng,
    options: &TuneOptions,
) -> Result<Vec<Outcome>, RuntimeError> {
    let mut fd = FlashDecode::new(dev, Dtype::Bf16, 128, false)?;
    let mut out = Vec::new();
    for s in decode_shapes() {
        let shape = s.decode_shape();
        let kv_len = s.b * s.s * s.hkv * s.d;
        let q = dev.upload(&random_bf16(rng, s.b * s.hq * s.d))?;
        let k = dev.upload(&random_bf16(rng, kv_len))?;
        let v = dev.upload(&random_bf16(rng, kv_len))?;
        let mut o: DeviceBuffer<bf16> = dev.zeros(s.b * s.hq * s.d)?;
        let mut lse: DeviceBuffer<f32> = dev.zeros(s.b * s.hq)?;
        let mut scratch = DecodeScratch::new(dev, 1, s.d)?;
        let scale = 1.0 / (s.d as f32).sqrt();
        fd.chunk = None;
        let default_chunk =
            default_chunk(&shape, shape.seq, dev.multiprocessors()).div_ceil(16) * 16;
        let entry = fd.tune(
            &shape,
            &q,
            &k,
            &v,
            None,
            shape.seq,
            scale,
            &mut o,
            &mut lse,
            &mut scratch,
            options,
        )?;
        let tuned_chunk = fd.chunk_for(&shape, shape.seq, dev.multiprocessors());
        let bytes = 2.0 * 2.0 * kv_len as f64;
        out.push(outcome(
            dev,
            &s.name(),
            (bytes, 1e6, Roof::DeviceMemory),
            &format!("CHUNK={default_chunk}"),
            &entry,
            |tuned| {
                fd.chunk = Some(if tuned { tuned_chunk } else { default_chunk });
                Ok(fd.run(
                    &shape,
                    &q,
                    &k,
                    &v,
                    None,
                    shape.seq,
                    scale,
                    &mut o,
                    &mut lse,
                    &mut scratch,
                )?)
            },
        )?);
    }
    fd.chunk = None;
    Ok(out)
}

fn main() {
    let Some(dev) = gpu() else { return };
    let options = TuneOptions {
        progress: false,
        force: true,
    };
    let mut rng = Rng::new(5);
    let mut outcomes = Vec::new();
    for (what, result) in [
        ("gemm", gemm_shapes(&dev, &mut rng, &options)),
        ("prefill", prefill_calls(&dev, &mut rng, &options)),
        ("decode", decode_calls(&dev, &mut rng, &options)),
    ] {
        match result {
            Ok(o) => outcomes.extend(o),
            Err(e) => println!("tuning {what} failed: {e}"),
        }
    }
    for o in &outcomes {
        println!("{}", o.table);
    }
    let rows: Vec<Row> = outcomes.iter_mut().flat_map(|o| o.rows.drain(..)).collect();
    let tables: Vec<&str> = outcomes.iter().map(|o| o.table.as_str()).collect();
    report_with(
        "autotune",
        &dev,
        &rows,
        serde_json::json!({ "tables": tables }),
    );
}
