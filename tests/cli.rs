//! The `kiln` command: list, emit and check behave, and a missing NVRTC is a clear error
//! with a non-zero exit, never a panic.

use std::process::Command;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn list_shows_the_corpus() {
    let out = kiln().arg("list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kiln::corpus::basics::hamming_scores") && text.contains("const WORDS: u32"),
        "{text}"
    );
}

#[test]
fn emit_prints_the_specialised_cuda_and_rejects_bad_values() {
    let out = kiln()
        .args(["emit", "hamming_scores", "--const", "WORDS=8"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("constexpr unsigned int WORDS = 8u;"));
    let out = kiln()
        .args(["emit", "row_softmax", "--dtype", "bf16"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("kiln_bf16"));
    let out = kiln().args(["emit", "hamming_scores"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no value for comptime parameter `WORDS`")
    );
    let out = kiln().args(["emit", "no_such_kernel"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = kiln()
        .args(["emit", "hamming_scores", "--const", "WORDS=-1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"));
}

#[test]
fn check_without_nvrtc_explains_and_fails() {
    let empty = std::env::temp_dir().join(format!("kiln-no-nvrtc-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = kiln()
        .arg("check")
        .env_clear()
        .env("PATH", &empty)
        .env("KILN_NVRTC_PATH", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("nvidia-cuda-nvrtc"),
        "the error says how to install NVRTC: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_on_the_emulator_reports_clean_kernels_and_catches_bugs() {
    let out = kiln()
        .args([
            "run",
            "vector_add",
            "--dtype",
            "f32",
            "--emulate",
            "--len",
            "1000",
            "--grid",
            "4",
            "--block",
            "256",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("CPU emulator") && text.contains("clean"),
        "{text}"
    );
    // n = len but keys need n * WORDS elements: the emulator reports the out-of-bounds read
    let out = kiln()
        .args([
            "run",
            "hamming_scores",
            "--const",
            "WORDS=4",
            "--emulate",
            "--len",
            "1024",
            "--grid",
            "4",
            "--block",
            "256",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("out-of-bounds")
            && err.contains("src/corpus/basics.rs")
            && err.contains("keys"),
        "{err}"
    );
}

#[test]
fn tune_searches_stores_and_shows() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = kiln()
        .args([
            "tune",
            "vector_add",
            "--dtype",
            "f32",
            "--emulate",
            "--len",
            "4096",
        ])
        .env("KILN_CACHE_DIR", &dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("<- winner"), "{text}");
    // vector_add is declared `threads = 256`: larger blocks are dropped with the launch check's reason
    assert!(text.contains("threads = 256"), "{text}");
    let shown = kiln()
        .args(["tune", "--show"])
        .env("KILN_CACHE_DIR", &dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("vector_add"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_takes_two_dimensional_launches() {
    let out = kiln()
        .args([
            "run",
            "transpose",
            "--const",
            "TILE=32",
            "--block",
            "32x32",
            "--grid",
            "2x2",
            "--arg",
            "rows=64",
            "--arg",
            "cols=64",
            "--emulate",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln()
        .args([
            "run",
            "transpose",
            "--const",
            "TILE=32",
            "--block",
            "32by32",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
