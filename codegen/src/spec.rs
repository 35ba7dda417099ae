//! Specialisation: binding a kernel's comptime parameters (const values and element
//! types), instantiating the device functions it calls, and checking what only the bound
//! values can tell (lengths, shared-memory size). The result is a pure function of
//! (kernel, comptime values, arch).

use std::collections::BTreeMap;

use crate::defs::FnDef;
use crate::front::syntax_types::{shared_bytes, MAX_STATIC_SHARED_BYTES};
use crate::front::tensor;
use crate::ir::{
    walk_stmts, walk_stmts_mut, ExprKind, FnKind, Function, Generic, GenericArg, Intrinsic,
    StmtKind,
};
use crate::types::{Len, Scalar, Ty};

/// The element types a `T: Float` parameter can be bound to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Dtype {
    /// `f32`
    F32,
    /// `f16`, IEEE half precision.
    F16,
    /// `bf16`, bfloat16.
    Bf16,
    /// `f64`
    F64,
}

impl Dtype {
    /// The scalar this dtype denotes.
    pub fn scalar(self) -> Scalar {
        match self {
            Dtype::F32 => Scalar::F32,
            Dtype::F16 => Scalar::F16,
            Dtype::Bf16 => Scalar::Bf16,
            Dtype::F64 => Scalar::F64,
        }
    }

    /// The dtype for a concrete float scalar.
    pub fn from_scalar(s: Scalar) -> Option<Dtype> {
        Some(match s {
            Scalar::F32 => Dtype::F32,
            Scalar::F16 => Dtype::F16,
            Scalar::Bf16 => Dtype::Bf16,
            Scalar::F64 => Dtype::F64,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Dtype, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f64" | "float64" => Ok(Dtype::F64),
            other => Err(format!(
                "unknown dtype `{other}`; use f32, f16, bf16 or f64"
            )),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.scalar().rust_name())
    }
}

/// A GPU architecture, as the SM version times ten (80 = sm_80, 90 = sm_90).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Arch(pub u32);

impl Arch {
    /// The oldest architecture Kiln generates code for (cp.async, bf16 conversions).
    pub const MIN: Arch = Arch(80);
    /// Ampere (A100).
    pub const SM80: Arch = Arch(80);
    /// Hopper (H100, H200).
    pub const SM90: Arch = Arch(90);

    /// `sm_80`, `sm_90`, …
    pub fn sm_name(self) -> String {
        format!("sm_{}", self.0)
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        let digits = s
            .trim_start_matches("sm_")
            .trim_start_matches("compute_")
            .trim_end_matches('a');
        match digits.parse::<u32>() {
            Ok(v) if v >= Arch::MIN.0 => Ok(Arch(v)),
            Ok(v) => Err(format!(
                "sm_{v} is older than sm_80, the oldest architecture Kiln supports"
            )),
            Err(_) => Err(format!(
                "`{s}` is not an architecture; write e.g. sm_80 or sm_90"
            )),
        }
    }
}

/// Comptime values for a specialisation, by parameter name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bindings {
    /// Values of `const` parameters (a bool as 0 or 1).
    pub consts: BTreeMap<String, i128>,
    /// Element types of `T: Float` parameters.
    pub types: BTreeMap<String, Dtype>,
}

impl Bindings {
    /// Binds a `const` parameter.
    pub fn with_const(mut self, name: &str, value: i128) -> Bindings {
        self.consts.insert(name.to_string(), value);
        self
    }

    /// Binds an element-type parameter.
    pub fn with_type(mut self, name: &str, dtype: Dtype) -> Bindings {
        self.types.insert(name.to_string(), dtype);
        self
    }

