//! The GPU-free parts of the bench support code (`benches/support`): the baseline JSON reader
//! and its shape names (checked against `benches/baselines/attention.py`), and the SVG plots.

#[path = "../benches/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;

use support::baseline::{decode_shapes, prefill_shapes, AttnShape, Baselines};
use support::plot::{plot_series, plot_series_with, PlotOptions};

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-bench-support-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn shape_names_follow_the_convention() {
    assert_eq!(
        AttnShape::prefill(1, 32, 32, 8192, 128, true).name(),
        "prefill b1 h32/32 s8192 d128 causal"
    );
    assert_eq!(
        AttnShape::prefill(1, 32, 8, 4096, 64, false).name(),
        "prefill b1 h32/8 s4096 d64 noncausal"
    );
    assert_eq!(
        AttnShape::decode(8, 32, 8, 32768, 128).name(),
        "decode b8 h32/8 s32768 d128"
    );
    assert_eq!(prefill_shapes().len(), 32);
    assert_eq!(decode_shapes().len(), 10);
}

#[test]
fn work_of_a_shape() {
    let p = AttnShape::prefill(1, 32, 32, 4096, 128, false);
    assert_eq!(p.flops(), 4.0 * 32.0 * 4096.0 * 4096.0 * 128.0);
    let c = AttnShape::prefill(1, 32, 32, 4096, 128, true);
    assert_eq!(c.flops(), p.flops() / 2.0);
    let d = AttnShape::decode(8, 32, 8, 32768, 128);
    // K and V: 2 tensors × 8 sequences × 8 heads × 32768 × 128 × 2 bytes
    assert_eq!(d.kv_bytes(), 2.0 * 8.0 * 8.0 * 32768.0 * 128.0 * 2.0);
}

/// The Python baseline and the Rust benches must name every shape the same way.
#[test]
fn python_and_rust_shape_names_agree() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/baselines/attention.py"
    );
    let out = match Command::new("python3").args([script, "--list"]).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: python3 cannot be run ({e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "attention.py --list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let rust: Vec<String> = prefill_shapes()
        .iter()
        .chain(decode_shapes().iter())
        .map(AttnShape::name)
        .collect();
    assert_eq!(python, rust);
}

const SAMPLE: &str = r#"{
  "device": "NVIDIA H100 80GB HBM3",
  "rows": [
    {"bench": "attention-prefill", "shape": "prefill b1 h32/32 s8192 d128 causal",
     "baseline": "torch-sdpa-flash", "median_ms": 2.5, "tflops": 440.0},
    {"bench": "attention-decode", "shape": "decode b8 h32/8 s32768 d128",
     "baseline": "torch-sdpa-efficient", "median_ms": 0.4, "gbps": 2700.0},
    {"bench": "attention-decode", "shape": "decode b8 h32/8 s262144 d128",
     "baseline": "torch-sdpa", "median_ms": null, "error": "flash: out of memory"}
  ]
}"#;

#[test]
fn baselines_are_keyed_by_shape() {
    let b = Baselines::parse(SAMPLE).expect("valid JSON");
    assert_eq!(b.by_shape.len(), 2);
    let p = b
        .get("prefill b1 h32/32 s8192 d128 causal")
        .expect("prefill row");
    assert_eq!(p.baseline, "torch-sdpa-flash");
    assert_eq!(p.median_ms, 2.5);
    assert_eq!(p.tflops, Some(440.0));
    assert_eq!(p.gbps, None);
    let shape = AttnShape::decode(8, 32, 8, 32768, 128).name();
    let d = b.get(&shape).expect("decode row");
    assert_eq!(d.gbps, Some(2700.0));
    // ours twice as fast → 2.0 "of" the baseline, as in every bench row
    assert_eq!(d.vs(0.2), ("torch-sdpa-efficient".to_string(), 2.0));
    assert_eq!(
        b.skipped,
        vec![(
            "decode b8 h32/8 s262144 d128".to_string(),
            "flash: out of memory".to_string()
        )]
    );
    assert!(b.get("decode b1 h32/8 s8192 d128").is_none());
}

#[test]
fn a_bare_list_of_rows_is_accepted() {
    let b = Baselines::parse(
        r#"[{"shape": "decode b1 h32/8 s8192 d128", "median_ms": 0.05, "baseline": "x"}]"#,
    )
    .expect("valid");
    assert_eq!(
        b.get("decode b1 h32/8 s8192 d128").map(|r| r.median_ms),
        Some(0.05)
    );
}

#[test]
fn bad_baseline_files_are_errors_not_panics() {
    assert!(Baselines::parse("not json")
        .unwrap_err()
        .contains("not JSON"));
    assert!(Baselines::parse("{}").unwrap_err().contains("rows"));
    assert!(Baselines::parse("3").unwrap_err().contains("expected"));
    assert!(Baselines::parse(r#"[{"median_ms": 1.0}]"#)
        .unwrap_err()
        .contains("row 0 has no `shape`"));
    let missing = temp_path("no-such-file.json");
    let e = Baselines::load_from(&missing).unwrap_err();
    assert!(
        e.contains("cannot read") && e.contains("no-such-file.json"),
        "{e}"
    );
}

#[test]
fn baselines_are_read_from_a_file() {
    let path = temp_path("baseline.json");
    std::fs::write(&path, SAMPLE).expect("write");
    let b = Baselines::load_from(&path).expect("readable");
    assert_eq!(b.by_shape.len(), 2);
}

fn series() -> Vec<(String, Vec<(f64, f64)>)> {
    vec![
        (
            "kiln decode".to_string(),
            vec![(8192.0, 0.05), (32768.0, 0.12), (262144.0, 0.9)],
        ),
        (
            "torch-sdpa-flash".to_string(),
            vec![(8192.0, 0.07), (32768.0, 0.2), (262144.0, f64::NAN)],
        ),
    ]
}

#[test]
fn plots_are_svg_files_with_title_and_legend() {
    let path = temp_path("decode.svg");
    plot_series(
        &path,
        "decode b1 h32/8 d128",
        "context length (tokens)",
        "median ms",
        &series(),
    )
    .expect("plot");
    let svg = std::fs::read_to_string(&path).expect("written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for text in [
        "decode b1 h32/8 d128",
        "context length (tokens)",
        "median ms",
        "kiln decode",
        "torch-sdpa-flash",
        "256K",
    ] {
        assert!(svg.contains(text), "`{text}` missing from the SVG");
    }
}

#[test]
fn plot_axes() {
    let auto = PlotOptions::auto(&series());
    assert!(auto.log_x && auto.log_y, "{auto:?}");
    let narrow = vec![("a".to_string(), vec![(2048.0, 100.0), (8192.0, 120.0)])];
    assert_eq!(PlotOptions::auto(&narrow), PlotOptions::default());
    // linear axes and a single point still make a plot
    let one = vec![("a".to_string(), vec![(1.0, 1.0)])];
    plot_series_with(
        &temp_path("one.svg"),
        "t",
        "x",
        "y",
        &one,
        PlotOptions::default(),
    )
    .expect("one point");
    let empty = vec![("a".to_string(), vec![(f64::NAN, 1.0)])];
    assert!(plot_series(&temp_path("empty.svg"), "t", "x", "y", &empty)
        .unwrap_err()
        .contains("nothing to plot"));
}
