//! NVRTC integration tests: compile tiny self-contained kernels, check compile errors carry the
//! log, and check that a failed search reports every path it tried.
//!
//! Tests that need NVRTC skip when it is absent, unless `KILN_REQUIRE_NVRTC=1` (CI).

use std::path::PathBuf;

use kiln_runtime::locate::{locate_nvrtc_in, SearchOrigin, SearchRoots, TryOutcome};
use kiln_runtime::require::nvrtc_or_skip;
use kiln_runtime::{compile_ptx, nvrtc_version, CompileOptions, RuntimeError};

const DOUBLE: &str = r#"extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f; }"#;

#[test]
fn compiles_for_sm80_and_sm90() {
    let Some(loc) = nvrtc_or_skip() else { return };
    println!(
        "NVRTC: {} ({}) companions {:?}",
        loc.library.display(),
        loc.origin,
        loc.companions
    );
    for arch in ["sm_80", "sm_90", "sm_90a"] {
        let out = compile_ptx(DOUBLE, "k", &CompileOptions::for_arch(arch))
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(
            out.ptx.contains(".entry k"),
            "{arch}: no `.entry k` in\n{}",
            out.ptx
        );
        assert!(
            out.ptx.contains(&format!(".target {arch}")),
            "{arch}: wrong target in\n{}",
            out.ptx
        );
        println!(
            "{arch}: {} bytes of PTX in {:.1} ms",
            out.ptx.len(),
            out.compile_ms
        );
    }
}

#[test]
fn fast_math_and_extra_options_are_accepted() {
    let Some(_) = nvrtc_or_skip() else { return };
    let opts = CompileOptions {
        arch: "sm_90".into(),
        line_info: false,
        fast_math: true,
        extra: vec!["--maxrregcount=64".into()],
        cubin: false,
    };
    let out = compile_ptx(DOUBLE, "k", &opts).unwrap();
    assert!(out.ptx.contains(".entry k"));
    assert!(out.cubin.is_none());
}

#[test]
fn cubin_is_produced_for_the_real_architecture() {
    let Some(_) = nvrtc_or_skip() else { return };
    let opts = CompileOptions {
        cubin: true,
        ..CompileOptions::for_arch("sm_90")
    };
    let out = compile_ptx(DOUBLE, "k", &opts).unwrap();
    let cubin = out.cubin.expect("a CUBIN was requested");
    assert_eq!(&cubin[..4], b"\x7fELF", "a CUBIN is an ELF image");
}

#[test]
fn version_is_reported() {
    let Some(_) = nvrtc_or_skip() else { return };
    let (major, minor) = nvrtc_version().unwrap();
    println!("NVRTC {major}.{minor}");
    assert!(major >= 12, "NVRTC {major}.{minor}");
}

#[test]
fn syntax_error_returns_compile_error_with_log() {
    let Some(_) = nvrtc_or_skip() else { return };
    let bad = r#"extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.0f }"#; // missing ';'
    match compile_ptx(bad, "bad_kernel", &CompileOptions::for_arch("sm_80")) {
        Err(RuntimeError::Compile { program, log }) => {
            assert_eq!(program, "bad_kernel");
            assert!(
                log.contains("bad_kernel"),
                "log does not name the program:\n{log}"
            );
            assert!(
                log.contains("error"),
                "log does not mention the error:\n{log}"
            );
            assert!(log.contains("expected a \";\""), "unexpected log:\n{log}");
        }
        other => panic!("expected RuntimeError::Compile, got {other:?}"),
    }
}

#[test]
fn unknown_option_is_an_error_not_a_panic() {
    let Some(_) = nvrtc_or_skip() else { return };
    let opts = CompileOptions {
        extra: vec!["--no-such-option".into()],
        ..CompileOptions::default()
    };
    match compile_ptx(DOUBLE, "k", &opts) {
        Err(RuntimeError::Nvrtc { call, code, log }) => {
            assert_eq!(call, "nvrtcCompileProgram");
            assert_eq!(code, "NVRTC_ERROR_INVALID_OPTION");
            assert!(log.contains("--no-such-option"), "{log}");
        }
        other => panic!("expected RuntimeError::Nvrtc, got {other:?}"),
    }
}

