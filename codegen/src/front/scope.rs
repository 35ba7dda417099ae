//! The checker's state: scopes of variables, generics, and what the function is.

use std::collections::{HashMap, HashSet};

use crate::diag::{err_hint, Res};
use crate::ir::{FnKind, Generic};
use crate::types::{Scalar, Ty};

/// A variable visible in the body.
#[derive(Clone, Debug)]
pub struct Var {
    /// Name in the generated CUDA (differs from the Rust name when shadowing).
    pub cname: String,
    pub ty: Ty,
    pub mutable: bool,
    /// True when the value can differ between the threads of a block.
    pub varying: bool,
    /// Kernel/device parameter (a `&[T]` parameter is read-only unless `&mut`).
    pub is_param: bool,
}

/// What the checker tracks per enclosing loop to find barriers that a thread-dependent
/// `break`/`continue` lets part of a block skip.
#[derive(Clone, Debug, Default)]
pub struct LoopFrame {
    /// `varying_control` when the loop body starts.
    pub entry_varying: u32,
    /// Line of a `break`/`continue` taken by only some threads.
    pub divergent_exit: Option<u32>,
    /// The first barrier inside the loop (start and end spans).
    pub barrier: Option<(proc_macro2::Span, proc_macro2::Span)>,
}

/// State of one function check.
pub struct Checker {
    /// Whether the function is a kernel or a device function.
    pub kind: FnKind,
    /// The function's Rust name.
    pub fn_name: String,
    /// Its comptime parameters.
    pub generics: Vec<Generic>,
    /// Its declared return type (`Unit` without one).
    pub ret: Ty,
    scopes: Vec<HashMap<String, Var>>,
    /// Names no variable may take in CUDA (comptime parameters).
    pub reserved_names: HashSet<String>,
    /// Depth of enclosing loops (for `break`/`continue`).
    pub loop_depth: u32,
    /// One frame per enclosing loop, innermost last (barrier-divergence through break/continue).
    pub loops: Vec<LoopFrame>,
    /// Depth of enclosing constructs whose condition differs between threads.
    pub varying_control: u32,
    /// Line of a `return` taken by only some threads, if any was seen.
    pub divergent_return: Option<u32>,
    /// Whether `dyn_shared` was already declared.
    pub has_dyn_shared: bool,
    /// Bytes of static shared memory declared so far with literal sizes.
    pub shared_bytes: i128,
    /// Calls of device functions, for the rustc signature check.
    pub device_calls: Vec<super::calls::DeviceCallSite>,
}

/// C/CUDA words a Rust identifier may not keep as is.
pub const RESERVED: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "bool",
    "class",
    "delete",
    "new",
    "operator",
    "private",
    "protected",
    "public",
    "template",
    "this",
    "throw",
    "try",
    "catch",
    "typename",
    "virtual",
    "namespace",
    "using",
    "friend",
    "explicit",
    "mutable",
    "asm",
    "threadIdx",
    "blockIdx",
    "blockDim",
    "gridDim",
    "warpSize",
    "dim3",
    "uint3",
    "min",
    "max",
    "abs",
    "signbit",
    "half",
    "nullptr",
    "true",
    "false",
    "and",
    "or",
    "not",
    "xor",
    // CUDA functions the printer emits
    "expf",
    "exp",
    "exp2f",
    "exp2",
    "logf",
    "log",
    "log2f",
    "log2",
    "sqrtf",
    "sqrt",
    "rsqrtf",
    "rsqrt",
    "sinf",
    "sin",
    "cosf",
    "cos",
    "tanhf",
    "tanh",
    "fabsf",
    "fabs",
    "floorf",
    "floor",
    "ceilf",
    "ceil",
    "roundf",
    "round",
    "truncf",
    "trunc",
    "fmaxf",
    "fmax",
    "fminf",
    "fmin",
    "powf",
    "pow",
    "fmaf",
    "fma",
    "fmodf",
    "fmod",
    "atomicAdd",
    "atomicSub",
    "atomicMin",
    "atomicMax",
    "atomicAnd",
    "atomicOr",
    "atomicXor",
    "atomicExch",
    "atomicCAS",
];

