//! Mapping NVRTC's messages about generated CUDA back to the Rust lines they came from.

use kiln_codegen::CudaModule;

/// Appends `[at file.rs:N]` to every log line of the form `program(LINE): …`.
pub fn annotate_log(log: &str, program: &str, module: &CudaModule) -> String {
    let prefix = format!("{program}(");
    log.lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix(&prefix) else {
                return line.to_string();
            };
            let Some(close) = rest.find(')') else {
                return line.to_string();
            };
            match rest[..close]
                .parse::<u32>()
                .ok()
                .and_then(|l| module.rust_line(l))
            {
                Some(rust) => format!("{line} [at {}:{rust}]", module.rust_file),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
