//! Every registered kernel's example specialisations compile with NVRTC for sm_80 and
//! sm_90. Skips (printing why) when NVRTC is absent, unless `KILN_REQUIRE_NVRTC=1`.

use kiln::codegen::Arch;

#[test]
fn every_registered_kernel_compiles_for_sm80_and_sm90() {
    let Some(location) = kiln::runtime::require::nvrtc_or_skip() else {
        return;
    };
    println!("NVRTC: {}", location.library.display());
    let rows = kiln::cli::compile_all(&[Arch::SM80, Arch::SM90]).expect("NVRTC was located");
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("{} [{}] {}: {e}", r.kernel, r.spec, r.arch.sm_name()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "NVRTC rejected:\n{}",
        failures.join("\n\n")
    );
    println!("{} specialisations compiled", rows.len());
    assert!(rows.len() >= 30);
}