/// Whether a Rust identifier cannot be used as is in the generated CUDA.
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name) || name.starts_with("kiln_") || name.starts_with("__")
}

impl Checker {
    /// A checker for a function of `kind`.
    pub fn new(kind: FnKind) -> Checker {
        Checker {
            kind,
            fn_name: String::new(),
            generics: Vec::new(),
            ret: Ty::Unit,
            scopes: vec![HashMap::new()],
            reserved_names: HashSet::new(),
            loop_depth: 0,
            loops: Vec::new(),
            varying_control: 0,
            divergent_return: None,
            has_dyn_shared: false,
            shared_bytes: 0,
            device_calls: Vec::new(),
        }
    }

    /// Opens a block scope.
    pub fn push_scope(&mut self) {
        self.scopes.push(HashMap::new());
    }

    /// Closes the innermost block scope.
    pub fn pop_scope(&mut self) {
        self.scopes.pop();
    }

    /// A CUDA name for a new variable called `name` in Rust: the same name unless it is
    /// taken (shadowing) or reserved in C.
    pub fn fresh_cname(&mut self, name: &str) -> String {
        let base = if is_reserved(name) {
            format!("{name}_")
        } else {
            name.to_string()
        };
        let mut candidate = base.clone();
        let mut k = 0;
        while self.cname_visible(&candidate) || self.reserved_names.contains(&candidate) {
            k += 1;
            candidate = format!("{base}_{k}");
        }
        candidate
    }