    /// The example specialisations of `def` (from `#[kernel(example(…))]`): what `kiln check`,
    /// `kiln demo` and CI compile. A kernel without comptime parameters has one (empty)
    /// example; one with comptime parameters but no example is an error naming it.
    pub fn examples_of(def: &FnDef) -> Result<Vec<Bindings>, String> {
        let ir = def.ir().map_err(|e| e.to_string())?;
        if def.examples.is_empty() {
            if ir.generics.is_empty() {
                return Ok(vec![Bindings::default()]);
            }
            return Err(format!(
                "`{}` has comptime parameters but no example specialisation; add `#[kernel(example(…))]`",
                def.name
            ));
        }
        def.examples
            .iter()
            .map(|pairs| Bindings::parse_pairs(&ir, pairs.iter().map(|(k, v)| (*k, *v))))
            .collect()
    }

    /// Bindings from (name, value) text pairs, typed by `function`'s generics: integers (or
    /// `true`/`false`) for `const` parameters, dtype names for element types.
    pub fn parse_pairs<'a>(
        function: &crate::ir::Function,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Bindings, String> {
        let mut b = Bindings::default();
        for (name, value) in pairs {
            match function.generics.iter().find(|g| g.name() == name) {
                Some(Generic::Const { .. }) => {
                    let v: i128 = match value {
                        "true" => 1,
                        "false" => 0,
                        _ => value
                            .replace('_', "")
                            .parse()
                            .map_err(|_| format!("`{name}` takes an integer, found `{value}`"))?,
                    };
                    b = b.with_const(name, v);
                }
                Some(Generic::Type { .. }) => b = b.with_type(name, value.parse::<Dtype>()?),
                None => {
                    let known: Vec<&str> = function.generics.iter().map(Generic::name).collect();
                    return Err(format!(
                        "`{}` has no comptime parameter `{name}` (it has: {})",
                        function.name,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            }
        }
        Ok(b)
    }

    /// A stable text form (`WORDS=4, T=bf16`).
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .consts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.extend(self.types.iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(", ")
    }
}

/// Why a specialisation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{function} ({file}:{line}): {message}{}", hint.as_ref().map(|h| format!("\n  = hint: {h}")).unwrap_or_default())]
pub struct SpecError {
    /// The function (kernel or device function) the error is in.
    pub function: String,
    /// The Rust file that defines it.
    pub file: String,
    /// The line in that file (0 when there is none to point at).
    pub line: u32,
    /// What went wrong.
    pub message: String,
    /// What to do about it, if there is something to suggest.
    pub hint: Option<String>,
}

/// A specialised program: the kernel and the device-function instances it calls, with
/// every type and comptime value concrete.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The specialised kernel.
    pub kernel: Function,
    /// Comptime values of each function, by function name (kernel and instances).
    pub comptime: BTreeMap<String, Vec<(String, Scalar, i128)>>,
    /// Device-function instances, callees before callers; calls name them by instance name.
    pub devices: Vec<Function>,
    /// The Rust file that defines the kernel.
    pub file: String,
    /// The comptime values the kernel was specialised for.
    pub bindings: Bindings,
    /// The GPU architecture the program targets.
    pub arch: Arch,
}

/// Specialises the kernel `def` for `bindings` and `arch`.
pub fn specialize(
    def: &'static FnDef,
    bindings: &Bindings,
    arch: Arch,
) -> Result<Program, SpecError> {
    let kernel_ir = load(def)?;
    if kernel_ir.kind != FnKind::Kernel {
        return Err(error(
            def,
            kernel_ir.line,
            format!("`{}` is a device function, not a kernel", def.name),
            None,
        ));
    }
    for name in bindings.consts.keys().chain(bindings.types.keys()) {
        if !kernel_ir.generics.iter().any(|g| g.name() == name) {
            let known: Vec<&str> = kernel_ir.generics.iter().map(Generic::name).collect();
            return Err(error(
                def,
                kernel_ir.line,
                format!("`{}` has no comptime parameter `{name}`", def.name),
                Some(if known.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("its comptime parameters are {}", known.join(", "))
                }),
            ));
        }
    }
    let mut values = Vec::new();
    // indexed like the generics: `Scalar::Param(i)` is replaced by `types[i]`
    let mut types = Vec::new();
    for g in &kernel_ir.generics {
        match g {
            Generic::Const { name, ty } => {
                let Some(v) = bindings.consts.get(name) else {
                    return Err(error(
                        def,
                        kernel_ir.line,
                        format!("no value for comptime parameter `{name}`"),
                        Some(format!(
                            "set it, e.g. `.{}(…)` or `--const {name}=…`",
                            name.to_lowercase()
                        )),
                    ));
                };
                check_range(def, kernel_ir.line, name, *ty, *v)?;
                values.push((name.clone(), *ty, *v));
                types.push(Scalar::U32); // slot of a value parameter; never read
            }
            Generic::Type { name } => {
                let Some(d) = bindings.types.get(name) else {
                    return Err(error(
                        def,
                        kernel_ir.line,
                        format!("no element type for `{name}`"),
                        Some(format!(
                            "set it, e.g. `.{}(Dtype::F32)` or `--dtype f32`",
                            name.to_lowercase()
                        )),
                    ));
                };
                types.push(d.scalar());
            }
        }
    }
    let mut ctx = Instantiator {
        instances: Vec::new(),
        done: BTreeMap::new(),
        stack: Vec::new(),
        comptime: BTreeMap::new(),
    };
    let kernel = ctx.instantiate(def, kernel_ir, values, types, def.name.to_string())?;
    let program = Program {
        kernel,
        comptime: ctx.comptime,
        devices: ctx.instances,
        file: def.file.to_string(),
        bindings: bindings.clone(),
        arch,
    };
    match hopper_problem(&program) {
        Some((line, message, hint)) => Err(error(def, line, message, Some(hint))),
        None => Ok(program),
    }
}

/// Whether the kernel `def` (with `bindings`) uses Hopper instructions, so that it has no
/// specialisation below sm_90 (tools that build every kernel for several targets skip those).
pub fn uses_hopper(def: &'static FnDef, bindings: &Bindings) -> bool {
    specialize(def, bindings, Arch::SM90).is_ok_and(|p| uses_intrinsic(&p, Intrinsic::is_hopper))
}

/// Whether any function of `program` (the kernel or a device function it calls) uses an
/// intrinsic for which `pred` holds.
pub fn uses_intrinsic(program: &Program, pred: impl Fn(Intrinsic) -> bool) -> bool {
    let mut found = false;
    for f in program
        .devices
        .iter()
        .chain(std::iter::once(&program.kernel))
    {
        walk_stmts(&f.body, &mut |s| {
            for e in s.kind.exprs() {
                e.walk(&mut |x| {
                    if let ExprKind::Intrinsic(i, _) = &x.kind {
                        found |= pred(*i);
                    }
                });
            }
        });
    }
    found
}

/// The first misuse of a Hopper instruction in a specialised program: an architecture
/// without it, or a comptime shape (accumulator length, register count) it does not have.
fn hopper_problem(program: &Program) -> Option<(u32, String, String)> {
    use crate::front::hopper::{maxnreg_ok, wgmma_acc_len_ok};
    let arch = program.arch;
    let mut problem = None;
    for f in program
        .devices
        .iter()
        .chain(std::iter::once(&program.kernel))
    {
        walk_stmts(&f.body, &mut |s| {
            for e in s.kind.exprs() {
                e.walk(&mut |x| {
                    let ExprKind::Intrinsic(i, args) = &x.kind else {
                        return;
                    };
                    if problem.is_some() || !i.is_hopper() {
                        return;
                    }
                    let name = crate::front::hopper::dsl_name(*i);
                    if i.needs_sm90a() && arch != Arch::SM90 {
                        problem = Some((s.line, format!("`{name}` exists only on sm_90a (Hopper), but this specialisation targets {}", arch.sm_name()), "build it for an H100/H200 (sm_90); keep an mma.sync path for other GPUs".to_string()));
                    } else if arch < Arch::SM90 {
                        problem = Some((s.line, format!("`{name}` needs sm_90 (Hopper), but this specialisation targets {}", arch.sm_name()), "build it for an sm_90 GPU; keep a cp.async path for older ones".to_string()));
                    } else if let Some(acc) = match i {
                        Intrinsic::Wgmma { .. } | Intrinsic::WgmmaRs { .. } => args.first(),
                        Intrinsic::WgmmaWait => args.get(1),
                        _ => None,
                    } {
                        let len = match &acc.ty {
                            Ty::Ref { to, .. } => match &**to {
                                Ty::Array { dims, .. } => dims.first().and_then(|d| eval_len(program, &f.name, d)),
                                _ => None,
                            },
                            _ => None,
                        };
                        if !len.is_some_and(|l| u64::try_from(l).is_ok_and(wgmma_acc_len_ok)) {
                            problem = Some((s.line, format!("this specialisation gives the wgmma accumulator {} f32, no wgmma shape", len.map_or("an unknown number of".into(), |l| l.to_string())), "the accumulator holds N/2 f32 per thread for N = 8, 16, …, 256".to_string()));
                        }
                    } else if let (Intrinsic::SetMaxNReg { .. }, Some(n)) = (i, args.first()) {
                        let v = match &n.kind {
                            ExprKind::Int(v) => Some(*v as i128),
                            ExprKind::ConstParam(p) => program.comptime.get(&f.name).and_then(|c| c.iter().find(|(n, _, _)| n == p).map(|(_, _, v)| *v)),
                            _ => None,
                        };
                        if !v.is_some_and(|v| u64::try_from(v).is_ok_and(maxnreg_ok)) {
                            problem = Some((s.line, format!("this specialisation asks `setmaxnreg` for {v:?} registers"), "the count must be a multiple of 8 from 24 to 256".to_string()));
                        }
                    }
                });
            }
        });
    }
    problem
}

fn load(def: &FnDef) -> Result<Function, SpecError> {
    def.ir().map_err(|e| {
        error(
            def,
            0,
            format!("the embedded IR of `{}` is unreadable: {e}", def.name),
            Some("rebuild the crate that defines it with this version of Kiln".into()),
        )
    })
}

fn error(def: &FnDef, line: u32, message: String, hint: Option<String>) -> SpecError {
    SpecError {
        function: def.name.to_string(),
        file: def.file.to_string(),
        line,
        message,
        hint,
    }
}

fn check_range(def: &FnDef, line: u32, name: &str, ty: Scalar, v: i128) -> Result<(), SpecError> {
    let (lo, hi) = ty.int_range();
    if v < lo || v > hi {
        return Err(error(
            def,
            line,
            format!(
                "comptime value {name} = {v} does not fit `{}`",
                ty.rust_name()
            ),
            Some(format!("use a value in {lo}..={hi}")),
        ));
    }
    Ok(())
}

struct Instantiator {
    instances: Vec<Function>,
    /// (def address, bindings) → instance name
    done: BTreeMap<(usize, String), String>,
    stack: Vec<usize>,
    comptime: BTreeMap<String, Vec<(String, Scalar, i128)>>,
}

impl Instantiator {
    fn instantiate(
        &mut self,
        def: &'static FnDef,
        mut f: Function,
        values: Vec<(String, Scalar, i128)>,
        types: Vec<Scalar>,
        instance_name: String,
    ) -> Result<Function, SpecError> {
        let lookup = |name: &str| {
            values
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, v)| *v)
        };
        let subst = |s: Scalar| match s {
            Scalar::Param(i) => types[i as usize],
            other => other,
        };
        // concrete types everywhere
        for p in f.params.iter_mut() {
            p.ty = p.ty.map_scalars(&subst);
        }
        f.ret = f.ret.map_scalars(&subst);
        let mut problem: Option<(u32, String, Option<String>)> = None;
        walk_stmts_mut(&mut f.body, &mut |s| {
            let line = s.line;
            match &mut s.kind {
                StmtKind::Let { ty, .. }
                | StmtKind::SharedArray { ty, .. }
                | StmtKind::LocalArray { ty, .. } => *ty = ty.map_scalars(&subst),
                StmtKind::DynShared { elem, .. } => *elem = subst(*elem),
                StmtKind::For { ty, .. } => *ty = subst(*ty),
                _ => {}
            }
            if let StmtKind::SharedArray {
                ty: Ty::Array { elem, dims, .. },
                ..
            } = &s.kind
            {
                match shared_bytes(*elem, dims, &lookup) {
                    Some(b) if b > MAX_STATIC_SHARED_BYTES && problem.is_none() => {
                        problem = Some((line, format!("shared array of {b} bytes exceeds the {MAX_STATIC_SHARED_BYTES} bytes of static shared memory"), Some("use `dyn_shared::<T>()` and pass the size at launch".into())));
                    }
                    None if problem.is_none() => {
                        problem = Some((line, "shared array length overflows".into(), None))
                    }
                    _ => {}
                }
            }
            if let StmtKind::SharedArray {
                ty: Ty::Array { dims, .. },
                ..
            }
            | StmtKind::LocalArray {
                ty: Ty::Array { dims, .. } | Ty::FragArray { dims, .. },
                ..
            } = &s.kind
            {
                for d in dims {
                    match d.eval(&lookup) {
                        Some(v) if v >= 1 => {}
                        Some(v) if problem.is_none() => {
                            problem = Some((
                                line,
                                format!("array length evaluates to {v}; it must be at least 1"),
                                Some("check the comptime values".into()),
                            ))
                        }
                        None if problem.is_none() => {
                            problem = Some((
                                line,
                                "array length cannot be evaluated (overflow or division by zero)"
                                    .into(),
                                None,
                            ))
                        }
                        _ => {}
                    }
                }
            }
            for e in s.kind.exprs_mut() {
                e.walk_mut(&mut |x| {
                    x.ty = x.ty.map_scalars(&subst);
                    if let ExprKind::SizeOf(s) = &mut x.kind {
                        *s = subst(*s);
                    }
                    if let ExprKind::Call { generics, .. } = &mut x.kind {
                        for g in generics.iter_mut() {
                            if let GenericArg::Type(t) = g {
                                *t = subst(*t);
                            }
                        }
                    }
                    if let ExprKind::Intrinsic(Intrinsic::Pack2(s), _) = &mut x.kind {
                        *s = subst(*s);
                    }
                    if let ExprKind::Intrinsic(
                        Intrinsic::Wgmma { elem, .. } | Intrinsic::WgmmaRs { elem, .. },
                        _,
                    ) = &mut x.kind
                    {
                        *elem = subst(*elem);
                    }
                });
                e.walk(&mut |x| {
                    if let (None, Some(found)) = (&problem, tensor::non_half_operand(x)) {
                        problem = Some((
                            line,
                            format!("tensor-core instructions take f16 or bf16 elements, but this specialisation gives them `{}`", found.rust_name()),
                            Some("bind the element type to bf16 or f16: mma.sync m16n8k16 has no f32 or f64 inputs".into()),
                        ));
                    }
                });
            }
        });
        if problem.is_none() {
            let mut total: i128 = 0;
            walk_stmts(&f.body, &mut |s| {
                if let StmtKind::SharedArray {
                    ty: Ty::Array { elem, dims, .. },
                    ..
                } = &s.kind
                {
                    total += shared_bytes(*elem, dims, &lookup).unwrap_or(0);
                }
            });
            if total > MAX_STATIC_SHARED_BYTES {
                problem = Some((f.line, format!("the shared arrays take {total} bytes together, more than the {MAX_STATIC_SHARED_BYTES} bytes of static shared memory"), Some("use `dyn_shared::<T>()` and pass the size at launch".into())));
            }
        }
        if let Some((line, message, hint)) = problem {
            return Err(error(def, line, message, hint));
        }
        self.comptime.insert(instance_name.clone(), values.clone());
        // instantiate callees
        let mut calls = Vec::new();
        walk_stmts(&f.body, &mut |s| {
            for e in s.kind.exprs() {
                e.walk(&mut |x| {
                    if let ExprKind::Call {
                        callee,
                        generics,
                        args,
                    } = &x.kind
                    {
                        calls.push((
                            s.line,
                            callee.clone(),
                            generics.clone(),
                            args.iter().map(|a| a.ty.clone()).collect::<Vec<_>>(),
                            x.ty.clone(),
                        ));
                    }
                });
            }
        });
        let mut renames = BTreeMap::new();
        for (line, callee, generics, arg_tys, ret) in calls {
            let key = (callee.clone(), format!("{generics:?}{arg_tys:?}"));
            if renames.contains_key(&key) {
                continue;
            }
            let name =
                self.callee_instance(def, line, &callee, &generics, &arg_tys, &ret, &lookup)?;
            renames.insert(key, name);
        }
        walk_stmts_mut(&mut f.body, &mut |s| {
            for e in s.kind.exprs_mut() {
                e.walk_mut(&mut |x| {
                    if let ExprKind::Call {
                        callee,
                        generics,
                        args,
                    } = &mut x.kind
                    {
                        let key = (
                            callee.clone(),
                            format!(
                                "{generics:?}{:?}",
                                args.iter().map(|a| a.ty.clone()).collect::<Vec<_>>()
                            ),
                        );
                        if let Some(n) = renames.get(&key) {
                            *callee = n.clone();
                            generics.clear();
                        }
                    }
                });
            }
        });
        f.name = instance_name;
        f.file = def.file.to_string();
        Ok(f)
    }

    #[allow(clippy::too_many_arguments)]
    fn callee_instance(
        &mut self,
        caller: &'static FnDef,
        line: u32,
        callee: &str,
        generics: &[GenericArg],
        arg_tys: &[Ty],
        ret: &Ty,
        lookup: &dyn Fn(&str) -> Option<i128>,
    ) -> Result<String, SpecError> {
        let Some(dep) = caller.deps.iter().find(|d| d.path == callee) else {
            return Err(error(
                caller,
                line,
                format!("`{callee}` is not a known device function"),
                Some("mark it `#[device]` and make sure it is in scope".into()),
            ));
        };
        let def = dep.def;
        let ir = load(def)?;
        if ir.kind != FnKind::Device {
            return Err(error(
                caller,
                line,
                format!("`{callee}` is a kernel; kernels cannot be called"),
                Some("move the shared code into a `#[device]` function".into()),
            ));
        }
        if ir.params.len() != arg_tys.len() {
            return Err(error(
                caller,
                line,
                format!(
                    "`{callee}` takes {} argument(s), {} given",
                    ir.params.len(),
                    arg_tys.len()
                ),
                None,
            ));
        }
        // bind the callee's generics: explicit ones in order, element types also from arguments
        let explicit = generics.len();
        if explicit > ir.generics.len() {
            return Err(error(
                caller,
                line,
                format!(
                    "`{callee}` takes {} generic argument(s), {explicit} given",
                    ir.generics.len()
                ),
                None,
            ));
        }
        let mut values = Vec::new();
        let mut types: Vec<Option<Scalar>> = vec![None; ir.generics.len()];
        for (i, g) in ir.generics.iter().enumerate() {
            match (g, generics.get(i)) {
                (Generic::Const { name, ty }, Some(GenericArg::Const(len))) => {
                    let Some(v) = len.eval(lookup) else {
                        return Err(error(
                            caller,
                            line,
                            format!("cannot evaluate the value passed for `{name}`"),
                            None,
                        ));
                    };
                    check_range(def, ir.line, name, *ty, v)?;
                    values.push((name.clone(), *ty, v));
                }
                (Generic::Type { .. }, Some(GenericArg::Type(t))) => types[i] = Some(*t),
                (Generic::Const { name, ty }, None) => {
                    if let Some(v) = inferred_const(name, &ir.params, arg_tys, lookup) {
                        check_range(def, ir.line, name, *ty, v)?;
                        values.push((name.clone(), *ty, v));
                        continue;
                    }
                    return Err(error(
                        caller,
                        line,
                        format!("`{callee}` needs a value for its comptime parameter `{name}`"),
                        Some(format!("pass it explicitly: `{callee}::<…>(…)`")),
                    ));
                }
                (Generic::Type { .. }, None) => {}
                (g, Some(_)) => {
                    return Err(error(
                        caller,
                        line,
                        format!("generic argument for `{}` has the wrong kind", g.name()),
                        None,
                    ))
                }
            }
        }
        for (p, a) in ir.params.iter().zip(arg_tys) {
            if let (Some(Scalar::Param(i)), Some(actual)) = (param_scalar(&p.ty), param_scalar(a)) {
                match types[i as usize] {
                    None => types[i as usize] = Some(actual),
                    Some(t) if t == actual => {}
                    Some(t) => {
                        return Err(error(
                            caller,
                            line,
                            format!(
                                "`{callee}`: `{}` is both {} and {}",
                                ir.generics[i as usize].name(),
                                t.rust_name(),
                                actual.rust_name()
                            ),
                            None,
                        ))
                    }
                }
            }
        }
        let mut concrete = Vec::new();
        for (i, t) in types.iter().enumerate() {
            match (&ir.generics[i], t) {
                (Generic::Type { name }, None) => {
                    return Err(error(
                        caller,
                        line,
                        format!("cannot tell the element type `{name}` of `{callee}`"),
                        Some(format!("pass it explicitly: `{callee}::<f32>(…)`")),
                    ));
                }
                (Generic::Type { .. }, Some(t)) => concrete.push(*t),
                _ => concrete.push(Scalar::U32), // placeholder for const slots (never read)
            }
        }
        let addr = def as *const FnDef as usize;
        let key = (addr, format!("{values:?}{concrete:?}"));
        if let Some(name) = self.done.get(&key) {
            return Ok(name.clone());
        }
        if self.stack.contains(&addr) {
            return Err(error(
                caller,
                line,
                format!("`{callee}` is called recursively (through other device functions)"),
                Some("recursion is not supported on the GPU; use a loop".into()),
            ));
        }
        let mut name = def.name.to_string();
        for (_, _, v) in &values {
            name.push_str(&format!("_{}", v.to_string().replace('-', "m")));
        }
        for (i, g) in ir.generics.iter().enumerate() {
            if matches!(g, Generic::Type { .. }) {
                name.push_str(&format!("_{}", concrete[i].rust_name()));
            }
        }
        let base = name.clone();
        let mut n = 1;
        while self.done.values().any(|v| *v == name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.stack.push(addr);
        let types_only: Vec<Scalar> = concrete;
        let inst_values = values.clone();
        let inst = self.instantiate(def, ir, values, types_only, name.clone())?;
        self.stack.pop();
        let param_tys: Vec<&Ty> = inst.params.iter().map(|p| &p.ty).collect();
        let callee_values = values_of(&inst_values);
        let callee_lookup = |n: &str| callee_values.get(n).copied();
        for (k, (p, a)) in param_tys.iter().zip(arg_tys).enumerate() {
            // a `&mut [T]` argument may be passed where `&[T]` is expected, as in Rust
            let compatible = *p == a
                || matches!((p, a), (Ty::Slice { elem: pe, mutable: false }, Ty::Slice { elem: ae, .. }) if pe == ae)
                || same_array_ref(p, a, &callee_lookup, lookup);
            if !compatible {
                return Err(error(
                    caller,
                    line,
                    format!(
                        "argument {} of `{callee}` has type `{a}`, expected `{p}`",
                        k + 1
                    ),
                    matches!(p, Ty::Ref { .. }).then(|| {
                        "pass an array of the same element type and lengths: a shared one where the parameter says `Shared<…>`, a register one otherwise, and `&mut` where it says `&mut`".to_string()
                    }),
                ));
            }
        }
        if &inst.ret != ret {
            return Err(error(
                caller,
                line,
                format!(
                    "`{callee}` returns `{}` but the call site expects `{ret}`",
                    inst.ret
                ),
                None,
            ));
        }
        self.done.insert(key, name.clone());
        self.instances.push(inst);
        Ok(name)
    }
}

