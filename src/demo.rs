//! `kiln demo`, the README's main job: what Kiln does end to end on this machine. It grows
//! with the project; today it specialises every registered kernel, prints how big its CUDA
//! is and compiles it with NVRTC for the target architecture.

use std::fmt::Write as _;

use kiln_codegen::Arch;

use crate::cli::{compile_all, table, CliError};

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
            let (status, ms, ptx) = match &r.result {
                Ok((ms, bytes)) => (
                    "ok".to_string(),
                    format!("{ms:.1}"),
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
                ptx,
                status,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "kernel",
            "specialisation",
            "CUDA lines",
            "NVRTC ms",
            "PTX KiB",
            "status",
        ],
        &table_rows,
    ));
    let _ = writeln!(
        out,
        "\n{} specialisations compiled, {failed} failed.",
        rows.len() - failed
    );
    let _ = writeln!(
        out,
        "Running them (GPU when present, CPU emulator otherwise) and the six research pipelines join this demo as they land."
    );
    if failed > 0 {
        return Err(CliError {
            message: out,
            code: 1,
        });
    }
    Ok(out)
}
