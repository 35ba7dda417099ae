//! Lowering a specialised [`Program`] to bytecode for one launch.
//!
//! Slice lengths, scalar arguments and the dynamic shared size are known when a launch is
//! compiled, so they become constants. Device functions are inlined at each call site
//! (specialisation has already ruled out recursion); their `__shared__` arrays are laid out
//! once per block, as CUDA does for a `__shared__` variable of a device function. Control
//! flow becomes jumps; `&&`, `||` and `if … else` values short-circuit as in C, so a guarded
//! read (`if i < n { x[i] } else { 0 }`) never touches memory it should not.
//!
//! Register discipline: every variable gets its own slots for its scope; temporaries live
//! above them and are released after each statement. `scalar_into(e, dst)` is only ever
//! given a `dst` that `e` cannot read (a fresh temporary or a variable not yet in scope).

use std::collections::HashMap;

use kiln_codegen::ir::{
    walk_stmts, Axis, BinOp, Expr, ExprKind, FnKind, Function, Intrinsic, Stmt, StmtKind,
};
use kiln_codegen::spec::{eval_len, Program};
use kiln_codegen::types::{Scalar, Ty};

use super::isa::{
    Access, Code, HopperOp, Instr, Loc, MatrixOp, Origin, Reg, ShflMode, Special, TmaLoad, WarpOp,
    ZERO,
};
use super::value::{self, DivKind, MathFn, K};

/// The value a kernel parameter is bound to for this launch.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ArgBinding {
    /// A global buffer: its index in the launch and its length in elements.
    Slice { buf: u16, len: u64 },
    /// A scalar's bits.
    Scalar(u64),
}

/// Most registers a thread may use (register arrays included).
const MAX_FRAME: u32 = 1 << 20;
/// Deepest nesting of inlined device-function calls.
const MAX_INLINE_DEPTH: u32 = 64;

type Res<T> = Result<T, String>;

/// (function, array name, line of its declaration) → byte offset of each static shared array.
type SharedLayout = HashMap<(String, String, u32), u32>;

/// What a name in scope denotes.
#[derive(Clone, Debug)]
enum Binding {
    Scalar {
        slot: Reg,
        k: K,
    },
    /// A `Dim3` value in three slots (x, y, z).
    Dim3 {
        slot: Reg,
    },
    /// Anything indexable: slices, shared and register arrays, vectors.
    Array {
        loc: Loc,
        elem: K,
        dims: Vec<u64>,
        mem: u16,
        writable: bool,
    },
    /// A row of an array passed to a device function (`&mut tiles[stage]`): where it starts
    /// is known only at run time.
    View(ArrayRef),
}

/// An indexable object, possibly a row of a multi-dimensional one.
#[derive(Clone, Debug)]
struct ArrayRef {
    loc: Loc,
    elem: K,
    dims: Vec<u64>,
    /// Register holding the flat element index where this (sub-)array starts.
    base: Reg,
    mem: u16,
    writable: bool,
}

impl ArrayRef {
    /// Element `idx` (a register) of this one-dimensional array; `None` for a row.
    fn access(&self, idx: Reg) -> Option<Access> {
        let [len] = self.dims[..] else {
            return None;
        };
        Some(Access {
            loc: self.loc,
            k: self.elem,
            base: self.base,
            idx,
            len,
            mem: self.mem,
        })
    }
}

#[derive(Default)]
struct LoopLabels {
    breaks: Vec<usize>,
    continues: Vec<usize>,
}

struct Inlined {
    dst: Option<Reg>,
    /// Slots of the result: 1 for a scalar, more for a fragment.
    slots: u64,
    exits: Vec<usize>,
}

struct Compiler<'p> {
    program: &'p Program,
    instrs: Vec<Instr>,
    origins: Vec<Origin>,
    origin: Origin,
    funcs: Vec<String>,
    files: Vec<String>,
    mems: Vec<String>,
    next: Reg,
    max: Reg,
    scopes: Vec<HashMap<String, Binding>>,
    fn_name: String,
    loops: Vec<LoopLabels>,
    inlined: Option<Inlined>,
    depth: u32,
    shared: SharedLayout,
    dyn_off: u32,
    dyn_bytes: u32,
    order_sensitive: bool,
}

/// Compiles `program` for a launch whose kernel parameters are bound to `args` and whose
/// blocks have `dyn_bytes` of dynamic shared memory.
pub(crate) fn compile(program: &Program, args: &[ArgBinding], dyn_bytes: u32) -> Res<Code> {
    let (shared, static_bytes) = layout_shared(program)?;
    let hopper = uses_hopper(program);
    // with the Hopper helpers the CUDA aligns dynamic shared memory to 1024 bytes (swizzles)
    let align = if hopper { 1024 } else { 16 };
    let dyn_off = static_bytes.div_ceil(align) * align;
    let mut c = Compiler {
        program,
        instrs: Vec::new(),
        origins: Vec::new(),
        origin: Origin {
            line: program.kernel.line,
            func: 0,
        },
        funcs: vec![program.kernel.name.clone()],
        files: vec![if program.kernel.file.is_empty() {
            program.file.clone()
        } else {
            program.kernel.file.clone()
        }],
        mems: Vec::new(),
        next: ZERO + 1,
        max: ZERO + 1,
        scopes: vec![HashMap::new()],
        fn_name: program.kernel.name.clone(),
        loops: Vec::new(),
        inlined: None,
        depth: 0,
        shared,
        dyn_off,
        dyn_bytes,
        order_sensitive: false,
    };
    let kernel = &program.kernel;
    if kernel.kind != FnKind::Kernel {
        return Err(format!("`{}` is not a kernel", kernel.name));
    }
    if kernel.params.len() != args.len() {
        return Err(format!(
            "`{}` has {} parameters, {} bound",
            kernel.name,
            kernel.params.len(),
            args.len()
        ));
    }
    c.emit(Instr::Const { dst: ZERO, bits: 0 });
    for (p, a) in kernel.params.iter().zip(args) {
        let binding = match (&p.ty, a) {
            (Ty::Slice { elem, mutable }, ArgBinding::Slice { buf, len }) => Binding::Array {
                loc: Loc::Global(*buf),
                elem: kind(*elem)?,
                dims: vec![*len],
                mem: c.mem(&p.name),
                writable: *mutable,
            },
            (Ty::Scalar(s), ArgBinding::Scalar(bits)) => {
                let slot = c.alloc(1)?;
                c.emit(Instr::Const {
                    dst: slot,
                    bits: *bits,
                });
                Binding::Scalar { slot, k: kind(*s)? }
            }
            (ty, _) => {
                return Err(format!(
                    "parameter `{}` of type {ty:?} cannot be bound",
                    p.name
                ))
            }
        };
        c.bind(&p.cname, binding);
    }
    c.block(&kernel.body)?;
    c.emit(Instr::Exit);
    Ok(Code {
        instrs: c.instrs,
        origins: c.origins,
        funcs: c.funcs,
        files: c.files,
        mems: c.mems,
        frame: c.max,
        shared_bytes: dyn_off.saturating_add(dyn_bytes),
        order_sensitive: c.order_sensitive,
        hopper,
    })
}

/// Whether the kernel or a device function uses a Hopper instruction.
fn uses_hopper(program: &Program) -> bool {
    let mut found = false;
    for f in std::iter::once(&program.kernel).chain(&program.devices) {
        walk_stmts(&f.body, &mut |s| {
            for e in s.kind.exprs() {
                e.walk(&mut |x| {
                    if let ExprKind::Intrinsic(i, _) = &x.kind {
                        found |= i.is_hopper();
                    }
                });
            }
        });
    }
    found
}