    /// Whether a variable with CUDA name `cname` is visible from the current scope (a new
    /// C declaration with that name would shadow it or be initialised from itself).
    fn cname_visible(&self, cname: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s.values().any(|v| v.cname == cname))
    }

    /// Declares a variable Kiln introduces (no Rust name can refer to it); returns its CUDA name.
    pub fn declare_hidden(&mut self, base: &str, ty: Ty, varying: bool) -> String {
        let cname = self.fresh_cname(base);
        let var = Var {
            cname: cname.clone(),
            ty,
            mutable: false,
            varying,
            is_param: false,
        };
        // '#' cannot start a Rust identifier, so lookups by Rust name never see it
        self.scopes
            .last_mut()
            .expect("a scope is always open")
            .insert(format!("#{cname}"), var);
        cname
    }

    /// Declares a variable in the innermost scope; returns its CUDA name.
    pub fn declare(&mut self, name: &str, ty: Ty, mutable: bool, varying: bool) -> String {
        let cname = self.fresh_cname(name);
        let var = Var {
            cname: cname.clone(),
            ty,
            mutable,
            varying,
            is_param: false,
        };
        self.scopes
            .last_mut()
            .expect("a scope is always open")
            .insert(name.to_string(), var);
        cname
    }

    /// Declares a parameter.
    pub fn declare_param(&mut self, name: &str, ty: Ty, mutable: bool) -> String {
        let varying = false;
        let cname = self.declare(name, ty, mutable, varying);
        if let Some(v) = self.scopes.last_mut().and_then(|s| s.get_mut(name)) {
            v.is_param = true;
        }
        cname
    }

    /// The variable `name`, innermost first.
    pub fn lookup(&self, name: &str) -> Option<&Var> {
        self.scopes.iter().rev().find_map(|s| s.get(name))
    }

    /// Marks the variable with CUDA name `cname` as differing between threads.
    pub fn mark_varying(&mut self, cname: &str) {
        for scope in self.scopes.iter_mut().rev() {
            for var in scope.values_mut() {
                if var.cname == cname {
                    var.varying = true;
                    return;
                }
            }
        }
    }

    /// Every variable in scope, innermost scope first.
    pub fn all_vars(&self) -> Vec<Var> {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.values().cloned())
            .collect()
    }

    /// Whether the variable with CUDA name `cname` differs between threads.
    pub fn is_varying_var(&self, cname: &str) -> bool {
        self.scopes
            .iter()
            .flat_map(|s| s.values())
            .any(|v| v.cname == cname && v.varying)
    }

    /// The generic parameter called `name`, with its index.
    pub fn generic(&self, name: &str) -> Option<(usize, &Generic)> {
        self.generics
            .iter()
            .enumerate()
            .find(|(_, g)| g.name() == name)
    }

    /// The element-type parameter called `name`, as a scalar.
    pub fn type_param(&self, name: &str) -> Option<Scalar> {
        match self.generic(name) {
            Some((i, Generic::Type { .. })) => Some(Scalar::Param(i as u8)),
            _ => None,
        }
    }

    /// The comptime value parameter called `name` and its type.
    pub fn const_param(&self, name: &str) -> Option<Scalar> {
        match self.generic(name) {
            Some((_, Generic::Const { ty, .. })) => Some(*ty),
            _ => None,
        }
    }

    /// A type's name as the user wrote it (generic parameters by name).
    pub fn ty_name(&self, ty: &Ty) -> String {
        match ty {
            Ty::Unit => "()".into(),
            Ty::Dim3 => "Dim3".into(),
            Ty::Scalar(s) => self.scalar_name(*s),
            Ty::Slice {
                elem,
                mutable: true,
            } => format!("&mut [{}]", self.scalar_name(*elem)),
            Ty::Slice {
                elem,
                mutable: false,
            } => format!("&[{}]", self.scalar_name(*elem)),
            Ty::Array { space, elem, dims } => {
                let s = array_name(self.scalar_name(*elem), dims);
                match space {
                    crate::types::Space::Shared => format!("shared {s}"),
                    crate::types::Space::Local => s,
                }
            }
            Ty::FragArray { kind, elem, .. } => {
                let frag = self.ty_name(&Ty::Frag {
                    kind: *kind,
                    elem: *elem,
                });
                array_name(frag, ty.array_dims().unwrap_or_default())
            }
            Ty::Ref { to, mutable: true } => format!("&mut {}", self.ty_name(to)),
            Ty::Ref { to, mutable: false } => format!("&{}", self.ty_name(to)),
            Ty::DynShared { elem } => format!("dyn_shared [{}]", self.scalar_name(*elem)),
            Ty::Vector { elem } => format!("Vec16<{}>", self.scalar_name(*elem)),
            Ty::Frag {
                kind: crate::types::FragKind::C,
                ..
            } => "FragC".into(),
            Ty::Frag { kind, elem } => {
                format!("{}<{}>", kind.rust_name(), self.scalar_name(*elem))
            }
        }
    }

    /// A scalar's name as the user wrote it.
    pub fn scalar_name(&self, s: Scalar) -> String {
        match s {
            Scalar::Param(i) => self
                .generics
                .get(i as usize)
                .map(|g| g.name().to_string())
                .unwrap_or_else(|| s.rust_name()),
            _ => s.rust_name(),
        }
    }

    /// Fails unless `found` equals `expected`, naming both.
    pub fn expect_ty(&self, at: &dyn quote::ToTokens, expected: &Ty, found: &Ty) -> Res<()> {
        if expected == found {
            return Ok(());
        }
        let hint = match (expected, found) {
            (Ty::Scalar(_), Ty::Scalar(_)) => format!(
                "Kiln never converts implicitly; convert with `as {}`",
                self.ty_name(expected)
            ),
            _ => "the types must match exactly".to_string(),
        };
        err_hint(
            at,
            format!(
                "mismatched types: expected `{}`, found `{}`",
                self.ty_name(expected),
                self.ty_name(found)
            ),
            hint,
        )
    }
}

/// `[[E; A]; B]` for element name `elem` and dimensions `[B, A]` (`N` for a comptime length).
fn array_name(elem: String, dims: &[crate::types::Len]) -> String {
    let mut s = elem;
    for d in dims.iter().rev() {
        let len = match d.literal_value() {
            Some(v) => v.to_string(),
            None => "N".to_string(),
        };
        s = format!("[{s}; {len}]");
    }
    s
}
