use kiln::codegen::{registered_kernels, Arch, Bindings, Dtype};
fn main() {
    for def in registered_kernels() {
        let f = def.ir().unwrap();
        let mut b = Bindings::default();
        for g in &f.generics {
            match g {
                kiln::codegen::ir::Generic::Const { name, .. } => {
                    b = b.with_const(name, if name == "WORDS" { 4 } else { 32 })
                }
                kiln::codegen::ir::Generic::Type { name } => b = b.with_type(name, Dtype::Bf16),
            }
        }
        match kiln::codegen::spec::specialize(def, &b, Arch(90)) {
            Ok(p) => {
                let m = kiln::codegen::cuda::print(&p);
                std::fs::write(format!("/tmp/cu/{}.cu", def.name), &m.source).unwrap();
                match kiln::runtime::compile_module(&m, Arch(90)) {
                    Ok(c) => println!(
                        "{:30} ok {:.1} ms {}",
                        def.name,
                        c.compile_ms,
                        c.log.lines().count()
                    ),
                    Err(e) => println!("{:30} NVRTC ERROR {e}", def.name),
                }
            }
            Err(e) => println!("{:30} SPEC ERROR {e}", def.name),
        }
    }
}
