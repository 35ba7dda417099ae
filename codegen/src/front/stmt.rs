//! Checking and lowering statements: `let`, assignments, `if`, loops, `break`/`continue`,
//! `return`, blocks, and the declarations of shared and register arrays.

use super::divergence::is_comptime;
use super::expr::{compound_op, strip, untyped_literal};
use super::signature::line_of;
use super::syntax_types::check_shared_size;
use super::Checker;
use crate::diag::{err, err_hint, Res};
use crate::ir::{Expr, ExprKind, FnKind, Stmt, StmtKind};
use crate::types::{Scalar, Space, Ty};

impl Checker {
    /// The function body. In a device function with a result, the tail expression is it.
    pub fn fn_body(&mut self, block: &syn::Block) -> Res<Vec<Stmt>> {
        let returns_value = self.kind == FnKind::Device && self.ret != Ty::Unit;
        self.push_scope();
        let body = self.stmts(&block.stmts, returns_value)?;
        self.pop_scope();
        if returns_value && !ends_with_return(&body) {
            return err_hint(
                &block,
                format!("`{}` must end with its result", self.fn_name),
                format!(
                    "end the body with an expression of type `{}` (no `;`), or `return v;`",
                    self.ty_name(&self.ret)
                ),
            );
        }
        Ok(body)
    }

    /// A `{ … }` block in its own scope.
    pub fn block(&mut self, block: &syn::Block) -> Res<Vec<Stmt>> {
        self.push_scope();
        let out = self.stmts(&block.stmts, false);
        self.pop_scope();
        out
    }

