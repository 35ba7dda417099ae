//! Plain-Rust (float64) references for CLO's head-wise cache: the hit test of a GQA group
//! and the slot plan of a miss. The checks compare the kernels against these, step by step.

/// Whether a GQA group misses: any of its query heads `g` (`q[g·D ..]`, label
/// `labels[g·D ..]`, threshold `tau[g]`) has `cos(q, label) < τ` or a zero label. Also
/// returns the smallest `|cos − τ|` over the group, so a check can tell a rounding tie
/// (where f32 and f64 may decide differently) from a real mismatch.
pub fn group_misses(q: &[f64], labels: &[f64], tau: &[f64], dim: usize) -> (bool, f64) {
    let mut miss = false;
    let mut margin = f64::INFINITY;
    for (g, &t) in tau.iter().enumerate() {
        let (x, c) = (&q[g * dim..][..dim], &labels[g * dim..][..dim]);
        let dot: f64 = x.iter().zip(c).map(|(a, b)| a * b).sum();
        let nx: f64 = x.iter().map(|a| a * a).sum::<f64>().sqrt();
        let nc: f64 = c.iter().map(|a| a * a).sum::<f64>().sqrt();
        if nc == 0.0 || nx == 0.0 {
            miss = true;
            continue;
        }
        let cos = dot / (nx * nc);
        margin = margin.min((cos - t).abs());
        miss |= cos < t;
    }
    (miss, margin)
}

/// The slots after a miss: `slots[p]` is the token in slot `p` (`u32::MAX` for none),
/// `selected` the new selection (distinct tokens). A slot whose token is still selected
/// keeps it; the freed slots, in position order, take the selected tokens that are in no
/// slot, in selection order. Returns the new slots and the fetches `(token, slot)` in order.
pub fn plan(slots: &[u32], selected: &[u32]) -> (Vec<u32>, Vec<(u32, u32)>) {
    let chosen: std::collections::HashSet<u32> = selected.iter().copied().collect();
    let held: std::collections::HashSet<u32> = slots.iter().copied().collect();
    let free = (0..slots.len() as u32).filter(|&p| !chosen.contains(&slots[p as usize]));
    let need = selected.iter().copied().filter(|t| !held.contains(t));
    let fetches: Vec<(u32, u32)> = need.zip(free).collect();
    let mut next = slots.to_vec();
    for &(tok, pos) in &fetches {
        next[pos as usize] = tok;
    }
    (next, fetches)
}
