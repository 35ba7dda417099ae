//! Before a loop body is checked: which variables it makes thread-dependent. A single pass
//! would see `while k < 10 { sync_threads(); k += thread_idx().x; }` with `k` still uniform;
//! scanning the body's assignments until nothing changes marks `k` first.

use syn::visit::Visit;

use super::Checker;

/// Whether an expression mentions a thread-dependent built-in or variable.
struct Mentions<'a> {
    checker: &'a Checker,
    varying: bool,
}

impl<'ast> Visit<'ast> for Mentions<'_> {
    fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
        if let syn::Expr::Path(p) = &*c.func {
            if p.path.get_ident().is_some_and(|i| {
                super::builtins::THREAD_VARYING_FUNCTIONS.contains(&i.to_string().as_str())
                    || i.to_string().starts_with("ldmatrix")
                    || i == "mma"
            }) {
                self.varying = true;
            }
        }
        syn::visit::visit_expr_call(self, c);
    }

    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        if let Some(id) = p.path.get_ident() {
            if self
                .checker
                .lookup(&id.to_string())
                .is_some_and(|v| v.varying)
            {
                self.varying = true;
            }
        }
    }
}

/// The assignments of a body: (assigned variable, value).
struct Assignments<'ast> {
    found: Vec<(String, &'ast syn::Expr)>,
}

impl<'ast> Visit<'ast> for Assignments<'ast> {
    fn visit_expr_assign(&mut self, a: &'ast syn::ExprAssign) {
        if let syn::Expr::Path(p) = &*a.left {
            if let Some(id) = p.path.get_ident() {
                self.found.push((id.to_string(), &a.right));
            }
        }
        syn::visit::visit_expr_assign(self, a);
    }

    fn visit_expr_binary(&mut self, b: &'ast syn::ExprBinary) {
        if super::expr::compound_op(&b.op).is_some() {
            if let syn::Expr::Path(p) = &*b.left {
                if let Some(id) = p.path.get_ident() {
                    self.found.push((id.to_string(), &b.right));
                }
            }
        }
        syn::visit::visit_expr_binary(self, b);
    }
}

impl Checker {
    /// Marks the variables that `body`'s assignments make thread-dependent, until no more change.
    pub fn prescan_loop(&mut self, body: &syn::Block) {
        let mut assignments = Assignments { found: Vec::new() };
        assignments.visit_block(body);
        loop {
            let mut changed = false;
            for (name, value) in &assignments.found {
                let Some(var) = self.lookup(name) else {
                    continue;
                };
                if var.varying {
                    continue;
                }
                let mut m = Mentions {
                    checker: self,
                    varying: false,
                };
                m.visit_expr(value);
                if m.varying {
                    let cname = var.cname.clone();
                    self.mark_varying(&cname);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
}
