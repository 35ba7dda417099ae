//! Pins the generated CUDA of every registered kernel's example specialisations (sm_90):
//! the text must be deterministic and change only on purpose (`INSTA_UPDATE=always`).

use kiln::codegen::{cuda, registered_kernels, spec, Arch};

#[test]
fn every_example_specialisation_matches_its_snapshot() {
    let kernels = registered_kernels();
    assert!(
        kernels.len() >= 15,
        "the corpus must hold at least 15 kernels, found {}",
        kernels.len()
    );
    for def in kernels {
        for bindings in
            kiln::codegen::Bindings::examples_of(def).expect("every registered kernel has examples")
        {
            let program =
                spec::specialize(def, &bindings, Arch::SM90).expect("examples specialise");
            let module = cuda::print(&program);
            let tag = bindings
                .describe()
                .replace(['=', ','], "_")
                .replace(' ', "");
            let name = if tag.is_empty() {
                def.name.to_string()
            } else {
                format!("{}__{tag}", def.name)
            };
            insta::assert_snapshot!(name, module.source);
        }
    }
}

#[test]
fn specialisation_is_a_pure_function_of_its_inputs() {
    for def in registered_kernels() {
        for bindings in kiln::codegen::Bindings::examples_of(def).expect("examples") {
            let a =
                cuda::print(&spec::specialize(def, &bindings, Arch::SM90).expect("specialises"));
            let b =
                cuda::print(&spec::specialize(def, &bindings, Arch::SM90).expect("specialises"));
            assert_eq!(a, b, "{} is not deterministic", def.name);
            assert!(
                !a.source.contains("#include"),
                "{}: generated CUDA must be self-contained",
                def.name
            );
        }
    }
}