    fn stmts(&mut self, stmts: &[syn::Stmt], tail_is_result: bool) -> Res<Vec<Stmt>> {
        let mut out = Vec::new();
        for (i, s) in stmts.iter().enumerate() {
            let last = i + 1 == stmts.len();
            match s {
                syn::Stmt::Local(l) => self.local(l, &mut out)?,
                syn::Stmt::Item(item) => {
                    return err_hint(
                        item,
                        "items (fn, struct, use, const, …) cannot be declared inside a kernel",
                        "declare helpers outside as `#[device]` functions, and constants as `const` generic parameters",
                    )
                }
                syn::Stmt::Macro(m) => {
                    return err_hint(
                        m,
                        format!("macros such as `{}!` are not supported in kernels", super::expr::path_text(&m.mac.path)),
                        "kernels cannot print or panic; write results to an output slice",
                    )
                }
                syn::Stmt::Expr(e, semi) => {
                    let line = line_of(e);
                    if semi.is_none() && last && tail_is_result && !is_statement_like(e) {
                        let ret = self.ret.clone();
                        let v = self.expr(e, Some(&ret))?;
                        self.expect_ty(e, &ret, &v.ty)?;
                        out.push(Stmt { line, kind: StmtKind::Return(Some(v)) });
                    } else if semi.is_none() && last && tail_is_result && is_value_if(e) {
                        let ret = self.ret.clone();
                        let v = self.expr(e, Some(&ret))?;
                        out.push(Stmt { line, kind: StmtKind::Return(Some(v)) });
                    } else {
                        if semi.is_none() && !is_statement_like(e) {
                            return err_hint(e, "this value is not used", "end the statement with `;`, or assign the value");
                        }
                        self.stmt_expr(e, &mut out)?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn local(&mut self, l: &syn::Local, out: &mut Vec<Stmt>) -> Res<()> {
        let line = line_of(l);
        let (pat, annotation) = match &l.pat {
            syn::Pat::Type(pt) => (&*pt.pat, Some(&*pt.ty)),
            p => (p, None),
        };
        let init = match &l.init {
            Some(init) => {
                if let Some((_, diverge)) = &init.diverge {
                    return err(diverge, "`let … else` is not supported");
                }
                Some(&*init.expr)
            }
            None => None,
        };
        let (name, mutable) = match pat {
            syn::Pat::Ident(pi) => {
                if pi.by_ref.is_some() || pi.subpat.is_some() {
                    return err(pi, "only plain `let name` bindings are supported");
                }
                (pi.ident.to_string(), pi.mutability.is_some())
            }
            syn::Pat::Wild(_) => {
                let Some(e) = init else {
                    return err(pat, "`let _;` has no value");
                };
                let v = self.expr(
                    e,
                    annotation.map(|t| self.value_type(t)).transpose()?.as_ref(),
                )?;
                out.push(Stmt {
                    line,
                    kind: StmtKind::Expr(v),
                });
                return Ok(());
            }
            _ => {
                return err_hint(
                    pat,
                    "destructuring patterns are not supported",
                    "bind one variable per `let`",
                )
            }
        };
        if self.generic(&name).is_some() {
            return err(
                pat,
                format!("`{name}` is a comptime parameter and cannot be redeclared"),
            );
        }
        // shared::<[T; N]>() and dyn_shared::<T>()
        if let Some(syn::Expr::Call(call)) = init.map(strip) {
            if let Some(kind) = self.shared_decl(call, annotation, &name, mutable)? {
                out.push(Stmt { line, kind });
                return Ok(());
            }
        }
        if let Some(syn::Expr::Repeat(rep)) = init.map(strip) {
            let kind = self.local_array(rep, annotation, &name, mutable)?;
            out.push(Stmt { line, kind });
            return Ok(());
        }
        let declared = annotation.map(|t| self.value_type(t)).transpose()?;
        if let Some(Ty::Array { .. }) = &declared {
            return err_hint(
                annotation.expect("declared"),
                "an array `let` needs an array initialiser",
                "write `let mut a: [f32; N] = [0.0; N];`",
            );
        }
        let value = match init {
            Some(e) => {
                if declared.is_none() {
                    if let Some(super::expr::Untyped::Float) = untyped_literal(e) {
                        return err_hint(
                            e,
                            format!(
                                "cannot tell the type of `{name}` from an unsuffixed float literal"
                            ),
                            format!("write `let {name}: f32 = …` or suffix the literal (`1.0f32`)"),
                        );
                    }
                }
                let v = self.expr(e, declared.as_ref())?;
                if let Some(d) = &declared {
                    self.expect_ty(e, d, &v.ty)?;
                }
                Some(v)
            }
            None => {
                return err_hint(
                    pat,
                    format!("`{name}` must be initialised where it is declared"),
                    format!("give it a value: `let mut {name}: f32 = 0.0;` (Kiln does not track deferred initialisation)"),
                )
            }
        };
        let ty = match (&declared, &value) {
            (Some(t), _) => t.clone(),
            (None, Some(v)) => v.ty.clone(),
            (None, None) => {
                return err_hint(
                    pat,
                    format!("`{name}` needs a type or a value"),
                    format!("write `let {name}: f32;` or `let {name} = …;`"),
                )
            }
        };
        if !matches!(
            ty,
            Ty::Scalar(_) | Ty::Dim3 | Ty::Vector { .. } | Ty::Frag { .. }
        ) {
            return err_hint(
                l,
                format!("a variable cannot hold `{}`", self.ty_name(&ty)),
                "variables hold scalars, vectors and fragments; use slices and arrays through their names",
            );
        }
        if ty == (Ty::Vector { elem: Scalar::Bool }) {
            return err(l, "vectors of bool are not supported");
        }
        let varying =
            self.varying_control > 0 || value.as_ref().is_some_and(|v| self.is_varying(v));
        let cname = self.declare(&name, ty.clone(), mutable, varying);
        out.push(Stmt {
            line,
            kind: StmtKind::Let {
                name: cname,
                ty,
                mutable,
                init: value,
            },
        });
        Ok(())
    }

    fn shared_decl(
        &mut self,
        call: &syn::ExprCall,
        annotation: Option<&syn::Type>,
        name: &str,
        mutable: bool,
    ) -> Res<Option<StmtKind>> {
        let syn::Expr::Path(p) = &*call.func else {
            return Ok(None);
        };
        let Some(seg) = p.path.segments.last() else {
            return Ok(None);
        };
        let fname = seg.ident.to_string();
        if p.path.segments.len() != 1 || !matches!(fname.as_str(), "shared" | "dyn_shared") {
            return Ok(None);
        }
        if let Some(a) = annotation {
            return err_hint(
                a,
                "shared memory takes its type from the turbofish",
                format!("write `let {name} = {fname}::<…>();` without an annotation"),
            );
        }
        if !call.args.is_empty() {
            return err_hint(
                &call.args,
                format!("`{fname}` takes no arguments"),
                "give the type in the turbofish",
            );
        }
        let ty_arg = match &seg.arguments {
            syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
                syn::GenericArgument::Type(t) => t,
                other => return err(other, "expected a type"),
            },
            _ => {
                let example = if fname == "shared" {
                    "shared::<[f32; 256]>()"
                } else {
                    "dyn_shared::<f32>()"
                };
                return err_hint(
                    call,
                    format!("`{fname}` needs its type as a turbofish"),
                    format!("write `{example}`"),
                );
            }
        };
        let _ = mutable; // shared memory is always writable: it is shared by the block
        if fname == "dyn_shared" {
            if self.has_dyn_shared {
                return err_hint(
                    call,
                    "dynamic shared memory is declared twice",
                    "declare `dyn_shared` once per kernel and index it with offsets",
                );
            }
            if self.kind != FnKind::Kernel {
                return err(
                    call,
                    "dynamic shared memory can only be declared in a kernel",
                );
            }
            let elem = self.scalar_type(ty_arg)?;
            self.has_dyn_shared = true;
            let cname = self.declare(name, Ty::DynShared { elem }, true, false);
            return Ok(Some(StmtKind::DynShared { name: cname, elem }));
        }
        let syn::Type::Array(_) = ty_arg else {
            return err_hint(
                ty_arg,
                "a shared array needs an array type",
                "write `shared::<[f32; 256]>()` or `shared::<[[f32; 33]; 32]>()`",
            );
        };
        if self.varying_control > 0 || self.loop_depth > 0 {
            return err_hint(
                call,
                "shared arrays must be declared at the top level of the kernel body",
                "move the declaration out of branches and loops",
            );
        }
        let (elem, dims) = self.array_type(ty_arg)?;
        if elem == Scalar::Bool {
            return err_hint(
                ty_arg,
                "shared arrays of bool are not supported",
                "use u8 or u32",
            );
        }
        check_shared_size(ty_arg, elem, &dims)?;
        if let Some(bytes) = super::syntax_types::shared_bytes(elem, &dims, &|_| None) {
            self.shared_bytes += bytes;
            if self.shared_bytes > super::syntax_types::MAX_STATIC_SHARED_BYTES {
                return err_hint(
                    call,
                    format!("the shared arrays of `{}` take {} bytes together, more than the {} bytes of static shared memory", self.fn_name, self.shared_bytes, super::syntax_types::MAX_STATIC_SHARED_BYTES),
                    "use `dyn_shared::<T>()` and pass the size at launch (up to the device's opt-in limit)",
                );
            }
        }
        let ty = Ty::Array {
            space: Space::Shared,
            elem,
            dims,
        };
        let cname = self.declare(name, ty.clone(), true, false);
        Ok(Some(StmtKind::SharedArray { name: cname, ty }))
    }

    fn local_array(
        &mut self,
        rep: &syn::ExprRepeat,
        annotation: Option<&syn::Type>,
        name: &str,
        mutable: bool,
    ) -> Res<StmtKind> {
        let declared = annotation.map(|t| self.value_type(t)).transpose()?;
        let (elem_expected, dims) = match &declared {
            Some(Ty::Array { elem, dims, .. }) => (Some(Ty::s(*elem)), dims.clone()),
            Some(other) => {
                return err(
                    rep,
                    format!(
                        "`{name}` is declared as `{}` but initialised with an array",
                        self.ty_name(other)
                    ),
                )
            }
            None => (None, Vec::new()),
        };
        // `[[0.0; A]; B]` nests; the innermost is the fill value.
        let mut lens = Vec::new();
        let mut cur = rep;
        let fill_expr = loop {
            lens.push(self.len_expr(&cur.len)?);
            match strip(&cur.expr) {
                syn::Expr::Repeat(inner) => cur = inner,
                other => break other,
            }
        };
        if declared.is_some() && lens != dims {
            return err_hint(
                rep,
                "the array's lengths differ from its annotation",
                "use the same lengths in the type and the initialiser",
            );
        }
        let fill = self.expr(fill_expr, elem_expected.as_ref())?;
        let ty =
            match &fill.ty {
                Ty::Scalar(elem) => Ty::Array {
                    space: Space::Local,
                    elem: *elem,
                    dims: lens,
                },
                Ty::Frag { kind, elem } => Ty::FragArray {
                    kind: *kind,
                    elem: *elem,
                    dims: lens,
                },
                _ => return err_hint(
                    fill_expr,
                    "a register array holds scalars or fragments",
                    "fill it with a number (`[0.0f32; N]`) or a fragment (`[frag_c_zero(); N]`)",
                ),
            };
        let varying = self.is_varying(&fill) || self.varying_control > 0;
        let cname = self.declare(name, ty.clone(), mutable, varying);
        Ok(StmtKind::LocalArray {
            name: cname,
            ty,
            fill,
        })
    }

    fn stmt_expr(&mut self, e: &syn::Expr, out: &mut Vec<Stmt>) -> Res<()> {
        let line = line_of(e);
        let kind = match e {
            syn::Expr::Assign(a) => {
                let (target, value) = self.assignment(&a.left, &a.right, None)?;
                StmtKind::Assign {
                    target,
                    op: None,
                    value,
                }
            }
            syn::Expr::Binary(b) if compound_op(&b.op).is_some() => {
                let op = compound_op(&b.op);
                let (target, value) = self.assignment(&b.left, &b.right, op)?;
                StmtKind::Assign { target, op, value }
            }
            syn::Expr::If(i) => self.if_stmt(i)?,
            syn::Expr::ForLoop(f) => return self.for_loop(f, out),
            syn::Expr::While(w) => {
                if w.label.is_some() {
                    return err_hint(
                        w,
                        "loop labels are not supported",
                        "restructure with a flag variable",
                    );
                }
                self.prescan_loop(&w.body);
                let cond = self.condition(&w.cond)?;
                let varying = self.is_varying(&cond);
                let body = self.loop_body(&w.body, varying)?;
                StmtKind::While { cond, body }
            }
            syn::Expr::Loop(l) => {
                if l.label.is_some() {
                    return err_hint(
                        l,
                        "loop labels are not supported",
                        "restructure with a flag variable",
                    );
                }
                self.prescan_loop(&l.body);
                let body = self.loop_body(&l.body, false)?;
                StmtKind::Loop { body }
            }
            syn::Expr::Break(b) => {
                if b.label.is_some() || b.expr.is_some() {
                    return err(b, "`break` with a label or a value is not supported");
                }
                if self.loop_depth == 0 {
                    return err_hint(
                        b,
                        "`break` outside of a loop",
                        "`break` leaves the innermost `for`, `while` or `loop`",
                    );
                }
                self.note_loop_exit(line);
                StmtKind::Break
            }
            syn::Expr::Continue(c) => {
                if c.label.is_some() {
                    return err(c, "`continue` with a label is not supported");
                }
                if self.loop_depth == 0 {
                    return err_hint(
                        c,
                        "`continue` outside of a loop",
                        "`continue` starts the next iteration of the innermost loop",
                    );
                }
                self.note_loop_exit(line);
                StmtKind::Continue
            }
            syn::Expr::Return(r) => self.return_stmt(r)?,
            syn::Expr::Block(b) => {
                if b.label.is_some() {
                    return err(b, "block labels are not supported");
                }
                StmtKind::Block(self.block(&b.block)?)
            }
            syn::Expr::Unsafe(u) => {
                return err_hint(
                    u,
                    "`unsafe` blocks are not needed in kernels",
                    "remove `unsafe`",
                )
            }
            other => {
                let v = self.expr(other, Some(&Ty::Unit))?;
                StmtKind::Expr(v)
            }
        };
        out.push(Stmt { line, kind });
        Ok(())
    }

    fn assignment(
        &mut self,
        left: &syn::Expr,
        right: &syn::Expr,
        op: Option<crate::ir::BinOp>,
    ) -> Res<(Expr, Expr)> {
        let target = self.place(left)?;
        let value_expected = match op {
            Some(crate::ir::BinOp::Shl | crate::ir::BinOp::Shr) => Ty::s(Scalar::U32),
            _ => target.ty.clone(),
        };
        let value = self.expr(right, Some(&value_expected))?;
        match op {
            Some(crate::ir::BinOp::Shl | crate::ir::BinOp::Shr) => {
                if !target.ty.scalar().is_some_and(Scalar::is_int)
                    || !value.ty.scalar().is_some_and(Scalar::is_int)
                {
                    return err(right, "shifts need integer operands");
                }
            }
            Some(o) => {
                self.expect_ty(right, &target.ty, &value.ty)?;
                let s = target.ty.scalar();
                let ok = match o {
                    crate::ir::BinOp::BitAnd
                    | crate::ir::BinOp::BitOr
                    | crate::ir::BinOp::BitXor => {
                        s.is_some_and(|s| s.is_int() || s == Scalar::Bool)
                    }
                    _ => s.is_some_and(|s| s != Scalar::Bool),
                };
                if !ok {
                    return err(
                        left,
                        format!(
                            "`{}=` is not defined for `{}`",
                            o.c_op(),
                            self.ty_name(&target.ty)
                        ),
                    );
                }
            }
            None => self.expect_ty(right, &target.ty, &value.ty)?,
        }
        // a variable written with a thread-dependent value (or under thread-dependent control) varies
        let varying =
            self.varying_control > 0 || self.is_varying(&value) || self.is_varying(&target);
        // (shared and global memory are judged by the index they are read at instead)
        let per_thread = matches!(target.kind, ExprKind::Var(_))
            || matches!(
                root_expr(&target).ty,
                Ty::Array {
                    space: Space::Local,
                    ..
                } | Ty::Vector { .. }
                    | Ty::Frag { .. }
            );
        if varying && per_thread {
            if let Some(root) = root_var(&target) {
                self.mark_varying(&root);
            }
        }
        Ok((target, value))
    }

    /// An assignable place: a mutable variable, or an element of a writable slice or array.
    pub fn place(&mut self, e: &syn::Expr) -> Res<Expr> {
        match strip(e) {
            syn::Expr::Path(p) if p.path.get_ident().is_some() => {
                let name = p.path.get_ident().expect("checked").to_string();
                if self.const_param(&name).is_some() {
                    return err_hint(
                        e,
                        format!("cannot assign to comptime parameter `{name}`"),
                        "copy it into a variable: `let mut x = NAME;`",
                    );
                }
                let Some(var) = self.lookup(&name).cloned() else {
                    return err(e, format!("cannot find `{name}` in this kernel"));
                };
                if !matches!(
                    var.ty,
                    Ty::Scalar(_) | Ty::Vector { .. } | Ty::Dim3 | Ty::Frag { .. }
                ) {
                    return err_hint(
                        e,
                        format!("cannot assign to `{name}` as a whole"),
                        "assign its elements: `x[i] = v`",
                    );
                }
                if !var.mutable {
                    let hint = if var.is_param {
                        format!("declare the parameter `mut {name}`")
                    } else {
                        format!("declare it `let mut {name}` (a `for` loop variable cannot change: copy it with `let mut j = {name};`)")
                    };
                    return err_hint(
                        e,
                        format!("cannot assign twice to immutable variable `{name}`"),
                        hint,
                    );
                }
                Ok(Expr::new(ExprKind::Var(var.cname), var.ty))
            }
            syn::Expr::Index(ix) => {
                let place = self.index(ix)?;
                let root = root_expr(&place);
                match &root.ty {
                    Ty::Slice { mutable: false, .. } => err_hint(
                        e,
                        format!(
                            "cannot write to `{}`: it is a read-only slice (`{}`)",
                            rust_name_of(&ix.expr),
                            self.ty_name(&root.ty)
                        ),
                        format!(
                            "declare the parameter as `&mut [{}]`",
                            root.ty
                                .elem()
                                .map(|s| self.scalar_name(s))
                                .unwrap_or_default()
                        ),
                    ),
                    Ty::Array { .. }
                    | Ty::FragArray { .. }
                    | Ty::Vector { .. }
                    | Ty::Frag { .. } => {
                        if let ExprKind::Var(c) = &root.kind {
                            let var = self.var_by_cname(c);
                            if !var.as_ref().is_some_and(|v| v.mutable) {
                                let hint = if var.is_some_and(|v| v.is_param) {
                                    "take the parameter as `&mut [E; N]` (or `&mut Shared<[E; N]>`)"
                                } else {
                                    "declare it with `let mut`"
                                };
                                return err_hint(
                                    e,
                                    format!(
                                        "cannot write to `{}`: it is not mutable",
                                        rust_name_of(&ix.expr)
                                    ),
                                    hint,
                                );
                            }
                        }
                        let whole_fragment = matches!(root.ty, Ty::FragArray { .. })
                            && matches!(place.ty, Ty::Frag { .. });
                        if place.ty.scalar().is_none() && !whole_fragment {
                            return err(e, "assign one element at a time");
                        }
                        Ok(place)
                    }
                    _ => {
                        if place.ty.scalar().is_none() {
                            return err(e, "assign one element at a time");
                        }
                        Ok(place)
                    }
                }
            }
            syn::Expr::Field(_) => err(
                e,
                "the fields of thread_idx() and friends cannot be assigned",
            ),
            syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => {
                err_hint(e, "dereferencing is not supported", "index slices instead")
            }
            _ => err_hint(
                e,
                "this cannot be assigned to",
                "assign to a `let mut` variable or to `slice[i]`",
            ),
        }
    }

    fn var_by_cname(&self, cname: &str) -> Option<super::scope::Var> {
        self.all_vars().into_iter().find(|v| v.cname == cname)
    }

    fn if_stmt(&mut self, i: &syn::ExprIf) -> Res<StmtKind> {
        let cond = self.condition(&i.cond)?;
        let varying = self.is_varying(&cond);
        self.varying_control += varying as u32;
        let then = self.block(&i.then_branch);
        let els = match (&then, &i.else_branch) {
            (Err(_), _) | (_, None) => Ok(Vec::new()),
            (Ok(_), Some((_, e))) => match &**e {
                syn::Expr::Block(b) => self.block(&b.block),
                syn::Expr::If(nested) => {
                    let line = line_of(nested);
                    self.if_stmt(nested).map(|k| vec![Stmt { line, kind: k }])
                }
                other => err(other, "expected a block after `else`"),
            },
        };
        self.varying_control -= varying as u32;
        Ok(StmtKind::If {
            cond,
            then: then?,
            els: els?,
        })
    }

    fn loop_body(&mut self, body: &syn::Block, varying: bool) -> Res<Vec<Stmt>> {
        self.loop_depth += 1;
        self.varying_control += varying as u32;
        self.loops.push(super::scope::LoopFrame {
            entry_varying: self.varying_control,
            ..Default::default()
        });
        let out = self.block(body);
        let frame = self.loops.pop().unwrap_or_default();
        self.varying_control -= varying as u32;
        self.loop_depth -= 1;
        let out = out?;
        if let (Some(line), Some((start, end))) = (frame.divergent_exit, frame.barrier) {
            let mut d = crate::diag::Diagnostic::new(
                start,
                format!("`sync_threads()` in a loop that some threads leave or skip ahead in (the thread-dependent `break`/`continue` at line {line}): part of the block would wait forever"),
            )
            .hint("make the `break`/`continue` condition the same for the whole block, or move the barrier out of the loop");
            d.end = end;
            return Err(d);
        }
        Ok(out)
    }

    /// Records a `break`/`continue` taken under a thread-dependent condition.
    fn note_loop_exit(&mut self, line: u32) {
        let varying = self.varying_control;
        if let Some(frame) = self.loops.last_mut() {
            if varying > frame.entry_varying && frame.divergent_exit.is_none() {
                frame.divergent_exit = Some(line);
            }
        }
    }

    fn for_loop(&mut self, f: &syn::ExprForLoop, out: &mut Vec<Stmt>) -> Res<()> {
        let line = line_of(f);
        if f.label.is_some() {
            return err_hint(
                f,
                "loop labels are not supported",
                "restructure with a flag variable",
            );
        }
        let var_name = match &*f.pat {
            syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                if pi.mutability.is_some() {
                    return err_hint(
                        pi,
                        "the loop variable cannot be `mut`",
                        "copy it: `let mut j = i;`",
                    );
                }
                pi.ident.to_string()
            }
            syn::Pat::Wild(_) => "_".to_string(),
            other => {
                return err_hint(
                    other,
                    "a `for` loop binds one name",
                    "write `for i in a..b`",
                )
            }
        };
        // (a..b) or (a..b).step_by(s)
        let (range, step_expr) = match strip(&f.expr) {
            syn::Expr::Range(r) => (r, None),
            syn::Expr::MethodCall(m) if m.method == "step_by" && m.args.len() == 1 => {
                match strip(&m.receiver) {
                    syn::Expr::Range(r) => (r, Some(&m.args[0])),
                    other => {
                        return err_hint(
                            other,
                            "`step_by` must follow a range",
                            "write `for i in (a..b).step_by(s)`",
                        )
                    }
                }
            }
            syn::Expr::MethodCall(m) if m.method == "rev" => {
                return err_hint(
                    m,
                    "`.rev()` is not supported",
                    "count down with `while` instead",
                )
            }
            other => {
                return err_hint(
                    other,
                    "`for` loops run over integer ranges",
                    "write `for i in a..b` or `for i in (a..b).step_by(s)`",
                )
            }
        };
        let (Some(start), Some(end)) = (&range.start, &range.end) else {
            return err_hint(
                range,
                "a `for` range needs both ends",
                "write `a..b` or `a..=b`",
            );
        };
        let inclusive = matches!(range.limits, syn::RangeLimits::Closed(_));
        self.prescan_loop(&f.body);
        if inclusive && step_expr.is_some() {
            return err_hint(
                range,
                "`step_by` on an inclusive range is not supported",
                "use an exclusive range: `(a..b + 1).step_by(s)`",
            );
        }
        let (start_ir, end_ir) =
            if untyped_literal(start).is_some() && untyped_literal(end).is_none() {
                let e = self.expr(end, None)?;
                let s = self.expr(start, Some(&e.ty))?;
                (s, e)
            } else {
                let s = self.expr(start, None)?;
                let e = self.expr(end, Some(&s.ty))?;
                (s, e)
            };
        self.expect_ty(end, &start_ir.ty, &end_ir.ty)?;
        let Some(ty) = start_ir.ty.scalar().filter(|s| s.is_int()) else {
            return err_hint(
                start,
                format!(
                    "`for` ranges are over integers, found `{}`",
                    self.ty_name(&start_ir.ty)
                ),
                "use an integer range and compute floats from it",
            );
        };
        let step_ir = match step_expr {
            Some(s) => {
                let v = self.expr(s, Some(&Ty::s(ty)))?;
                self.expect_ty(s, &Ty::s(ty), &v.ty)?;
                let zero_or_negative = match &v.kind {
                    ExprKind::Int(bits) => *bits == 0 || (ty.is_signed_int() && (*bits as i64) < 0),
                    ExprKind::Unary(crate::ir::UnOp::Neg, _) => true,
                    _ => false,
                };
                if zero_or_negative {
                    return err_hint(
                        s,
                        "`step_by` must be positive",
                        "a step of zero or less never ends the loop; count down with `while`",
                    );
                }
                Some(v)
            }
            None => None,
        };
        let unroll = is_comptime(&start_ir)
            && is_comptime(&end_ir)
            && step_ir.as_ref().is_none_or(is_comptime);
        let varying = self.is_varying(&start_ir)
            || self.is_varying(&end_ir)
            || step_ir.as_ref().is_some_and(|s| self.is_varying(s));
        // Rust evaluates the bounds once; hoist those that could change while the loop runs.
        let mut prelude = Vec::new();
        let end_ir = self.hoist(end_ir, &format!("{var_name}_end"), line, &mut prelude);
        let step_ir =
            step_ir.map(|s| self.hoist(s, &format!("{var_name}_step"), line, &mut prelude));
        self.push_scope();
        let var_c = self.declare(
            &var_name,
            Ty::s(ty),
            false,
            varying || self.varying_control > 0,
        );
        let body = self.loop_body(&f.body, varying);
        self.pop_scope();
        let stmt = Stmt {
            line,
            kind: StmtKind::For {
                var: var_c,
                ty,
                start: start_ir,
                end: end_ir,
                inclusive,
                step: step_ir,
                unroll,
                body: body?,
            },
        };
        if prelude.is_empty() {
            out.push(stmt);
        } else {
            prelude.push(stmt);
            out.push(Stmt {
                line,
                kind: StmtKind::Block(prelude),
            });
        }
        Ok(())
    }

    /// Binds `e` to a fresh immutable variable unless it cannot change while the loop runs
    /// (literals, comptime values, immutable variables, launch indices and arithmetic on them).
    fn hoist(&mut self, e: Expr, name: &str, line: u32, prelude: &mut Vec<Stmt>) -> Expr {
        if self.is_stable(&e) {
            return e;
        }
        let varying = self.is_varying(&e);
        let cname = self.declare_hidden(name, e.ty.clone(), varying);
        let ty = e.ty.clone();
        prelude.push(Stmt {
            line,
            kind: StmtKind::Let {
                name: cname.clone(),
                ty: ty.clone(),
                mutable: false,
                init: Some(e),
            },
        });
        Expr::new(ExprKind::Var(cname), ty)
    }

    /// Whether `e` evaluates to the same value for the whole of a loop.
    fn is_stable(&self, e: &Expr) -> bool {
        use crate::ir::Intrinsic::*;
        let mut stable = true;
        e.walk(&mut |x| match &x.kind {
            ExprKind::Var(c) => stable &= self.var_by_cname(c).is_some_and(|v| !v.mutable),
            ExprKind::Index(..) | ExprKind::Call { .. } => stable = false,
            ExprKind::Intrinsic(i, _) => {
                stable &= matches!(
                    i,
                    ThreadIdx
                        | BlockIdx
                        | BlockDim
                        | GridDim
                        | LaneId
                        | WarpId
                        | WarpSize
                        | Lanes
                        | Len
                )
            }
            _ => {}
        });
        stable
    }

    fn return_stmt(&mut self, r: &syn::ExprReturn) -> Res<StmtKind> {
        let value = match (&r.expr, self.ret.clone()) {
            (None, Ty::Unit) => None,
            (Some(e), Ty::Unit) => {
                let hint = if self.kind == FnKind::Kernel {
                    "write results through a `&mut [T]` parameter"
                } else {
                    "declare the result type: `-> f32`"
                };
                return err_hint(e, format!("`{}` returns nothing", self.fn_name), hint);
            }
            (None, ret) => {
                return err(
                    r,
                    format!("`{}` must return a `{}`", self.fn_name, self.ty_name(&ret)),
                )
            }
            (Some(e), ret) => {
                let v = self.expr(e, Some(&ret))?;
                self.expect_ty(e, &ret, &v.ty)?;
                Some(v)
            }
        };
        if self.varying_control > 0 && self.divergent_return.is_none() {
            self.divergent_return = Some(line_of(r));
        }
        Ok(StmtKind::Return(value))
    }
}

/// An `if` chain whose every branch is a single expression (an `if` used as a value).
fn is_value_if(e: &syn::Expr) -> bool {
    let syn::Expr::If(i) = strip(e) else {
        return false;
    };
    let single = |b: &syn::Block| matches!(b.stmts.as_slice(), [syn::Stmt::Expr(_, None)]);
    single(&i.then_branch)
        && match &i.else_branch {
            Some((_, e)) => match &**e {
                syn::Expr::Block(b) => single(&b.block),
                nested @ syn::Expr::If(_) => is_value_if(nested),
                _ => false,
            },
            None => false,
        }
}

/// Whether every path through `body` ends in `return`.
fn ends_with_return(body: &[Stmt]) -> bool {
    match body.last().map(|s| &s.kind) {
        Some(StmtKind::Return(_)) => true,
        Some(StmtKind::If { then, els, .. }) => ends_with_return(then) && ends_with_return(els),
        Some(StmtKind::Block(b)) => ends_with_return(b),
        _ => false,
    }
}

/// Statements that need no `;` (blocks, `if`, loops).
fn is_statement_like(e: &syn::Expr) -> bool {
    matches!(
        e,
        syn::Expr::If(_)
            | syn::Expr::ForLoop(_)
            | syn::Expr::While(_)
            | syn::Expr::Loop(_)
            | syn::Expr::Block(_)
            | syn::Expr::Unsafe(_)
    )
}

/// The variable at the root of a place (`x` in `x[i][j]`).
fn root_var(e: &Expr) -> Option<String> {
    match &root_expr(e).kind {
        ExprKind::Var(c) => Some(c.clone()),
        _ => None,
    }
}

fn root_expr(e: &Expr) -> &Expr {
    match &e.kind {
        ExprKind::Index(base, _) => root_expr(base),
        _ => e,
    }
}

fn rust_name_of(e: &syn::Expr) -> String {
    quote::ToTokens::to_token_stream(e)
        .to_string()
        .replace(' ', "")
}
