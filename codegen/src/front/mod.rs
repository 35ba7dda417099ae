//! The front end: checks a Rust function written in the Kiln language and lowers it to
//! typed IR. Every rejection is a [`Diagnostic`] at the offending span with a hint; the
//! front end never panics, whatever tokens it is given.

mod builtins;
pub mod calls;
mod divergence;
mod expr;
pub(crate) mod hopper;
mod prescan;
mod scope;
mod signature;
mod stmt;
pub mod syntax_types;
pub(crate) mod tensor;

use crate::diag::{Diagnostic, Res};
use crate::ir::{FnKind, Function};

pub use scope::Checker;

/// Options given to `#[kernel(...)]`.
#[derive(Clone, Debug, Default)]
pub struct KernelAttrs {
    /// `threads = N`: the block size the kernel is always launched with (`__launch_bounds__`).
    pub max_threads: Option<u32>,
}

/// A checked function and the device-function calls it makes.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The function's IR.
    pub function: Function,
    /// Every call of a `#[device]` function, with the types Kiln inferred for it.
    pub device_calls: Vec<calls::DeviceCallSite>,
}

/// Checks a function and lowers it to IR.
pub fn check_function(item: &syn::ItemFn, kind: FnKind, attrs: &KernelAttrs) -> Res<Checked> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut checker = Checker::new(kind);
        let function = checker.function(item, attrs)?;
        Ok(Checked {
            function,
            device_calls: checker.device_calls,
        })
    }));
    match outcome {
        Ok(result) => result,
        // A panic here is a bug in Kiln; still report it as an error, never abort the build.
        Err(_) => Err(Diagnostic::new(
            syn::spanned::Spanned::span(&item.sig.ident),
            "internal error in the Kiln front end while checking this function",
        )
        .hint("please report this with the function's source")),
    }
}

/// Parses `source` as one Rust function and checks it (used by the property tests and tools).
pub fn check_source(source: &str, kind: FnKind) -> Res<Function> {
    let item: syn::ItemFn = syn::parse_str(source).map_err(|e| {
        Diagnostic::new(e.span(), format!("not a Rust function: {e}"))
            .hint("a kernel is one `fn` item: `fn name(params) { body }`")
    })?;
    check_function(&item, kind, &KernelAttrs::default()).map(|c| c.function)
}

/// A path as written, segments joined by `::` (the key of a device-function call).
pub fn expr_path_text(p: &syn::Path) -> String {
    expr::path_text(p)
}