fn kind(s: Scalar) -> Res<K> {
    K::of(s).ok_or_else(|| "an element type is still a type parameter (unspecialised IR)".into())
}

fn scalar_kind(ty: &Ty) -> Res<K> {
    match ty {
        Ty::Scalar(s) => kind(*s),
        other => Err(format!("expected a scalar, found {other:?}")),
    }
}

fn lanes(elem: K) -> u64 {
    16 / elem.size() as u64
}

/// The register kind, slot count and report name of a vector or fragment value.
fn aggregate(ty: &Ty) -> Res<(K, u64, &'static str)> {
    match ty {
        Ty::Vector { elem } => {
            let k = kind(*elem)?;
            Ok((k, lanes(k), "vector"))
        }
        Ty::Frag { kind: f, .. } => Ok((kind(f.reg_type())?, f.regs() as u64, "fragment")),
        other => Err(format!("expected a vector or fragment, found {other:?}")),
    }
}

/// Byte offsets of every static shared array of the kernel and its device functions.
fn layout_shared(program: &Program) -> Res<(SharedLayout, u32)> {
    let mut map = HashMap::new();
    let mut total: u64 = 0;
    let mut problem = None;
    for f in std::iter::once(&program.kernel).chain(&program.devices) {
        walk_stmts(&f.body, &mut |s| {
            if let StmtKind::SharedArray {
                name,
                ty: Ty::Array { elem, dims, .. },
            } = &s.kind
            {
                let size = elem.size_bytes().unwrap_or(0);
                match eval_dims(program, f, dims) {
                    Ok(d) => {
                        let off = total.div_ceil(16) * 16;
                        let bytes = d.iter().product::<u64>().saturating_mul(size);
                        total = off.saturating_add(bytes);
                        map.insert((f.name.clone(), name.clone(), s.line), off as u32);
                    }
                    Err(e) => problem = Some(e),
                }
            }
        });
    }
    if let Some(e) = problem {
        return Err(e);
    }
    let total = u32::try_from(total)
        .ok()
        .filter(|t| *t <= 1 << 30)
        .ok_or("static shared memory is too large")?;
    Ok((map, total))
}

fn eval_dims(program: &Program, f: &Function, dims: &[kiln_codegen::types::Len]) -> Res<Vec<u64>> {
    let mut out = Vec::new();
    for d in dims {
        match eval_len(program, &f.name, d) {
            Some(v) if v >= 1 && v <= u32::MAX as i128 => out.push(v as u64),
            _ => {
                return Err(format!(
                    "an array length in `{}` cannot be evaluated",
                    f.name
                ))
            }
        }
    }
    if out
        .iter()
        .try_fold(1u64, |a, d| a.checked_mul(*d))
        .is_none_or(|n| n > 1 << 30)
    {
        return Err(format!("an array in `{}` is too large", f.name));
    }
    Ok(out)
}

