//! The descriptors that `#[kernel]` and `#[device]` embed in the user's crate, and the
//! registry of every kernel linked into the program (for `kiln list`/`check`/`demo`).

/// A checked function as embedded by the proc macro: its IR (JSON) and the device
/// functions it calls, each under the path written at the call site.
#[derive(Debug)]
pub struct FnDef {
    /// The function's Rust name.
    pub name: &'static str,
    /// `module_path!()` of the defining module.
    pub module: &'static str,
    /// `file!()` of the defining file.
    pub file: &'static str,
    /// The serialised [`crate::ir::Function`].
    pub ir_json: &'static str,
    /// The device functions it calls directly.
    pub deps: &'static [Dep],
    /// Example specialisations from `#[kernel(example(N = 4, T = bf16))]`: what `kiln check`,
    /// `kiln demo` and CI compile. Each is a list of (parameter, value).
    pub examples: &'static [&'static [(&'static str, &'static str)]],
}

/// A device function called by a [`FnDef`].
#[derive(Debug)]
pub struct Dep {
    /// The callee's path as written at the call site (`dot`, `common::warp_sum`).
    pub path: &'static str,
    /// The callee's descriptor.
    pub def: &'static FnDef,
}

impl FnDef {
    /// The function's IR.
    pub fn ir(&self) -> Result<crate::ir::Function, serde_json::Error> {
        serde_json::from_str(self.ir_json)
    }

    /// The JSON form of a function's IR, as embedded by the proc macros.
    pub fn encode(function: &crate::ir::Function) -> String {
        serde_json::to_string(function).expect("the IR contains only serialisable data")
    }

    /// `module::name`, unique per program.
    pub fn qualified_name(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }
}

/// A kernel registered by `#[kernel]` (collected across crates at link time).
pub struct Registered(pub &'static FnDef);

inventory::collect!(Registered);

/// Every kernel linked into this program, sorted by qualified name.
pub fn registered_kernels() -> Vec<&'static FnDef> {
    let mut v: Vec<&'static FnDef> = inventory::iter::<Registered>
        .into_iter()
        .map(|r| r.0)
        .collect();
    v.sort_by_key(|d| d.qualified_name());
    v
}

/// The registered kernel called `name` (plain or qualified); errors when none or several match.
pub fn find_kernel(name: &str) -> Result<&'static FnDef, String> {
    let all = registered_kernels();
    let matches: Vec<_> = all
        .iter()
        .copied()
        .filter(|d| d.name == name || d.qualified_name() == name)
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no kernel named `{name}`; `kiln list` shows the registered kernels"
        )),
        many => Err(format!(
            "`{name}` is ambiguous: {}; give the qualified name",
            many.iter()
                .map(|d| d.qualified_name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