/// A comptime value by name, from a list of (name, type, value).
fn values_of(values: &[(String, Scalar, i128)]) -> BTreeMap<String, i128> {
    values.iter().map(|(n, _, v)| (n.clone(), *v)).collect()
}

/// The value of the callee's comptime parameter `name` told by an array-reference argument
/// whose parameter has a dimension of exactly `name` (`acc: &mut [FragC; N]`).
fn inferred_const(
    name: &str,
    params: &[crate::ir::Param],
    args: &[Ty],
    lookup: &dyn Fn(&str) -> Option<i128>,
) -> Option<i128> {
    params.iter().zip(args).find_map(|(p, a)| {
        let (Ty::Ref { to: pt, .. }, Ty::Ref { to: at, .. }) = (&p.ty, a) else {
            return None;
        };
        let (pd, ad) = (pt.array_dims()?, at.array_dims()?);
        let k = pd
            .iter()
            .position(|d| matches!(d, Len::Param(n) if n == name))?;
        ad.get(k)?.eval(lookup)
    })
}

/// Whether array-reference argument `a` (lengths in the caller's comptime values) may be
/// passed for parameter `p` (lengths in the callee's): same element, same evaluated lengths,
/// and `&mut` wherever the callee writes. Shared and register arrays are both accepted.
fn same_array_ref(
    p: &Ty,
    a: &Ty,
    callee: &dyn Fn(&str) -> Option<i128>,
    caller: &dyn Fn(&str) -> Option<i128>,
) -> bool {
    let (
        Ty::Ref {
            to: pt,
            mutable: pm,
        },
        Ty::Ref {
            to: at,
            mutable: am,
        },
    ) = (p, a)
    else {
        return false;
    };
    let same_elem = match (&**pt, &**at) {
        (
            Ty::Array {
                elem: pe,
                space: ps,
                ..
            },
            Ty::Array {
                elem: ae,
                space: sa,
                ..
            },
        ) => pe == ae && ps == sa,
        (
            Ty::FragArray {
                kind: pk, elem: pe, ..
            },
            Ty::FragArray {
                kind: ak, elem: ae, ..
            },
        ) => pk == ak && pe == ae,
        _ => false,
    };
    let (Some(pd), Some(ad)) = (pt.array_dims(), at.array_dims()) else {
        return false;
    };
    let lens = |dims: &[Len], f: &dyn Fn(&str) -> Option<i128>| -> Option<Vec<i128>> {
        dims.iter().map(|d| d.eval(f)).collect()
    };
    same_elem && (!pm || *am) && lens(pd, callee).is_some() && lens(pd, callee) == lens(ad, caller)
}

/// The scalar a parameter or argument type names, for inferring element-type parameters
/// (the input type of an A or B fragment; none for accumulators).
fn param_scalar(t: &Ty) -> Option<Scalar> {
    match t {
        Ty::Scalar(s) => Some(*s),
        Ty::Frag {
            kind: crate::types::FragKind::C,
            ..
        } => None,
        Ty::Frag { elem, .. } => Some(*elem),
        Ty::Ref { to, .. } => match &**to {
            Ty::FragArray {
                kind: crate::types::FragKind::C,
                ..
            } => None,
            Ty::FragArray { elem, .. } | Ty::Array { elem, .. } => Some(*elem),
            _ => None,
        },
        other => other.elem(),
    }
}

/// Evaluates a length with a program's comptime values for function `func`.
pub fn eval_len(program: &Program, func: &str, len: &Len) -> Option<i128> {
    let values = program.comptime.get(func)?;
    len.eval(&|name| {
        values
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    })
}
