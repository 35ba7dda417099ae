//! Which values differ between the threads of a block, and which are known at compile
//! time. The first decides whether a barrier can be reached by only part of a block; the
//! second decides which loops unroll and which lengths are comptime.

use super::Checker;
use crate::ir::{Expr, ExprKind, Intrinsic};

impl Checker {
    /// True when `e` may evaluate differently in different threads of a block.
    ///
    /// Conservative towards "uniform": a device function's result counts as varying only
    /// when an argument does, and memory read at a uniform index counts as uniform.
    pub fn is_varying(&self, e: &Expr) -> bool {
        let mut varying = false;
        e.walk(&mut |x| match &x.kind {
            ExprKind::Var(c) if self.is_varying_var(c) => varying = true,
            ExprKind::Intrinsic(i, _) if varies_per_thread(*i) => varying = true,
            _ => {}
        });
        varying
    }
}

fn varies_per_thread(i: Intrinsic) -> bool {
    use Intrinsic::*;
    matches!(
        i,
        ThreadIdx
            | LaneId
            | WarpId
            | ShflSync
            | ShflXorSync
            | ShflDownSync
            | ShflUpSync
            | BallotSync
            | AllSync
            | AnySync
            | ActiveMask
    ) || i.is_atomic()
        || i.is_warp_matrix()
}

/// True when `e` is known at compile time (literals, comptime parameters, type constants
/// and arithmetic on them).
pub fn is_comptime(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Int(_)
        | ExprKind::Float(_)
        | ExprKind::Bool(_)
        | ExprKind::ConstParam(_)
        | ExprKind::TypeConst(_)
        | ExprKind::SizeOf(_) => true,
        ExprKind::Unary(_, a) | ExprKind::Cast(a) => is_comptime(a),
        ExprKind::Binary(_, a, b) => is_comptime(a) && is_comptime(b),
        ExprKind::Intrinsic(Intrinsic::WarpSize | Intrinsic::Lanes, _) => true,
        _ => false,
    }
}
