//! AdaCluster in plain Rust (float64): what each kernel computes, for the checks and the
//! fidelity report. Arrays are per problem: `x` `[n, d]` row-major.

/// Every point's best centroid by `x·c + bias` (ties: the lower) and its distance — `1 −
/// cos` when `spherical` (unit `cent`, zero bias), else the squared Euclidean distance
/// `‖x‖² − 2·best` (with `bias = −‖c‖²/2`). Also returns each point's margin: best score
/// minus the second best (a near tie may go either way in f32).
pub fn assign(
    x: &[f64],
    cent: &[f64],
    bias: &[f64],
    d: usize,
    spherical: bool,
) -> (Vec<u32>, Vec<f64>, Vec<f64>) {
    let k = bias.len();
    let mut ids = Vec::new();
    let mut dist = Vec::new();
    let mut margin = Vec::new();
    for row in x.chunks(d) {
        let (mut best, mut second, mut arg) = (f64::NEG_INFINITY, f64::NEG_INFINITY, 0);
        for c in 0..k {
            let s = dot(row, &cent[c * d..][..d]) + bias[c];
            if s > best {
                second = best;
                best = s;
                arg = c;
            } else if s > second {
                second = s;
            }
        }
        let sq = dot(row, row);
        ids.push(arg as u32);
        dist.push(if spherical {
            if sq > 0.0 {
                1.0 - best / sq.sqrt()
            } else {
                1.0
            }
        } else {
            (sq - 2.0 * best).max(0.0)
        });
        margin.push(best - second);
    }
    (ids, dist, margin)
}

/// The stable counting sort by cluster: `(order, start)` with `order[pos]` the point at
/// sorted position `pos` and cluster `c` at positions `start[c] .. start[c + 1]`.
pub fn sort(ids: &[u32], k: usize) -> (Vec<u32>, Vec<u32>) {
    let mut start = vec![0u32; k + 1];
    for &c in ids {
        start[c as usize + 1] += 1;
    }
    for c in 0..k {
        start[c + 1] += start[c];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; ids.len()];
    for (i, &c) in ids.iter().enumerate() {
        order[next[c as usize] as usize] = i as u32;
        next[c as usize] += 1;
    }
    (order, start)
}

/// The mean of every non-empty cluster (`None` for an empty one).
pub fn means(x: &[f64], d: usize, order: &[u32], start: &[u32]) -> Vec<Option<Vec<f64>>> {
    start
        .windows(2)
        .map(|w| {
            (w[1] > w[0]).then(|| {
                let mut m = vec![0.0; d];
                for &i in &order[w[0] as usize..w[1] as usize] {
                    for (a, b) in m.iter_mut().zip(&x[i as usize * d..][..d]) {
                        *a += b;
                    }
                }
                m.iter_mut().for_each(|a| *a /= (w[1] - w[0]) as f64);
                m
            })
        })
        .collect()
}

/// The key clusters a query cluster keeps, ascending, and the probability of each key
/// cluster: softmax over non-empty key clusters of `scale·q̄·k̄_j + ln n_j`, then the fewest
/// most probable reaching `top_p` of the mass, at most `cap` (`top_p ≥ 1`: top-`cap`).
pub fn select(
    q_mean: &[f64],
    k_means: &[Option<Vec<f64>>],
    k_sizes: &[u32],
    scale: f64,
    top_p: f64,
    cap: usize,
) -> (Vec<u32>, Vec<f64>) {
    let logits: Vec<f64> = k_means
        .iter()
        .zip(k_sizes)
        .map(|(m, &n)| match m {
            Some(m) if n > 0 => scale * dot(q_mean, m) + (n as f64).ln(),
            _ => f64::NEG_INFINITY,
        })
        .collect();
    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
    let z: f64 = e.iter().sum();
    let prob: Vec<f64> = e.iter().map(|v| v / z).collect();
    let mut by: Vec<usize> = (0..prob.len()).filter(|&j| k_sizes[j] > 0).collect();
    by.sort_by(|&a, &b| prob[b].total_cmp(&prob[a]).then(a.cmp(&b)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for j in by {
        if kept.len() == cap || (top_p < 1.0 && mass >= top_p) {
            break;
        }
        mass += prob[j];
        kept.push(j as u32);
    }
    kept.sort_unstable();
    (kept, prob)
}

/// Attention of query row `qi` over the listed keys: `(o, lse)`.
pub fn attend(
    qi: &[f64],
    keys: &[u32],
    k: &[f64],
    v: &[f64],
    d: usize,
    scale: f64,
) -> (Vec<f64>, f64) {
    let logits: Vec<f64> = keys
        .iter()
        .map(|&j| scale * dot(qi, &k[j as usize * d..][..d]))
        .collect();
    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut o = vec![0.0; d];
    let mut z = 0.0;
    for (&j, l) in keys.iter().zip(&logits) {
        let w = (l - top).exp();
        z += w;
        for (a, b) in o.iter_mut().zip(&v[j as usize * d..][..d]) {
            *a += w * b;
        }
    }
    if z == 0.0 {
        return (o, f64::NEG_INFINITY);
    }
    o.iter_mut().for_each(|a| *a /= z);
    (o, top + z.ln())
}

/// The keys a query cluster sees: the tokens of its kept key clusters' ranges of `k_order`.
pub fn kept_keys(kept: &[u32], k_order: &[u32], k_start: &[u32]) -> Vec<u32> {
    kept.iter()
        .flat_map(|&c| {
            k_order[k_start[c as usize] as usize..k_start[c as usize + 1] as usize]
                .iter()
                .copied()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
