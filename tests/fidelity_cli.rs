//! `kiln fidelity --data` on a capture written as a user would (safetensors q/k/v), with hash
//! weights from `kiln hata train`: both reports print with their verdicts; a missing file or
//! mismatched weights are errors with a message and exit code 2, never a panic.

use std::process::Command;

use kiln::algorithms::workload::{generate, WorkloadSpec};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// A fresh folder `kiln-<name>-<pid>` in the temp dir holding `capture.safetensors`, a
/// generated b2 h8/2 s640 d64 capture with 320 query rows; returns the folder and the file.
fn capture_in(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kiln-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("capture.safetensors");
    let spec = WorkloadSpec {
        batch: 2,
        heads: 8,
        kv_heads: 2,
        seq: 640,
        queries: 320,
        dim: 64,
        seed: 11,
        ..WorkloadSpec::default()
    };
    generate(&spec).unwrap().save(&capture).unwrap();
    (dir, capture)
}

/// `kiln hata train --emulate --max-samples 1024` on `capture` into `weights` with `extra`
/// arguments; it must succeed.
fn train_weights(capture: &std::path::Path, weights: &std::path::Path, extra: &[&str]) {
    let out = kiln()
        .args(["hata", "train", "--emulate", "--max-samples", "1024"])
        .args(extra)
        .arg("--data")
        .arg(capture)
        .arg("--out")
        .arg(weights)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kiln hata train --objective ranking` trains and writes weights of the capture's shape,
/// with the objective in the file's metadata.
#[test]
fn hata_train_takes_the_ranking_objective() {
    let (dir, capture) = capture_in("ranking");
    let weights = dir.join("w.safetensors");
    train_weights(
        &capture,
        &weights,
        &[
            "--epochs",
            "2",
            "--objective",
            "ranking",
            "--queries-per-sequence",
            "2",
        ],
    );
    let w = kiln::algorithms::hata::train::capture_file::read_weights(&weights).unwrap();
    assert_eq!(w.shape, [2, 64, 128]);
    assert!(w.w.iter().all(|v| v.is_finite()));
    let bytes = std::fs::read(&weights).unwrap();
    assert!(
        String::from_utf8_lossy(&bytes).contains("\"kiln.hata.objective\":\"ranking\""),
        "the weights' metadata does not name the objective"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fidelity_reports_both_pipelines_on_a_capture() {
    let (dir, capture) = capture_in("fidelity");
    let weights = dir.join("w.safetensors");
    train_weights(&capture, &weights, &["--epochs", "1"]);
    let out = kiln()
        .args(["fidelity", "--emulate"])
        .arg("--data")
        .arg(&capture)
        .arg("--weights")
        .arg(&weights)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "hata (trained W)",
        "hata (random W)",
        "quest (pages of 16)",
        "loki (r = 16)",
        "keys centred",
        "chelsea + log n",
        "evenly spaced",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(text.matches("verdict:").count(), 2, "{text}");
    // weights for another shape: refused with the shapes named
    let other = kiln()
        .args(["fidelity", "--emulate", "--rbit", "256"])
        .arg("--data")
        .arg(&capture)
        .arg("--weights")
        .arg(&capture)
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("no tensor \"w\""),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let missing = kiln()
        .args(["fidelity", "--emulate", "--data"])
        .arg(dir.join("absent.safetensors"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&missing.stderr).is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fidelity_reports_adacluster_on_a_video_capture() {
    use kiln::algorithms::workload::video::{generate_video, VideoSpec};
    let dir = std::env::temp_dir().join(format!("kiln-fidelity-video-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("video.safetensors");
    let spec = VideoSpec::small(4, 8, 8, 2, 64).with_seed(1);
    generate_video(&spec).unwrap().save(&capture).unwrap();
    let run = |grid: &str| {
        kiln()
            .args(["fidelity", "--emulate", "--rows", "32", "--video", grid])
            .arg("--data")
            .arg(&capture)
            .output()
            .unwrap()
    };
    let out = run("4x8x8");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for method in ["adacluster", "spatio-temporal window", "k-means on Q only"] {
        assert!(text.contains(method), "{method} missing from:\n{text}");
    }
    assert!(text.contains("baselines at the same key budget"), "{text}");
    // a grid larger than the capture, and a malformed one, are usage errors
    for bad in ["40x8x8", "4x8"] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "--video {bad}: {:?}", out);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
