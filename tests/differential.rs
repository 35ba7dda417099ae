//! GPU against emulator: the same kernels on the same random inputs, on both backends.
//! Integer outputs must be bit-identical, float outputs within dtype tolerance (the GPU
//! contracts `a * b + c` into FMA and its `expf` differs from Rust's in the last bits).
//! Needs a GPU (skips without one unless `KILN_REQUIRE_GPU=1`).

mod common;

use kiln::algorithms::verify::rel_err;
use kiln::runner::{launch_random, RunRequest, Values};
use kiln::runtime::Device;

struct Case {
    kernel: &'static str,
    consts: &'static [&'static str],
    dtype: Option<&'static str>,
    grid: u32,
    block: u32,
    dyn_shared: u32,
    args: &'static [&'static str],
    tolerance: f64,
}

const fn case(
    kernel: &'static str,
    consts: &'static [&'static str],
    dtype: Option<&'static str>,
    grid: u32,
    block: u32,
    args: &'static [&'static str],
    tolerance: f64,
) -> Case {
    Case {
        kernel,
        consts,
        dtype,
        grid,
        block,
        dyn_shared: 0,
        args,
        tolerance,
    }
}

const LEN: u32 = 4096;

const CASES: &[Case] = &[
    case("vector_add", &[], Some("f32"), 16, 256, &[], 0.0),
    case("vector_add", &[], Some("bf16"), 16, 256, &[], 0.0),
    case("vector_add", &[], Some("f16"), 16, 256, &[], 0.0),
    case("saxpy", &[], None, 8, 128, &["alpha=1.5"], 0.0),
    case(
        "hamming_scores",
        &["WORDS=4"],
        None,
        8,
        128,
        &["n=1024"],
        0.0,
    ),
    case("vec_scale", &[], Some("bf16"), 4, 128, &["scale=0.75"], 0.0),
    case("bits_and_casts", &[], None, 16, 256, &[], 0.0),
    case(
        "first_above",
        &[],
        None,
        1,
        64,
        &["rows=64", "cols=64", "threshold=0.5"],
        0.0,
    ),
    case(
        "row_dot_registers",
        &["K=64"],
        None,
        1,
        64,
        &["rows=64"],
        1e-6,
    ),
    case("histogram", &["BINS=256"], None, 4, 256, &[], 0.0),
    case(
        "async_stage",
        &["TILE=1024"],
        None,
        4,
        128,
        &["scale=2.0"],
        0.0,
    ),
    case("warp_reduce_sum", &[], None, 16, 256, &[], 1e-6),
    case("block_reduce_sum", &["BLOCK=256"], None, 8, 256, &[], 1e-6),
    case(
        "row_softmax",
        &[],
        Some("f32"),
        8,
        128,
        &["rows=32", "cols=128"],
        1e-6,
    ),
    case(
        "row_softmax",
        &[],
        Some("bf16"),
        8,
        128,
        &["rows=32", "cols=128"],
        1e-2,
    ),
    case("block_scan", &["BLOCK=256"], None, 16, 256, &[], 0.0),
    case("warp_votes", &[], None, 16, 256, &[], 0.0),
    case(
        "row_mean_square",
        &[],
        Some("f32"),
        16,
        32,
        &["cols=256"],
        1e-6,
    ),
    case("bitonic_sort", &["N=1024"], None, 4, 1024, &[], 0.0),
    case("stream_copy", &[], Some("f32"), 2, 128, &[], 0.0),
    case("stream_sum", &[], None, 2, 128, &[], 1e-6),
    // tensor cores: one warp; the fragment registers after ldmatrix and the packed halves
    // must be bit-identical lane by lane, the mma results within f32 rounding
    case("mma_tile_16x8x16", &[], Some("bf16"), 1, 32, &[], 1e-6),
    case("mma_tile_16x8x16", &[], Some("f16"), 1, 32, &[], 1e-6),
    case("fragment_layout", &[], Some("bf16"), 1, 32, &[], 1e-6),
    case("fragment_layout", &[], Some("f16"), 1, 32, &[], 1e-6),
];

#[test]
fn gpu_and_emulator_agree_on_random_inputs() {
    let Some(gpu) = common::device() else { return };
    if !gpu.is_gpu() {
        return println!("SKIPPED: the differential test needs a GPU");
    }
    let emulator = Device::emulator();
    let mut report = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let consts: Vec<String> = c.consts.iter().map(|s| s.to_string()).collect();
        let args: Vec<String> = c.args.iter().map(|s| s.to_string()).collect();
        let mut dyn_shared = c.dyn_shared;
        if c.kernel == "reverse_chunks" {
            dyn_shared = c.block * 4;
        }
        let req = RunRequest {
            kernel: c.kernel,
            consts: &consts,
            dtype: c.dtype,
            emulate: false,
            len: LEN,
            grid: (c.grid, 1, 1),
            block: (c.block, 1, 1),
            dyn_shared,
            args: &args,
            seed: 1000 + i as u64,
        };
        let on_gpu = launch_random(&req, &gpu)
            .unwrap_or_else(|e| panic!("{} on the GPU: {}", c.kernel, e.message));
        let on_emu = launch_random(&req, &emulator)
            .unwrap_or_else(|e| panic!("{} on the emulator: {}", c.kernel, e.message));
        for ((name, g), (_, e)) in on_gpu.iter().zip(&on_emu) {
            let line = match (g, e) {
                (Values::Int(g), Values::Int(e)) => {
                    let differ = g.iter().zip(e).filter(|(a, b)| a != b).count();
                    let first = g.iter().zip(e).position(|(a, b)| a != b);
                    assert_eq!(
                        differ,
                        0,
                        "{} {:?} `{name}`: {differ} integer elements differ, the first at index {:?}: GPU {:#x?} vs emulator {:#x?}",
                        c.kernel,
                        c.dtype,
                        first,
                        first.map(|i| g[i]),
                        first.map(|i| e[i])
                    );
                    format!(
                        "{} {:?} `{name}`: {} integers identical",
                        c.kernel,
                        c.dtype,
                        g.len()
                    )
                }
                (Values::Float(g), Values::Float(e)) => {
                    let err = rel_err(g, e);
                    let identical = g
                        .iter()
                        .zip(e)
                        .filter(|(a, b)| a.to_bits() == b.to_bits())
                        .count();
                    assert!(
                        err <= c.tolerance,
                        "{} {:?} `{name}`: relative error {err:e} > {:e}",
                        c.kernel,
                        c.dtype,
                        c.tolerance
                    );
                    format!(
                        "{} {:?} `{name}`: rel err {err:.1e}, {identical}/{} bit-identical",
                        c.kernel,
                        c.dtype,
                        g.len()
                    )
                }
                _ => panic!("{}: output kinds differ", c.kernel),
            };
            report.push(line);
        }
    }
    println!("{}", report.join("\n"));
}
