//! Out-of-process compilation (`kiln::runtime::isolated`): a compile worker builds the same
//! CUBIN as an in-process compile, hands NVRTC's errors back as compile errors, and a worker
//! that crashes — a real signal, or the fault switch — is an error naming the kernel and its
//! specialisation while the caller carries on; `kiln check` runs its compiles that way.
//! Needs NVRTC (skips without it, unless `KILN_REQUIRE_NVRTC=1`).

use std::path::PathBuf;
use std::process::Command;

use kiln::codegen::{cuda, registered_kernels, spec, Arch, Bindings};
use kiln::runtime::cache::kernel_options_for;
use kiln::runtime::isolated::{compile_in_child, FAULT_ENV};
use kiln::runtime::nvrtc::compile_ptx;
use kiln::runtime::RuntimeError;

fn kiln_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// The CUDA of the first registered kernel's first example, for sm_90.
fn module() -> cuda::CudaModule {
    let def = registered_kernels()[0];
    let bindings = Bindings::examples_of(def).expect("examples")[0].clone();
    cuda::print(&spec::specialize(def, &bindings, Arch::SM90).expect("specialises"))
}

#[test]
fn a_worker_builds_the_same_cubin_as_the_process() {
    if kiln::runtime::require::nvrtc_or_skip().is_none() {
        return;
    }
    let m = module();
    let opts = kernel_options_for("sm_90", false);
    let program = format!("{}.cu", m.entry);
    let (cubin, _log) = compile_in_child(&kiln_exe(), &m.source, &program, &opts).unwrap();
    let local = compile_ptx(&m.source, &program, &opts)
        .unwrap()
        .cubin
        .unwrap();
    assert!(cubin.starts_with(b"\x7fELF"), "not a CUBIN");
    assert_eq!(
        cubin, local,
        "the worker's CUBIN differs from the in-process one"
    );
}

#[test]
fn nvrtc_errors_come_back_as_compile_errors() {
    if kiln::runtime::require::nvrtc_or_skip().is_none() {
        return;
    }
    let source = "extern \"C\" __global__ void broken() { this is not cuda; }\n";
    let opts = kernel_options_for("sm_90", false);
    match compile_in_child(&kiln_exe(), source, "broken.cu", &opts) {
        Err(RuntimeError::Compile { program, log }) => {
            assert_eq!(program, "broken.cu");
            assert!(log.contains("error"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn a_worker_killed_by_a_signal_is_an_error_naming_the_kernel() {
    use std::os::unix::fs::PermissionsExt;
    // a stand-in compiler that segfaults, as NVRTC 13.0 did on a wgmma kernel
    let dir = std::env::temp_dir().join(format!("kiln-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("crashing-worker");
    std::fs::write(&fake, "#!/bin/sh\nkill -SEGV $$\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = module();
    let opts = kernel_options_for("sm_90", false);
    let err = compile_in_child(&fake, &m.source, &format!("{}.cu", m.entry), &opts)
        .expect_err("a crashed worker is an error");
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeError::CompilerCrashed { .. }),
        "{text}"
    );
    assert!(text.contains("SIGSEGV"), "{text}");
    assert!(text.contains(&m.entry), "{text}");
    assert!(
        text.contains("target sm_90"),
        "the specialisation is named: {text}"
    );
    let missing = compile_in_child(&dir.join("no-such-worker"), &m.source, "x.cu", &opts)
        .expect_err("a missing worker is an error");
    assert!(missing.to_string().contains("did not start"), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kiln_check_survives_a_crashing_compiler() {
    if kiln::runtime::require::nvrtc_or_skip().is_none() {
        return;
    }
    let cache = std::env::temp_dir().join(format!("kiln-check-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let out = Command::new(kiln_exe())
        .args(["check", "--arch", "sm_90"])
        .env("KILN_CACHE_DIR", &cache)
        .env(FAULT_ENV, "abort")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.code().is_some(),
        "kiln check itself died: {text}"
    );
    assert!(
        !out.status.success(),
        "every compile crashed, yet check passed: {text}"
    );
    assert!(text.contains("compiler crashed"), "{text}");
    assert!(text.contains("SIGABRT"), "{text}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn options_a_worker_cannot_reproduce_are_refused() {
    let m = module();
    let mut opts = kernel_options_for("sm_90", false);
    opts.extra.push("--maxrregcount=64".into());
    let err = compile_in_child(&kiln_exe(), &m.source, "x.cu", &opts).expect_err("refused");
    assert!(err.to_string().contains("kernel options"), "{err}");
}