impl Compiler<'_> {
    fn emit(&mut self, i: Instr) -> usize {
        self.instrs.push(i);
        self.origins.push(self.origin);
        self.instrs.len() - 1
    }

    fn here(&self) -> u32 {
        self.instrs.len() as u32
    }

    /// Points the jump or branch at `at` to `to`.
    fn patch(&mut self, at: usize, to: u32) {
        if let Some(Instr::Jump { to: t } | Instr::Branch { to: t, .. }) = self.instrs.get_mut(at) {
            *t = to;
        }
    }

    fn alloc(&mut self, n: u64) -> Res<Reg> {
        let r = self.next;
        let end = (r as u64).saturating_add(n);
        if end > MAX_FRAME as u64 {
            return Err(format!(
                "the kernel needs more than {MAX_FRAME} registers per thread (register arrays too large)"
            ));
        }
        self.next = end as Reg;
        self.max = self.max.max(self.next);
        Ok(r)
    }

    fn temp(&mut self) -> Res<Reg> {
        self.alloc(1)
    }

    fn mem(&mut self, name: &str) -> u16 {
        match self.mems.iter().position(|m| m == name) {
            Some(i) => i as u16,
            None => {
                self.mems.push(name.to_string());
                (self.mems.len() - 1).min(u16::MAX as usize) as u16
            }
        }
    }

    fn bind(&mut self, name: &str, b: Binding) {
        if let Some(s) = self.scopes.last_mut() {
            s.insert(name.to_string(), b);
        }
    }

    fn lookup(&self, name: &str) -> Res<Binding> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name))
            .cloned()
            .ok_or_else(|| format!("unknown variable `{name}` in `{}`", self.fn_name))
    }

    fn comptime(&self, name: &str) -> Res<i128> {
        self.program
            .comptime
            .get(&self.fn_name)
            .and_then(|v| v.iter().find(|(n, _, _)| n == name))
            .map(|(_, _, v)| *v)
            .ok_or_else(|| {
                format!(
                    "no value for comptime parameter `{name}` of `{}`",
                    self.fn_name
                )
            })
    }

    // -----------------------------------------------------------------------------------
    // statements

    fn block(&mut self, body: &[Stmt]) -> Res<()> {
        self.scopes.push(HashMap::new());
        let mark = self.next;
        let result = body.iter().try_for_each(|s| self.stmt(s));
        self.next = mark;
        self.scopes.pop();
        result
    }

    fn stmt(&mut self, s: &Stmt) -> Res<()> {
        self.origin.line = s.line;
        let mark = self.next;
        match &s.kind {
            StmtKind::Let { name, ty, init, .. } => {
                let b = self.new_local(ty)?;
                let mark = self.next;
                if let Some(e) = init {
                    self.value_into(e, &b)?;
                }
                self.next = mark;
                self.bind(name, b);
                return Ok(());
            }
            StmtKind::SharedArray { name, ty } => {
                let Ty::Array { elem, dims, .. } = ty else {
                    return Err(format!("shared `{name}` is not an array"));
                };
                let key = (self.fn_name.clone(), name.clone(), s.line);
                let off = *self
                    .shared
                    .get(&key)
                    .ok_or("shared array missing from the layout")?;
                let f = self.current_fn()?;
                let b = Binding::Array {
                    loc: Loc::Shared(off),
                    elem: kind(*elem)?,
                    dims: eval_dims(self.program, f, dims)?,
                    mem: self.mem(name),
                    writable: true,
                };
                self.bind(name, b);
            }
            StmtKind::DynShared { name, elem } => {
                let k = kind(*elem)?;
                let b = Binding::Array {
                    loc: Loc::Shared(self.dyn_off),
                    elem: k,
                    dims: vec![(self.dyn_bytes / k.size()) as u64],
                    mem: self.mem(name),
                    writable: true,
                };
                self.bind(name, b);
            }
            StmtKind::LocalArray {
                name,
                ty: ty @ Ty::FragArray { dims, .. },
                fill,
            } => {
                // an array of fragments: each fragment's registers are the innermost dimension
                let (elem, regs, _) = aggregate(&fill.ty)?;
                let f = self.current_fn()?;
                let mut dims = eval_dims(self.program, f, dims)?;
                let count: u64 = dims.iter().product();
                let slot = self.alloc(count * regs)?;
                let mark = self.next;
                let v = self.aggregate(fill)?;
                for i in 0..count {
                    self.emit(Instr::Copy {
                        dst: slot + (i * regs) as Reg,
                        src: v,
                        n: regs as u32,
                    });
                }
                self.next = mark;
                dims.push(regs);
                let b = Binding::Array {
                    loc: Loc::Local(slot),
                    elem,
                    dims,
                    mem: self.mem(name),
                    writable: true,
                };
                debug_assert!(matches!(ty, Ty::FragArray { .. }));
                self.bind(name, b);
                return Ok(());
            }
            StmtKind::LocalArray { name, ty, fill } => {
                let Ty::Array { elem, dims, .. } = ty else {
                    return Err(format!("register array `{name}` is not an array"));
                };
                let f = self.current_fn()?;
                let dims = eval_dims(self.program, f, dims)?;
                let n: u64 = dims.iter().product();
                let slot = self.alloc(n)?;
                let mark = self.next;
                let v = self.scalar(fill)?;
                self.emit(Instr::Fill {
                    dst: slot,
                    src: v,
                    n: n as u32,
                });
                self.next = mark;
                let b = Binding::Array {
                    loc: Loc::Local(slot),
                    elem: kind(*elem)?,
                    dims,
                    mem: self.mem(name),
                    writable: true,
                };
                self.bind(name, b);
                return Ok(());
            }
            StmtKind::Assign { target, op, value } => self.assign(target, *op, value)?,
            StmtKind::Expr(e) => self.effect(e)?,
            StmtKind::If { cond, then, els } => {
                let c = self.scalar(cond)?;
                let skip = self.emit(Instr::Branch {
                    cond: c,
                    when: false,
                    to: 0,
                });
                self.next = mark;
                self.block(then)?;
                if els.is_empty() {
                    self.patch(skip, self.here());
                } else {
                    let over = self.emit(Instr::Jump { to: 0 });
                    self.patch(skip, self.here());
                    self.block(els)?;
                    self.patch(over, self.here());
                }
            }
            StmtKind::For {
                var,
                ty,
                start,
                end,
                inclusive,
                step,
                body,
                ..
            } => self.for_loop(
                s.line,
                var,
                *ty,
                start,
                end,
                *inclusive,
                step.as_ref(),
                body,
            )?,
            StmtKind::While { cond, body } => {
                let top = self.here();
                let c = self.scalar(cond)?;
                let exit = self.emit(Instr::Branch {
                    cond: c,
                    when: false,
                    to: 0,
                });
                self.next = mark;
                self.loop_body(body, top, top, Some(exit))?;
            }
            StmtKind::Loop { body } => {
                let top = self.here();
                self.loop_body(body, top, top, None)?;
            }
            StmtKind::Break | StmtKind::Continue => {
                let j = self.emit(Instr::Jump { to: 0 });
                let labels = self
                    .loops
                    .last_mut()
                    .ok_or("`break`/`continue` outside of a loop")?;
                if matches!(s.kind, StmtKind::Break) {
                    labels.breaks.push(j);
                } else {
                    labels.continues.push(j);
                }
            }
            StmtKind::Return(v) => match self.inlined.as_ref().map(|i| i.dst) {
                None => {
                    self.emit(Instr::Exit);
                }
                Some(dst) => {
                    let slots = self.inlined.as_ref().map_or(1, |i| i.slots);
                    match (v, dst) {
                        (Some(v), Some(dst)) if slots > 1 => self.aggregate_into(v, dst, slots)?,
                        (Some(v), Some(dst)) => self.scalar_into(v, dst)?,
                        _ => {}
                    }
                    let j = self.emit(Instr::Jump { to: 0 });
                    if let Some(i) = self.inlined.as_mut() {
                        i.exits.push(j);
                    }
                }
            },
            StmtKind::Block(body) => self.block(body)?,
        }
        self.next = mark;
        Ok(())
    }

    fn current_fn(&self) -> Res<&'_ Function> {
        let p = self.program;
        std::iter::once(&p.kernel)
            .chain(&p.devices)
            .find(|f| f.name == self.fn_name)
            .ok_or_else(|| format!("no function `{}`", self.fn_name))
    }

    /// Emits a loop body that jumps back to `back`; `continue` goes to `cont`; the pending
    /// `exit` branch (and every `break`) goes past the loop.
    fn loop_body(&mut self, body: &[Stmt], back: u32, cont: u32, exit: Option<usize>) -> Res<()> {
        self.loop_body_with(body, cont, exit, |c| {
            c.emit(Instr::Jump { to: back });
            Ok(())
        })
    }

    fn loop_body_with(
        &mut self,
        body: &[Stmt],
        cont: u32,
        exit: Option<usize>,
        latch: impl FnOnce(&mut Self) -> Res<()>,
    ) -> Res<()> {
        self.loops.push(LoopLabels::default());
        self.block(body)?;
        let latch_at = self.here();
        latch(self)?;
        let labels = self.loops.pop().unwrap_or_default();
        let after = self.here();
        for j in labels.breaks.into_iter().chain(exit) {
            self.patch(j, after);
        }
        let cont = if cont == u32::MAX { latch_at } else { cont };
        for j in labels.continues {
            self.patch(j, cont);
        }
        Ok(())
    }

    /// `for (T var = start; var < end; var += step)` exactly as printed (the bound and the
    /// step are evaluated on every iteration, the variable wraps); an inclusive range also
    /// stops right after its last value.
    #[allow(clippy::too_many_arguments)]
    fn for_loop(
        &mut self,
        line: u32,
        var: &str,
        ty: Scalar,
        start: &Expr,
        end: &Expr,
        inclusive: bool,
        step: Option<&Expr>,
        body: &[Stmt],
    ) -> Res<()> {
        let k = kind(ty)?;
        self.scopes.push(HashMap::new());
        let slot = self.alloc(1)?;
        let mark = self.next;
        self.scalar_into(start, slot)?;
        let top = self.here();
        let e = self.scalar(end)?;
        let c = self.temp()?;
        let cmp = if inclusive { BinOp::Le } else { BinOp::Lt };
        self.emit(Instr::Bin {
            f: value::binary(cmp, k).ok_or("`for` over a non-integer")?,
            dst: c,
            a: slot,
            b: e,
        });
        let exit = self.emit(Instr::Branch {
            cond: c,
            when: false,
            to: 0,
        });
        self.next = mark;
        self.bind(var, Binding::Scalar { slot, k });
        let add = value::binary(BinOp::Add, k).ok_or("`for` over a non-integer")?;
        let result = self.loop_body_with(body, u32::MAX, Some(exit), |c| {
            c.origin.line = line;
            if inclusive {
                // `a..=b` stops after `b` even when `b` is the type's maximum (as printed)
                let e = c.scalar(end)?;
                let last = c.binary(BinOp::Eq, k, slot, e)?;
                c.break_if(last)?;
            }
            let s = match step {
                Some(st) => {
                    // as Rust's step_by (and the printed loop): stop instead of wrapping past the end
                    let s = c.scalar(st)?;
                    let e = c.scalar(end)?;
                    let unsigned = kind(match ty {
                        Scalar::I32 => Scalar::U32,
                        Scalar::I64 => Scalar::U64,
                        other => other,
                    })?;
                    let left = c.binary(BinOp::Sub, unsigned, e, slot)?;
                    let done = c.binary(BinOp::Le, unsigned, left, s)?;
                    c.break_if(done)?;
                    s
                }
                None => {
                    let one = c.temp()?;
                    c.emit(Instr::Const { dst: one, bits: 1 });
                    one
                }
            };
            c.emit(Instr::Bin {
                f: add,
                dst: slot,
                a: slot,
                b: s,
            });
            c.emit(Instr::Jump { to: top });
            c.next = mark;
            Ok(())
        });
        self.scopes.pop();
        result
    }

    /// `a op b` on integers of kind `k`, into a fresh temporary.
    fn binary(&mut self, op: BinOp, k: K, a: Reg, b: Reg) -> Res<Reg> {
        let dst = self.temp()?;
        let f = value::binary(op, k).ok_or("`for` over a non-integer")?;
        self.emit(Instr::Bin { f, dst, a, b });
        Ok(dst)
    }

    /// Leaves the innermost loop when `cond` holds.
    fn break_if(&mut self, cond: Reg) -> Res<()> {
        let j = self.emit(Instr::Branch {
            cond,
            when: true,
            to: 0,
        });
        self.loops.last_mut().ok_or("loop labels")?.breaks.push(j);
        Ok(())
    }

    /// Slots for a new variable of type `ty`.
    fn new_local(&mut self, ty: &Ty) -> Res<Binding> {
        Ok(match ty {
            Ty::Scalar(s) => Binding::Scalar {
                slot: self.alloc(1)?,
                k: kind(*s)?,
            },
            Ty::Dim3 => Binding::Dim3 {
                slot: self.alloc(3)?,
            },
            Ty::Vector { .. } | Ty::Frag { .. } => {
                let (elem, n, name) = aggregate(ty)?;
                Binding::Array {
                    loc: Loc::Local(self.alloc(n)?),
                    elem,
                    dims: vec![n],
                    mem: self.mem(name),
                    writable: true,
                }
            }
            other => return Err(format!("a variable cannot hold {other:?}")),
        })
    }

    /// Evaluates `e` into the slots of `b` (which `e` cannot read).
    fn value_into(&mut self, e: &Expr, b: &Binding) -> Res<()> {
        match b {
            Binding::Scalar { slot, .. } => self.scalar_into(e, *slot),
            Binding::Dim3 { slot } => self.dim3_into(e, *slot),
            Binding::Array {
                loc: Loc::Local(slot),
                dims,
                ..
            } => self.aggregate_into(e, *slot, dims.iter().product()),
            Binding::Array { .. } | Binding::View(_) => {
                Err("only register values can be assigned whole".into())
            }
        }
    }

    fn assign(&mut self, target: &Expr, op: Option<BinOp>, value: &Expr) -> Res<()> {
        if let ExprKind::Var(name) = &target.kind {
            let b = self.lookup(name)?;
            if let Binding::Scalar { slot, k } = b {
                match op {
                    None => {
                        let v = self.temp()?;
                        self.scalar_into(value, v)?;
                        self.emit(Instr::Mov { dst: slot, src: v });
                    }
                    Some(o) => {
                        let v = self.scalar(value)?;
                        self.binop(o, k, slot, slot, v)?;
                    }
                }
                return Ok(());
            }
            // whole Dim3 or vector: evaluate aside, then copy
            let (n, slot) = match &b {
                Binding::Dim3 { slot } => (3, *slot),
                Binding::Array {
                    loc: Loc::Local(slot),
                    dims,
                    ..
                } => (dims.first().copied().unwrap_or(0), *slot),
                _ => return Err(format!("cannot assign to `{name}` as a whole")),
            };
            let tmp = self.alloc(n)?;
            let tb = match b {
                Binding::Dim3 { .. } => Binding::Dim3 { slot: tmp },
                Binding::Array {
                    elem, dims, mem, ..
                } => Binding::Array {
                    loc: Loc::Local(tmp),
                    elem,
                    dims,
                    mem,
                    writable: true,
                },
                Binding::Scalar { .. } | Binding::View(_) => unreachable_binding()?,
            };
            self.value_into(value, &tb)?;
            self.emit(Instr::Copy {
                dst: slot,
                src: tmp,
                n: n as u32,
            });
            return Ok(());
        }
        if let (Ty::Frag { .. }, None) = (&target.ty, op) {
            let src = self.aggregate(value)?;
            let (_, n, _) = aggregate(&target.ty)?;
            for r in 0..n {
                let at = self.register_of(target, r)?;
                self.emit(Instr::Store {
                    src: src + r as Reg,
                    at,
                });
            }
            return Ok(());
        }
        let at = self.access(target, true)?;
        match op {
            None => {
                let v = self.scalar(value)?;
                self.emit(Instr::Store { src: v, at });
            }
            Some(o) => {
                let v = self.scalar(value)?;
                let cur = self.temp()?;
                self.emit(Instr::Load { dst: cur, at });
                self.binop(o, at.k, cur, cur, v)?;
                self.emit(Instr::Store { src: cur, at });
            }
        }
        Ok(())
    }

    /// `dst = a op b` for operands of kind `k` (the left operand's, for shifts).
    fn binop(&mut self, op: BinOp, k: K, dst: Reg, a: Reg, b: Reg) -> Res<()> {
        if matches!(op, BinOp::Div | BinOp::Rem) && !k.is_float() {
            let kind = if op == BinOp::Div {
                DivKind::Div
            } else {
                DivKind::Rem
            };
            return self.int_div(kind, k, dst, a, b);
        }
        let f = match op {
            BinOp::And => value::binary(BinOp::BitAnd, K::Bool),
            BinOp::Or => value::binary(BinOp::BitOr, K::Bool),
            _ => value::binary(op, k),
        }
        .ok_or_else(|| format!("`{}` is not defined for {k:?}", op.c_op()))?;
        self.emit(Instr::Bin { f, dst, a, b });
        Ok(())
    }

    fn int_div(&mut self, kind: DivKind, k: K, dst: Reg, a: Reg, b: Reg) -> Res<()> {
        let f = value::int_div(kind, k).ok_or_else(|| format!("integer division on {k:?}"))?;
        self.emit(Instr::IntDiv {
            f,
            kind,
            k,
            dst,
            a,
            b,
        });
        Ok(())
    }

    /// An expression statement: evaluated for its effects (a read can still be out of bounds).
    fn effect(&mut self, e: &Expr) -> Res<()> {
        match (&e.kind, &e.ty) {
            (_, Ty::Frag { .. }) => self.aggregate(e).map(|_| ()),
            (ExprKind::Intrinsic(i, args), _) => self.intrinsic(*i, args, &e.ty, None),
            (ExprKind::Call { callee, args, .. }, _) => self.call(callee, args, None),
            (_, Ty::Scalar(_)) => self.scalar(e).map(|_| ()),
            (_, Ty::Vector { .. }) => self.aggregate(e).map(|_| ()),
            _ => Ok(()),
        }
    }

    // -----------------------------------------------------------------------------------
    // expressions

    /// A register holding the value of scalar `e` (a variable's own slot when `e` is one).
    fn scalar(&mut self, e: &Expr) -> Res<Reg> {
        if let ExprKind::Var(name) = &e.kind {
            if let Binding::Scalar { slot, .. } = self.lookup(name)? {
                return Ok(slot);
            }
        }
        let r = self.temp()?;
        self.scalar_into(e, r)?;
        Ok(r)
    }

    fn constant(&mut self, dst: Reg, bits: u64) -> Res<()> {
        self.emit(Instr::Const { dst, bits });
        Ok(())
    }

    fn scalar_into(&mut self, e: &Expr, dst: Reg) -> Res<()> {
        let k = scalar_kind(&e.ty)?;
        match &e.kind {
            ExprKind::Int(v) => self.constant(dst, k.int_bits(*v as i64 as i128)),
            ExprKind::Float(v) => self.constant(dst, value::float_literal(k, *v)),
            ExprKind::Bool(b) => self.constant(dst, *b as u64),
            ExprKind::ConstParam(name) => {
                let v = self.comptime(name)?;
                self.constant(dst, k.int_bits(v))
            }
            ExprKind::TypeConst(c) => self.constant(dst, value::type_const(k, *c)),
            ExprKind::SizeOf(s) => self.constant(dst, s.size_bytes().unwrap_or(0)),
            ExprKind::Var(name) => match self.lookup(name)? {
                Binding::Scalar { slot, .. } => {
                    self.emit(Instr::Mov { dst, src: slot });
                    Ok(())
                }
                _ => Err(format!("`{name}` is not a scalar")),
            },
            ExprKind::Unary(op, a) => {
                let ka = scalar_kind(&a.ty)?;
                let ra = self.scalar(a)?;
                let f = value::unary(*op, ka).ok_or_else(|| format!("{op:?} on {ka:?}"))?;
                self.emit(Instr::Un { f, dst, a: ra });
                Ok(())
            }
            ExprKind::Binary(op @ (BinOp::And | BinOp::Or), a, b) => {
                // short-circuit: dst = a; if dst decides, skip b
                self.scalar_into(a, dst)?;
                let skip = self.emit(Instr::Branch {
                    cond: dst,
                    when: *op == BinOp::Or,
                    to: 0,
                });
                self.scalar_into(b, dst)?;
                self.patch(skip, self.here());
                Ok(())
            }
            ExprKind::Binary(op, a, b) => {
                let ka = scalar_kind(&a.ty)?;
                let ra = self.scalar(a)?;
                let rb = self.scalar(b)?;
                self.binop(*op, ka, dst, ra, rb)
            }
            ExprKind::Cast(a) => {
                let from = scalar_kind(&a.ty)?;
                if from == k {
                    return self.scalar_into(a, dst);
                }
                let ra = self.scalar(a)?;
                self.emit(Instr::Cast {
                    from,
                    to: k,
                    dst,
                    a: ra,
                });
                Ok(())
            }
            ExprKind::Index(..) => {
                let at = self.access(e, false)?;
                self.emit(Instr::Load { dst, at });
                Ok(())
            }
            ExprKind::Field(base, axis) => self.field(base, *axis, dst),
            ExprKind::Intrinsic(i, args) => self.intrinsic(*i, args, &e.ty, Some(dst)),
            ExprKind::Call { callee, args, .. } => self.call(callee, args, Some(dst)),
            ExprKind::Select(c, a, b) => self.select(c, a, b, &|s, x| s.scalar_into(x, dst)),
        }
    }

    /// `if c { a } else { b }`, each branch produced by `into`.
    fn select(
        &mut self,
        c: &Expr,
        a: &Expr,
        b: &Expr,
        into: &dyn Fn(&mut Self, &Expr) -> Res<()>,
    ) -> Res<()> {
        let rc = self.scalar(c)?;
        let to_else = self.emit(Instr::Branch {
            cond: rc,
            when: false,
            to: 0,
        });
        into(self, a)?;
        let over = self.emit(Instr::Jump { to: 0 });
        self.patch(to_else, self.here());
        into(self, b)?;
        self.patch(over, self.here());
        Ok(())
    }

    fn field(&mut self, base: &Expr, axis: Axis, dst: Reg) -> Res<()> {
        let a = match axis {
            Axis::X => 0u8,
            Axis::Y => 1,
            Axis::Z => 2,
        };
        if let ExprKind::Intrinsic(i, _) = &base.kind {
            if let Some(which) = geometry(*i, a) {
                self.emit(Instr::Special { dst, which });
                return Ok(());
            }
        }
        let slot = match &base.kind {
            ExprKind::Var(name) => match self.lookup(name)? {
                Binding::Dim3 { slot } => slot,
                _ => return Err(format!("`{name}` has no fields")),
            },
            _ => {
                let slot = self.alloc(3)?;
                self.dim3_into(base, slot)?;
                slot
            }
        };
        self.emit(Instr::Mov {
            dst,
            src: slot + a as Reg,
        });
        Ok(())
    }

    fn dim3_into(&mut self, e: &Expr, dst: Reg) -> Res<()> {
        match &e.kind {
            ExprKind::Intrinsic(i, _) if geometry(*i, 0).is_some() => {
                for a in 0..3u8 {
                    if let Some(which) = geometry(*i, a) {
                        self.emit(Instr::Special {
                            dst: dst + a as Reg,
                            which,
                        });
                    }
                }
                Ok(())
            }
            ExprKind::Var(name) => match self.lookup(name)? {
                Binding::Dim3 { slot } => {
                    self.emit(Instr::Copy {
                        dst,
                        src: slot,
                        n: 3,
                    });
                    Ok(())
                }
                _ => Err(format!("`{name}` is not a Dim3")),
            },
            ExprKind::Select(c, a, b) => self.select(c, a, b, &|s, x| s.dim3_into(x, dst)),
            other => Err(format!("unsupported Dim3 expression {other:?}")),
        }
    }

    /// The slots holding the value of vector or fragment `e`: a variable's own, else fresh ones.
    fn aggregate(&mut self, e: &Expr) -> Res<Reg> {
        let (_, n, _) = aggregate(&e.ty)?;
        if let ExprKind::Var(name) = &e.kind {
            if let Binding::Array {
                loc: Loc::Local(slot),
                dims,
                ..
            } = self.lookup(name)?
            {
                if dims[..] == [n] {
                    return Ok(slot);
                }
            }
        }
        let slot = self.alloc(n)?;
        self.aggregate_into(e, slot, n)?;
        Ok(slot)
    }

    /// Evaluates vector or fragment `e` into the `n` slots at `dst` (it must have `n`).
    fn aggregate_into(&mut self, e: &Expr, dst: Reg, n: u64) -> Res<()> {
        let (_, have, _) = aggregate(&e.ty)?;
        if have != n {
            return Err(format!("a value of {have} slots where {n} are expected"));
        }
        match &e.kind {
            ExprKind::Var(name) => match self.lookup(name)? {
                Binding::Array {
                    loc: Loc::Local(slot),
                    dims,
                    ..
                } if dims[..] == [n] => {
                    self.emit(Instr::Copy {
                        dst,
                        src: slot,
                        n: n as u32,
                    });
                    Ok(())
                }
                _ => Err(format!("`{name}` is not a value of {n} slots")),
            },
            ExprKind::Intrinsic(Intrinsic::VLoad, args) => {
                let at = self.vector_access(args, false)?;
                self.emit(Instr::VLoad { dst, at });
                Ok(())
            }
            ExprKind::Intrinsic(Intrinsic::FragZero, _) => {
                self.emit(Instr::Const { dst, bits: 0 });
                self.emit(Instr::Fill {
                    dst,
                    src: dst,
                    n: n as u32,
                });
                Ok(())
            }
            ExprKind::Intrinsic(Intrinsic::Ldmatrix { num, trans }, args) => {
                self.ldmatrix(args, *num, *trans, dst)
            }
            ExprKind::Intrinsic(Intrinsic::Mma, args) => self.mma(args, dst),
            ExprKind::Call { callee, args, .. } => self.call(callee, args, Some(dst)),
            ExprKind::Select(c, a, b) => self.select(c, a, b, &|s, x| s.aggregate_into(x, dst, n)),
            ExprKind::Index(..) => {
                // one fragment of an array of fragments: its registers one by one
                for r in 0..n {
                    let at = self.register_of(e, r)?;
                    self.emit(Instr::Load {
                        dst: dst + r as Reg,
                        at,
                    });
                }
                Ok(())
            }
            other => Err(format!(
                "unsupported vector or fragment expression {other:?}"
            )),
        }
    }

    /// Register `r` of the fragment `frag` designates (an element of an array of fragments).
    fn register_of(&mut self, frag: &Expr, r: u64) -> Res<Access> {
        let arr = self.array_ref(frag)?;
        let idx = self.temp()?;
        self.constant(idx, r)?;
        arr.access(idx)
            .ok_or_else(|| "a fragment's registers expected".into())
    }

    /// `ldmatrix`: lanes below `8 * num` load the 16-byte row they address (checked like any
    /// 16-byte shared load), then the warp redistributes the rows into `num` registers at `dst`.
    fn ldmatrix(&mut self, args: &[Expr], num: u8, trans: bool, dst: Reg) -> Res<()> {
        let place = args.first().ok_or("`ldmatrix` without an address")?;
        let row = self.alloc(8)?;
        let lane = self.temp()?;
        self.emit(Instr::Special {
            dst: lane,
            which: Special::LaneId,
        });
        let limit = self.temp()?;
        self.constant(limit, 8 * num as u64)?;
        let addresses = self.temp()?;
        self.binop(BinOp::Lt, K::U32, addresses, lane, limit)?;
        let skip = self.emit(Instr::Branch {
            cond: addresses,
            when: false,
            to: 0,
        });
        let at = self.access(place, false)?;
        if !matches!(at.loc, Loc::Shared(_)) || at.k.size() != 2 {
            return Err("`ldmatrix` reads 16-bit elements of shared memory".into());
        }
        self.emit(Instr::VLoad { dst: row, at });
        self.patch(skip, self.here());
        self.emit(Instr::Matrix {
            op: MatrixOp::Ldmatrix { num, trans },
            dst,
            src: [row, ZERO, ZERO],
        });
        Ok(())
    }

    /// `mma`: D = A·B + C into the four slots at `dst`.
    fn mma(&mut self, args: &[Expr], dst: Reg) -> Res<()> {
        let [a, b, c] = args else {
            return Err("`mma` takes three fragments".into());
        };
        let elem = match a.ty.frag() {
            Some((_, e)) => kind(e)?,
            None => return Err("`mma` without an A fragment".into()),
        };
        if !matches!(elem, K::F16 | K::Bf16) {
            return Err(format!("`mma` on {elem:?} fragments"));
        }
        let src = [self.aggregate(a)?, self.aggregate(b)?, self.aggregate(c)?];
        self.emit(Instr::Matrix {
            op: MatrixOp::Mma { elem },
            dst,
            src,
        });
        Ok(())
    }

    /// `base.vload(i)` / `base.vstore(i, v)`: 16 bytes from element `i` of `base`.
    fn vector_access(&mut self, args: &[Expr], write: bool) -> Res<Access> {
        let [base, idx, ..] = args else {
            return Err("vector access without an index".into());
        };
        self.element(base, idx, write)
    }

    /// Element `idx` of the one-dimensional array, slice or vector `base`.
    fn element(&mut self, base: &Expr, idx: &Expr, write: bool) -> Res<Access> {
        let arr = self.array_ref(base)?;
        if write && !arr.writable {
            return Err("write to a read-only slice".into());
        }
        if arr.dims.len() != 1 {
            return Err("indexing yields a row, not an element".into());
        }
        let idx = self.index(idx)?;
        arr.access(idx)
            .ok_or_else(|| "indexing yields a row, not an element".into())
    }

    /// An index as a 64-bit offset (negative signed indices become huge, hence out of bounds).
    fn index(&mut self, e: &Expr) -> Res<Reg> {
        let k = scalar_kind(&e.ty)?;
        let r = self.scalar(e)?;
        if k == K::I32 {
            let w = self.temp()?;
            self.emit(Instr::Cast {
                from: K::I32,
                to: K::I64,
                dst: w,
                a: r,
            });
            return Ok(w);
        }
        Ok(r)
    }

    /// The element `e` (an `Index` expression) designates.
    fn access(&mut self, e: &Expr, write: bool) -> Res<Access> {
        let ExprKind::Index(base, idx) = &e.kind else {
            return Err(format!("not a memory place: {:?}", e.kind));
        };
        self.element(base, idx, write)
    }

    fn array_ref(&mut self, e: &Expr) -> Res<ArrayRef> {
        match &e.kind {
            ExprKind::Var(name) => match self.lookup(name)? {
                Binding::Array {
                    loc,
                    elem,
                    dims,
                    mem,
                    writable,
                } => Ok(ArrayRef {
                    loc,
                    elem,
                    dims,
                    base: ZERO,
                    mem,
                    writable,
                }),
                Binding::View(a) => Ok(a),
                _ => Err(format!("`{name}` cannot be indexed")),
            },
            ExprKind::Index(b, i) => {
                let a = self.array_ref(b)?;
                if a.dims.len() < 2 {
                    return Err("too many indices".into());
                }
                let idx = self.index(i)?;
                let dst = self.temp()?;
                self.emit(Instr::IndexStep {
                    dst,
                    base: a.base,
                    idx,
                    dim: a.dims[0],
                    stride: a.dims[1..].iter().product(),
                    loc: a.loc,
                    mem: a.mem,
                });
                Ok(ArrayRef {
                    dims: a.dims[1..].to_vec(),
                    base: dst,
                    ..a
                })
            }
            _ => {
                let (elem, n, name) = aggregate(&e.ty)?;
                let slot = self.aggregate(e)?;
                Ok(ArrayRef {
                    loc: Loc::Local(slot),
                    elem,
                    dims: vec![n],
                    base: ZERO,
                    mem: self.mem(name),
                    writable: false,
                })
            }
        }
    }

    fn intrinsic(&mut self, i: Intrinsic, args: &[Expr], ty: &Ty, dst: Option<Reg>) -> Res<()> {
        use Intrinsic::*;
        let used = dst.is_some();
        let dst = match dst {
            Some(d) => d,
            None => self.temp()?,
        };
        let arg = |n: usize| {
            args.get(n)
                .ok_or_else(|| format!("{i:?} is missing an argument"))
        };
        let k0 = args.first().and_then(|a| a.ty.scalar()).and_then(K::of);
        match i {
            ThreadIdx | BlockIdx | BlockDim | GridDim | ThreadFenceBlock => Ok(()),
            LaneId => self.special(dst, Special::LaneId),
            WarpId => self.special(dst, Special::WarpId),
            WarpSize => self.constant(dst, 32),
            SyncThreads => {
                self.emit(Instr::Barrier);
                Ok(())
            }
            ThreadFence => {
                self.emit(Instr::Fence);
                Ok(())
            }
            SyncWarp => self.warp(WarpOp::SyncWarp, dst, ZERO, ZERO, ZERO),
            ActiveMask => self.warp(WarpOp::ActiveMask, dst, ZERO, ZERO, ZERO),
            ShflSync | ShflXorSync | ShflDownSync | ShflUpSync => {
                let mode = match i {
                    ShflSync => ShflMode::Idx,
                    ShflXorSync => ShflMode::Xor,
                    ShflDownSync => ShflMode::Down,
                    _ => ShflMode::Up,
                };
                let mask = self.scalar(arg(0)?)?;
                let val = self.scalar(arg(1)?)?;
                let lane = self.scalar(arg(2)?)?;
                self.warp(WarpOp::Shfl(mode), dst, mask, val, lane)
            }
            BallotSync | AllSync | AnySync => {
                let op = match i {
                    BallotSync => WarpOp::Ballot,
                    AllSync => WarpOp::All,
                    _ => WarpOp::Any,
                };
                let mask = self.scalar(arg(0)?)?;
                let pred = self.scalar(arg(1)?)?;
                self.warp(op, dst, mask, pred, ZERO)
            }
            AtomicAdd | AtomicSub | AtomicMin | AtomicMax | AtomicAnd | AtomicOr | AtomicXor
            | AtomicExch | AtomicCas => {
                let at = self.access(arg(0)?, true)?;
                let a = self.scalar(arg(1)?)?;
                let b = match args.get(2) {
                    Some(x) => self.scalar(x)?,
                    None => ZERO,
                };
                if matches!(at.loc, Loc::Global(_))
                    && (used || at.k.is_float() || matches!(i, AtomicExch | AtomicCas))
                {
                    self.order_sensitive = true;
                }
                self.emit(Instr::Atomic {
                    op: i,
                    dst,
                    at,
                    a,
                    b,
                });
                Ok(())
            }
            CpAsync => {
                let d = self.access(arg(0)?, true)?;
                let s = self.access(arg(1)?, false)?;
                if !matches!(d.loc, Loc::Shared(_)) || !matches!(s.loc, Loc::Global(_)) {
                    return Err("`cp_async` copies global to shared memory".into());
                }
                self.emit(Instr::CpAsync { dst: d, src: s });
                Ok(())
            }
            CpAsyncCommit => {
                self.emit(Instr::CpCommit);
                Ok(())
            }
            CpAsyncWait => {
                let n = self.count(arg(0)?, "cp_async_wait")?;
                self.emit(Instr::CpWait { n });
                Ok(())
            }
            WgmmaFence | FenceBarrierInit | FenceProxyAsync => Ok(()),
            SetMaxNReg { .. } => self.count(arg(0)?, "setmaxnreg").map(|_| ()),
            WgmmaCommit => {
                self.emit(Instr::Hopper(HopperOp::WgmmaCommit));
                Ok(())
            }
            WgmmaWait => {
                let n = self.count(arg(0)?, "wgmma_wait")?;
                self.emit(Instr::Hopper(HopperOp::WgmmaWait { n }));
                Ok(())
            }
            Wgmma { elem, trans_b } | WgmmaRs { elem, trans_b } => {
                let elem = kind(elem)?;
                let acc = self.array_ref(arg(0)?)?;
                let (Loc::Local(slot), [len], ZERO) = (acc.loc, &acc.dims[..], acc.base) else {
                    return Err("`wgmma`'s accumulator must be a whole register array".into());
                };
                let a_rows = matches!(i, WgmmaRs { .. });
                let a = match a_rows {
                    // the warp hands each lane the two rows of A its entries need
                    true => {
                        let frag = self.aggregate(arg(1)?)?;
                        let rows = self.alloc(16)?;
                        self.emit(Instr::Matrix {
                            op: MatrixOp::WgmmaRows,
                            dst: rows,
                            src: [frag, ZERO, ZERO],
                        });
                        rows
                    }
                    false => self.scalar(arg(1)?)?,
                };
                let b = self.scalar(arg(2)?)?;
                self.emit(Instr::Hopper(HopperOp::Wgmma {
                    elem,
                    trans_b,
                    a_rows,
                    acc: slot,
                    acc_len: *len as u32,
                    a,
                    b,
                }));
                Ok(())
            }
            WgmmaDesc => {
                let at = self.shared_access(arg(0)?, false, "wgmma_desc")?;
                let addr = self.temp()?;
                self.emit(Instr::SharedAddr { dst: addr, at });
                let lbo = self.scalar(arg(1)?)?;
                let sbo = self.scalar(arg(2)?)?;
                self.emit(Instr::Hopper(HopperOp::WgmmaDesc {
                    dst,
                    addr,
                    lbo,
                    sbo,
                }));
                Ok(())
            }
            MbarrierInit | MbarrierArrive | MbarrierExpectTx | MbarrierWait => {
                let bar = self.shared_access(arg(0)?, true, "an mbarrier")?;
                let op = match i {
                    MbarrierArrive => HopperOp::MbarArrive { bar },
                    MbarrierInit => HopperOp::MbarInit {
                        bar,
                        count: self.scalar(arg(1)?)?,
                    },
                    MbarrierExpectTx => HopperOp::MbarExpectTx {
                        bar,
                        bytes: self.scalar(arg(1)?)?,
                    },
                    _ => HopperOp::MbarWait {
                        bar,
                        parity: self.scalar(arg(1)?)?,
                    },
                };
                self.emit(Instr::Hopper(op));
                Ok(())
            }
            TmaLoad2d => self.tma_load_2d(args),
            CpAsyncWaitAll => {
                self.emit(Instr::CpWaitAll);
                Ok(())
            }
            Len => {
                let a = arg(0)?;
                let len = match &a.ty {
                    Ty::Slice { .. } => match &a.kind {
                        ExprKind::Var(name) => match self.lookup(name)? {
                            Binding::Array { dims, .. } => dims.first().copied().unwrap_or(0),
                            _ => return Err(format!("`{name}` is not a slice")),
                        },
                        _ => return Err("`len` of a slice expression".into()),
                    },
                    Ty::Array { dims, .. } => {
                        let f = self.current_fn()?;
                        eval_dims(self.program, f, &dims[..1.min(dims.len())])?
                            .first()
                            .copied()
                            .unwrap_or(0)
                    }
                    other => return Err(format!("`len` of {other:?}")),
                };
                self.constant(dst, len & 0xffff_ffff)
            }
            Lanes => match &arg(0)?.ty {
                Ty::Vector { elem } => {
                    let n = lanes(kind(*elem)?);
                    self.constant(dst, n)
                }
                other => Err(format!("`lanes` of {other:?}")),
            },
            VLoad => {
                // a vector used where a statement or scalar was expected: load and drop
                let elem = match ty {
                    Ty::Vector { elem } => kind(*elem)?,
                    other => return Err(format!("`vload` typed {other:?}")),
                };
                let slots = self.alloc(lanes(elem))?;
                let at = self.vector_access(args, false)?;
                self.emit(Instr::VLoad { dst: slots, at });
                Ok(())
            }
            VStore => {
                let at = self.vector_access(args, true)?;
                let src = self.alloc(lanes(at.k))?;
                self.aggregate_into(arg(2)?, src, lanes(at.k))?;
                self.emit(Instr::VStore { src, at });
                Ok(())
            }
            Ldmatrix { num, trans } => self.ldmatrix(args, num, trans, dst),
            Pack2(elem) => {
                let k = kind(elem)?;
                let lo = self.scalar(arg(0)?)?;
                let hi = self.scalar(arg(1)?)?;
                let (l, h, sixteen) = (self.temp()?, self.temp()?, self.temp()?);
                for (d, a) in [(l, lo), (h, hi)] {
                    self.emit(Instr::Cast {
                        from: K::F32,
                        to: k,
                        dst: d,
                        a,
                    });
                }
                self.constant(sixteen, 16)?;
                self.binop(BinOp::Shl, K::U32, h, h, sixteen)?;
                self.binop(BinOp::BitOr, K::U32, dst, l, h)
            }
            UnpackLo | UnpackHi => {
                let r = self.scalar(arg(0)?)?;
                let c = self.temp()?;
                if i == UnpackLo {
                    self.constant(c, 0xffff)?;
                    self.binop(BinOp::BitAnd, K::U32, dst, r, c)
                } else {
                    self.constant(c, 16)?;
                    self.binop(BinOp::Shr, K::U32, dst, r, c)
                }
            }
            Mma | FragZero => Err(format!("{i:?} yields a fragment, not a scalar")),
            DivCeil => {
                let k = k0.ok_or("`div_ceil` of a non-integer")?;
                let a = self.scalar(arg(0)?)?;
                let b = self.scalar(arg(1)?)?;
                self.int_div(DivKind::DivCeil, k, dst, a, b)
            }
            _ => {
                let k = k0.ok_or_else(|| format!("{i:?} needs a scalar operand"))?;
                let f =
                    value::math(i, k).ok_or_else(|| format!("{i:?} is not defined for {k:?}"))?;
                let regs = args
                    .iter()
                    .map(|a| self.scalar(a))
                    .collect::<Res<Vec<Reg>>>()?;
                let r = |n: usize| {
                    regs.get(n)
                        .copied()
                        .ok_or(format!("{i:?} is missing an argument"))
                };
                let instr = match f {
                    MathFn::Un(f) => Instr::Un { f, dst, a: r(0)? },
                    MathFn::Bin(f) => Instr::Bin {
                        f,
                        dst,
                        a: r(0)?,
                        b: r(1)?,
                    },
                    MathFn::Ter(f) => Instr::Ter {
                        f,
                        dst,
                        a: r(0)?,
                        b: r(1)?,
                        c: r(2)?,
                    },
                };
                self.emit(instr);
                Ok(())
            }
        }
    }

    /// A comptime count argument (`cp_async_wait::<N>`, `wgmma_wait::<N>`, …).
    fn count(&self, e: &Expr, what: &str) -> Res<u32> {
        let n = match &e.kind {
            ExprKind::Int(v) => *v as i128,
            ExprKind::ConstParam(p) => self.comptime(p)?,
            other => return Err(format!("`{what}` count {other:?} is not comptime")),
        };
        Ok(n.clamp(0, u32::MAX as i128) as u32)
    }

    /// The shared-memory element `e` designates (`what` names the user in errors).
    fn shared_access(&mut self, e: &Expr, write: bool, what: &str) -> Res<Access> {
        let at = self.access(e, write)?;
        if !matches!(at.loc, Loc::Shared(_)) {
            return Err(format!("{what} must be in shared memory"));
        }
        Ok(at)
    }

    /// `tma_load_2d(&mut tile[j], &map[0], src, &mut bar[i], x, y)`.
    fn tma_load_2d(&mut self, args: &[Expr]) -> Res<()> {
        let [dst, map, src, bar, x, y] = args else {
            return Err("`tma_load_2d` takes six arguments".into());
        };
        let dst = self.shared_access(dst, true, "a TMA destination")?;
        let map = self.access(map, false)?;
        if !matches!(map.loc, Loc::Global(_)) || map.k != K::U64 {
            return Err("a tensor map is an element of a `&[u64]` slice".into());
        }
        let ExprKind::Var(name) = &src.kind else {
            return Err("`tma_load_2d` names its tensor as a slice parameter".into());
        };
        let Binding::Array {
            loc: Loc::Global(buf),
            elem,
            dims,
            mem,
            ..
        } = self.lookup(name)?
        else {
            return Err(format!("`{name}` is not a slice"));
        };
        let bar = self.shared_access(bar, true, "an mbarrier")?;
        let (x, y) = (self.scalar(x)?, self.scalar(y)?);
        self.emit(Instr::Hopper(HopperOp::Tma(Box::new(TmaLoad {
            dst,
            map,
            src: buf,
            src_len: dims.first().copied().unwrap_or(0),
            src_k: elem,
            src_mem: mem,
            bar,
            x,
            y,
        }))));
        Ok(())
    }

    fn special(&mut self, dst: Reg, which: Special) -> Res<()> {
        self.emit(Instr::Special { dst, which });
        Ok(())
    }

    fn warp(&mut self, op: WarpOp, dst: Reg, mask: Reg, val: Reg, lane: Reg) -> Res<()> {
        self.emit(Instr::Warp {
            op,
            dst,
            mask,
            val,
            lane,
        });
        Ok(())
    }

    /// Inlines a call of the device function `callee`; its result (if any) goes to `dst`.
    fn call(&mut self, callee: &str, args: &[Expr], dst: Option<Reg>) -> Res<()> {
        let program = self.program;
        let f = program
            .devices
            .iter()
            .find(|d| d.name == callee)
            .ok_or_else(|| format!("unknown device function `{callee}`"))?;
        if self.depth >= MAX_INLINE_DEPTH {
            return Err(format!(
                "device calls nest deeper than {MAX_INLINE_DEPTH} (`{callee}`)"
            ));
        }
        if f.params.len() != args.len() {
            return Err(format!("`{callee}` called with {} arguments", args.len()));
        }
        let mut params = HashMap::new();
        for (p, a) in f.params.iter().zip(args) {
            let b = match (&p.ty, &a.kind) {
                (Ty::Ref { mutable, .. }, ExprKind::Var(name)) => match self.lookup(name)? {
                    Binding::Array {
                        loc,
                        elem,
                        dims,
                        mem,
                        writable,
                    } => Binding::Array {
                        loc,
                        elem,
                        dims,
                        mem,
                        writable: writable && *mutable,
                    },
                    Binding::View(a) => Binding::View(ArrayRef {
                        writable: a.writable && *mutable,
                        ..a
                    }),
                    _ => return Err(format!("`{name}` is not an array")),
                },
                (Ty::Ref { mutable, .. }, ExprKind::Index(..)) => {
                    let a = self.array_ref(a)?;
                    Binding::View(ArrayRef {
                        writable: a.writable && *mutable,
                        ..a
                    })
                }
                (Ty::Slice { .. }, ExprKind::Var(name)) => match self.lookup(name)? {
                    b @ Binding::Array {
                        loc: Loc::Global(_),
                        ..
                    } => b,
                    _ => return Err(format!("`{name}` is not a slice")),
                },
                (Ty::Scalar(s), _) => {
                    let slot = self.alloc(1)?;
                    self.scalar_into(a, slot)?;
                    Binding::Scalar { slot, k: kind(*s)? }
                }
                (ty @ Ty::Frag { .. }, _) => {
                    let (elem, n, name) = aggregate(ty)?;
                    let slot = self.alloc(n)?;
                    self.aggregate_into(a, slot, n)?;
                    Binding::Array {
                        loc: Loc::Local(slot),
                        elem,
                        dims: vec![n],
                        mem: self.mem(name),
                        writable: true,
                    }
                }
                (ty, _) => return Err(format!("device parameter of type {ty:?}")),
            };
            params.insert(p.cname.clone(), b);
        }
        let slots = match &f.ret {
            ret @ Ty::Frag { .. } => aggregate(ret)?.1,
            _ => 1,
        };
        let ret_dst = match (&f.ret, dst) {
            (Ty::Scalar(_) | Ty::Frag { .. }, Some(d)) => Some(d),
            (Ty::Scalar(_), None) => Some(self.temp()?),
            (Ty::Frag { .. }, None) => Some(self.alloc(slots)?),
            _ => None,
        };
        let func = match self.funcs.iter().position(|n| *n == f.name) {
            Some(i) => i,
            None => {
                self.funcs.push(f.name.clone());
                self.files.push(f.file.clone());
                self.funcs.len() - 1
            }
        };
        let saved_origin = self.origin;
        let saved_scopes = std::mem::replace(&mut self.scopes, vec![params]);
        let saved_fn = std::mem::replace(&mut self.fn_name, f.name.clone());
        let saved_loops = std::mem::take(&mut self.loops);
        let saved_inlined = self.inlined.replace(Inlined {
            dst: ret_dst,
            slots,
            exits: Vec::new(),
        });
        self.origin = Origin {
            line: f.line,
            func: func.min(u16::MAX as usize) as u16,
        };
        self.depth += 1;
        let result = self.block(&f.body);
        self.depth -= 1;
        let done = std::mem::replace(&mut self.inlined, saved_inlined);
        let end = self.here();
        for j in done.map(|d| d.exits).unwrap_or_default() {
            self.patch(j, end);
        }
        self.scopes = saved_scopes;
        self.fn_name = saved_fn;
        self.loops = saved_loops;
        self.origin = saved_origin;
        result
    }
}

fn unreachable_binding() -> Res<Binding> {
    Err("internal: scalar binding in a whole-value assignment".into())
}

/// The special register for axis `a` of a geometry intrinsic.
fn geometry(i: Intrinsic, a: u8) -> Option<Special> {
    Some(match i {
        Intrinsic::ThreadIdx => Special::ThreadIdx(a),
        Intrinsic::BlockIdx => Special::BlockIdx(a),
        Intrinsic::BlockDim => Special::BlockDim(a),
        Intrinsic::GridDim => Special::GridDim(a),
        _ => return None,
    })
}