/// A fresh, empty folder under the system temp dir (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("kiln-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn empty_explicit_folder_fails_naming_every_path_tried() {
    let empty = TempDir::new("empty-nvrtc");
    let roots = SearchRoots {
        explicit: Some(empty.0.clone()),
        notes: vec!["test: every other root disabled".into()],
        ..SearchRoots::empty()
    };
    let err = locate_nvrtc_in(&roots).unwrap_err();
    let RuntimeError::LibraryNotFound { tried, .. } = &err else {
        panic!("expected LibraryNotFound, got {err:?}");
    };
    let expected: Vec<PathBuf> = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        .iter()
        .map(|n| empty.0.join(n))
        .collect();
    let got: Vec<PathBuf> = tried.iter().map(|t| t.path.clone()).collect();
    assert_eq!(got, expected);
    assert!(tried
        .iter()
        .all(|t| t.origin == SearchOrigin::EnvVar && t.outcome == TryOutcome::NotFound));
    let msg = err.to_string();
    // Missing files of one folder share a line: `<folder>/{libnvrtc.so.13, libnvrtc.so.12, ...}`.
    let line = format!(
        "{}/{{libnvrtc.so.13, libnvrtc.so.12, libnvrtc.so}} [explicit path]: not found",
        empty.0.display()
    );
    assert!(msg.contains(&line), "message lacks `{line}`:\n{msg}");
    assert!(
        msg.contains("pip install nvidia-cuda-nvrtc==13.0.88"),
        "{msg}"
    );
    assert!(
        msg.contains("KILN_NVRTC_PATH") && msg.contains("CUDA_HOME"),
        "{msg}"
    );
    assert!(msg.contains("test: every other root disabled"), "{msg}");
}

#[test]
fn a_file_that_is_not_nvrtc_is_rejected_with_the_reason() {
    let dir = TempDir::new("fake-nvrtc");
    let fake = dir.0.join("libnvrtc.so.13");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let roots = SearchRoots {
        explicit: Some(fake.clone()),
        ..SearchRoots::empty()
    };
    let err = locate_nvrtc_in(&roots).unwrap_err();
    let RuntimeError::LibraryNotFound { tried, .. } = &err else {
        panic!("expected LibraryNotFound, got {err:?}");
    };
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0].path, fake);
    let TryOutcome::LoadFailed(why) = &tried[0].outcome else {
        panic!("expected LoadFailed: {err}");
    };
    // The loader's own explanation is kept, not just libloading's "dlopen failed".
    assert!(why.contains("libnvrtc.so.13:"), "{why}");
    println!("{err}");
}

#[test]
fn no_roots_at_all_is_a_clear_error() {
    let err = locate_nvrtc_in(&SearchRoots::empty()).unwrap_err();
    assert!(
        err.to_string()
            .contains("every search root was unavailable"),
        "{err}"
    );
}

#[test]
fn nvrtc_errors_name_the_rust_line() {
    let Some(_) = nvrtc_or_skip() else { return };
    let module = kiln_codegen::CudaModule {
        source: "extern \"C\" __global__ void k(float* x) {\n    x[0] = undefined_name;\n}\n"
            .into(),
        entry: "k".into(),
        line_map: vec![(1, 10), (2, 12)],
        rust_file: "src/kernels.rs".into(),
        needs_sm90a: false,
    };
    let err = kiln_runtime::cache::compile_cached_in(
        &module,
        kiln_codegen::Arch::SM90,
        &Default::default(),
        None,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("undefined_name") && text.contains("[at src/kernels.rs:12]"),
        "{text}"
    );
}
