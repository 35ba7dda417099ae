//! `kiln demo`, the README's main job: what Kiln does end to end on this machine. It grows
//! with the project; today it specialises every registered kernel, compiles it with NVRTC,
//! then runs the corpus and the tile-layer kernels the pipelines build on (GEMM, flash
//! attention, flash-decoding) on the device (the GPU when present, else the CPU emulator)
//! and checks every result against its plain-Rust (float64) reference.

use std::fmt::Write as _;

use kiln_codegen::Arch;

use crate::cli::{compile_all, table};
use crate::cli_error::CliError;

/// Runs the demo and returns its report.
pub fn run(arch: &str) -> Result<String, CliError> {
    let arch: Arch = arch.parse().map_err(|e| CliError {
        message: e,
        code: 2,
    })?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Kiln demo: the language corpus, specialised and compiled with NVRTC for {}\n",
        arch.sm_name()
    );
    let rows = compile_all(&[arch]).map_err(|e| CliError {
        message: e.to_string(),
        code: 2,
    })?;
    let mut failed = 0;
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (status, ms, cubin) = match &r.result {
                Ok((ms, from, bytes)) => (
                    "ok".to_string(),
                    format!("{ms:.1} ({from})"),
                    format!("{:.1}", *bytes as f64 / 1024.0),
                ),
                Err(e) => {
                    failed += 1;
                    (
                        format!("error: {}", e.lines().next().unwrap_or_default()),
                        "-".into(),
                        "-".into(),
                    )
                }
            };
            vec![
                r.kernel.clone(),
                r.spec.clone(),
                r.cuda_lines.to_string(),
                ms,
                cubin,
                status,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "kernel",
            "specialisation",
            "CUDA lines",
            "build ms",
            "CUBIN KiB",
            "status",
        ],
        &table_rows,
    ));
    let _ = writeln!(
        out,
        "\n{} specialisations compiled, {failed} failed.",
        rows.len() - failed
    );
    let device = kiln_runtime::Device::from_env().map_err(|e| CliError {
        message: format!("{out}\n{e}"),
        code: 2,
    })?;
    let _ = writeln!(
        out,
        "\nRunning the corpus and the tile-layer kernels on the {} and checking them against plain-Rust references:\n",
        device.name()
    );
    let mut run_rows = Vec::new();
    for (name, check) in crate::corpus::verify::CHECKS
        .iter()
        .chain(kiln_algorithms::checks::CHECKS)
    {
        let start = std::time::Instant::now();
        let result = check(&device);
        let secs = start.elapsed().as_secs_f64();
        let status = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                failed += 1;
                format!(
                    "FAILED: {}",
                    e.to_string().lines().next().unwrap_or_default()
                )
            }
        };
        run_rows.push(vec![name.to_string(), format!("{secs:.2}"), status]);
    }
    out.push_str(&table(
        &["kernels", "seconds (incl. build)", "result"],
        &run_rows,
    ));
    match kiln_algorithms::hata::demo::run(&device) {
        Ok(report) => out.push_str(&report),
        Err(e) => {
            failed += 1;
            let _ = writeln!(out, "\nHATA: FAILED: {e}");
        }
    }
    match kiln_algorithms::chelsea::demo::run(&device) {
        Ok(report) => out.push_str(&report),
        Err(e) => {
            failed += 1;
            let _ = writeln!(out, "\nChelsea: FAILED: {e}");
        }
    }
    match kiln_algorithms::clo::demo::run(&device) {
        Ok(report) => out.push_str(&report),
        Err(e) => {
            failed += 1;
            let _ = writeln!(out, "\nCLO: FAILED: {e}");
        }
    }
    match kiln_algorithms::adacluster::demo::run(&device) {
        Ok(report) => out.push_str(&report),
        Err(e) => {
            failed += 1;
            let _ = writeln!(out, "\nAdaCluster: FAILED: {e}");
        }
    }
    match kiln_algorithms::bigmac::demo::run(&device) {
        Ok(report) => out.push_str(&report),
        Err(e) => {
            failed += 1;
            let _ = writeln!(out, "\nBigMac: FAILED: {e}");
        }
    }
    match kiln_algorithms::pat::demo::run() {
        Ok(report) => out.push_str(&report),
        Err(e) => {
            failed += 1;
            let _ = writeln!(out, "\nPAT: FAILED: {e}");
        }
    }
    if failed > 0 {
        return Err(CliError {
            message: out,
            code: 1,
        });
    }
    Ok(out)
}
