//! Expert parallelism: [`ParallelMoeLayer`], one MoE layer (BigMac's DCCA or the CDAC peer)
//! spread over the ranks of a [`CommGroup`], each rank holding `E / N` experts and its own
//! tokens.
//!
//! Per call, on every rank `s` (all ranks driven from one host thread, see
//! [`kiln::comm`] for why one process):
//!
//! 1. **gate** on the full-width tokens (the router is replicated);
//! 2. BigMac only: **descend** `x·W↓` (`h → r·h`, replicated);
//! 3. **permute**: the stable sort of the routing slots by expert — experts of rank `d` are
//!    `d·E/N .. (d+1)·E/N`, so this also sorts by destination rank — and the gather of the
//!    tokens into that order (AdaCluster's `permute_rows`);
//! 4. **counts**: a fixed-size all-to-all of `E/N + 1` values per pair — each destination's
//!    window of the sort's expert offsets — then the host reads the windows it received and
//!    plans the variable all-to-all and each rank's grouped GEMM;
//! 5. **dispatch**: the all-to-all of the tokens at the dispatch width (`r·h` for BigMac, `h`
//!    for CDAC), grouped `ncclSend`/`ncclRecv`;
//! 6. **experts** on the receiving rank: both grouped GEMMs over its local experts (the first
//!    gathers the received rows into expert order), then the rows back into source order;
//! 7. **return**: the all-to-all back, the reverse of step 5;
//! 8. **combine** (gate-weighted, in slot order) and, for BigMac, **ascend** `·W↑`.
//!
//! Every launch is one of [`super::layer::MoeLayer`]'s (through the shared stages), so with one
//! rank the output equals `MoeLayer`'s bit for bit, and with N ranks it equals `MoeLayer` on the
//! concatenated tokens (each token's rows meet the same weights in the same order; the tests
//! check both on the emulator). The bytes each all-to-all moved are read from the group's
//! counters ([`LayerTraffic`]), so BigMac's ×r is measured, not computed.
//!
//! Limits: the host waits for the count exchange before it can size the token all-to-all
//! (NCCL takes counts on the host), and uploads each receiving rank's two row lists (4 bytes
//! per received row each); the receive buffers grow to the largest call seen and are kept.

use std::sync::Arc;

use super::kernels::TILE;
use super::layer::{refuse, validate, MoeShape, MoeWeights, Routing, Structure};
use super::stages::{RouteScratch, Stages};
use crate::verify::Real;
use kiln::comm::{CommGroup, CommStats, Transfer};
use kiln::{Device, DeviceBuffer, Event, RuntimeError};

/// What the all-to-alls of the last call moved, from the group's byte counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerTraffic {
    /// The count exchange (step 4).
    pub counts: CommStats,
    /// The tokens to their experts (step 5).
    pub dispatch: CommStats,
    /// The expert outputs back (step 7).
    pub combine: CommStats,
    /// Routed rows from rank `s` to rank `d`, `rows[s][d]`.
    pub rows: Vec<Vec<usize>>,
}

impl LayerTraffic {
    /// Bytes of tokens that crossed between different ranks, both directions.
    pub fn token_bytes_to_peers(&self) -> u64 {
        self.dispatch.p2p_bytes_to_peers + self.combine.p2p_bytes_to_peers
    }

    /// Bytes of tokens handed to the all-to-alls, both directions, local copies included.
    pub fn token_bytes(&self) -> u64 {
        self.token_bytes_to_peers()
            + self.dispatch.p2p_bytes_to_self
            + self.combine.p2p_bytes_to_self
    }
}

/// Where an expert-parallel call's time goes, ms: per stage the longest of the ranks (each
/// rank's span between CUDA events recorded at the stage boundaries; the host clock on the
/// emulator). Descend and ascend are 0 for CDAC.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ParallelStageTimes {
    /// Routing.
    pub gate_ms: f64,
    /// BigMac's `x·W↓`.
    pub descend_ms: f64,
    /// The sort by expert (= by destination rank) and the gather into that order.
    pub permute_ms: f64,
    /// The count exchange, the host's plan and the upload of the row lists.
    pub counts_ms: f64,
    /// The token all-to-all to the experts.
    pub dispatch_ms: f64,
    /// Both expert projections and the reorder back to source order.
    pub experts_ms: f64,
    /// The all-to-all back.
    pub return_ms: f64,
    /// The gate-weighted combine.
    pub combine_ms: f64,
    /// BigMac's `·W↑`.
    pub ascend_ms: f64,
}

impl ParallelStageTimes {
    /// The communication stages together: counts, dispatch and return.
    pub fn all_to_all_ms(&self) -> f64 {
        self.counts_ms + self.dispatch_ms + self.return_ms
    }

    /// Every stage together.
    pub fn total_ms(&self) -> f64 {
        self.gate_ms
            + self.descend_ms
            + self.permute_ms
            + self.all_to_all_ms()
            + self.experts_ms
            + self.combine_ms
            + self.ascend_ms
    }
}

/// One MoE layer spread over the ranks of a [`CommGroup`]: rank `r` holds experts
/// `r·E/N .. (r+1)·E/N` (and a copy of the router and, for BigMac, of `W↓`/`W↑`), takes its
/// own tokens and returns their outputs. See the module documentation for the steps.
pub struct ParallelMoeLayer<T: Real> {
    group: Arc<CommGroup>,
    structure: Structure,
    shape: MoeShape,
    /// Renormalise the chosen experts' weights to sum to 1 (as [`super::layer::MoeLayer`]).
    pub normalise: bool,
    ranks: Vec<Rank<T>>,
    traffic: LayerTraffic,
}

struct Rank<T: Real> {
    stages: Stages<T>,
    bias: Option<DeviceBuffer<f32>>,
    gate: DeviceBuffer<T>,
    up: DeviceBuffer<T>,
    down: DeviceBuffer<T>,
    descend: DeviceBuffer<T>,
    ascend: DeviceBuffer<T>,
    scratch: Option<RankScratch<T>>,
}

/// One rank's buffers, kept between calls: the sending side sized by its tokens, the receiving
/// side grown to the most rows it has received.
struct RankScratch<T: Real> {
    route: RouteScratch<T>,
    send: DeviceBuffer<T>,
    windows: DeviceBuffer<u32>,
    ret: DeviceBuffer<T>,
    recv: Received<T>,
}

/// The receiving side of a rank: rows in source order (`recv`, `back`), in expert order
/// (`y1`, `y2`), and the plan of the current call.
struct Received<T: Real> {
    capacity: usize,
    recv: DeviceBuffer<T>,
    y1: DeviceBuffer<T>,
    y2: DeviceBuffer<T>,
    back: DeviceBuffer<T>,
    /// Expert-order position → received row.
    by_expert: DeviceBuffer<u32>,
    /// Received row → expert-order position.
    by_source: DeviceBuffer<u32>,
    start: DeviceBuffer<u32>,
    blocks: DeviceBuffer<u32>,
    rows: u32,
}

impl<T: Real> Received<T> {
    fn new(dev: &Device, capacity: usize, (w, mid): (usize, usize)) -> Result<Self, RuntimeError> {
        let c = capacity.max(1);
        Ok(Received {
            capacity,
            recv: dev.zeros(c * w)?,
            y1: dev.zeros(c * mid)?,
            y2: dev.zeros(c * w)?,
            back: dev.zeros(c * w)?,
            by_expert: dev.zeros(1)?,
            by_source: dev.zeros(1)?,
            start: dev.zeros(1)?,
            blocks: dev.zeros(1)?,
            rows: 0,
        })
    }
}

/// The host's plan for one receiving rank, from the offset windows it received.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Rows from each source.
    from: Vec<usize>,
    /// Expert-order position → received row.
    by_expert: Vec<u32>,
    /// Received row → expert-order position.
    by_source: Vec<u32>,
    /// Where each local expert's rows start, `[E/N + 1]`.
    start: Vec<u32>,
    /// The prefix sums of each local expert's 128-row pieces, `[E/N + 1]`.
    blocks: Vec<u32>,
}

/// Plans a receiving rank's rows from `windows[s]` (`E/N + 1` offsets of source `s`'s sort:
/// where each of this rank's experts starts in `s`'s send order, and where the last ends).
/// Refuses windows that are not non-decreasing.
fn plan(windows: &[Vec<u32>]) -> Result<Plan, RuntimeError> {
    let local = windows.first().map_or(0, |w| w.len().saturating_sub(1));
    for (s, w) in windows.iter().enumerate() {
        if w.len() != local + 1 || w.windows(2).any(|p| p[1] < p[0]) {
            return Err(refuse(format!(
                "source {s} sent the expert offsets {w:?}: {} non-decreasing values expected",
                local + 1
            )));
        }
    }
    let from: Vec<usize> = windows.iter().map(|w| (w[local] - w[0]) as usize).collect();
    let mut base = vec![0usize; windows.len()];
    for s in 1..windows.len() {
        base[s] = base[s - 1] + from[s - 1];
    }
    let total: usize = from.iter().sum();
    let mut by_expert = Vec::with_capacity(total);
    let mut start = vec![0u32];
    let mut blocks = vec![0u32];
    for l in 0..local {
        let before = by_expert.len();
        for (s, w) in windows.iter().enumerate() {
            let first = base[s] + (w[l] - w[0]) as usize;
            by_expert.extend((first..first + (w[l + 1] - w[l]) as usize).map(|r| r as u32));
        }
        let size = (by_expert.len() - before) as u32;
        start.push(by_expert.len() as u32);
        blocks.push(blocks[l] + size.div_ceil(TILE));
    }
    let mut by_source = vec![0u32; total];
    for (pos, &row) in by_expert.iter().enumerate() {
        by_source[row as usize] = pos as u32;
    }
    Ok(Plan {
        from,
        by_expert,
        by_source,
        start,
        blocks,
    })
}

impl<T: Real> ParallelMoeLayer<T> {
    /// A layer of `structure` and `shape` over `group`, from the whole layer's `weights` (as
    /// for [`super::layer::MoeLayer::new`]; each rank uploads its experts' share) and the
    /// optional balancing `bias` `[E]`. Refused when the experts do not divide evenly over the
    /// ranks, and for everything `MoeLayer::new` refuses.
    pub fn new(
        group: Arc<CommGroup>,
        structure: Structure,
        shape: MoeShape,
        weights: &MoeWeights<T>,
        bias: Option<&[f32]>,
    ) -> Result<Self, RuntimeError> {
        validate(structure, shape, weights, bias)?;
        let n = group.ranks() as u32;
        if !shape.experts.is_multiple_of(n) {
            return Err(refuse(format!(
                "{} experts over {n} ranks: the experts must divide evenly over the ranks",
                shape.experts
            )));
        }
        let local = (shape.experts / n) as usize;
        let (inw, mid) = shape.expert_dims(structure);
        let per_expert = inw as usize * mid as usize;
        let mut ranks = Vec::with_capacity(n as usize);
        for (r, dev) in group.devices().iter().enumerate() {
            let up = |v: &[T]| {
                if v.is_empty() {
                    dev.zeros::<T>(1)
                } else {
                    dev.upload(v)
                }
            };
            let mine = |v: &[T]| up(&v[r * local * per_expert..][..local * per_expert]);
            ranks.push(Rank {
                stages: Stages::new(dev, shape.top_k)?,
                bias: bias.map(|b| dev.upload(b)).transpose()?,
                gate: up(&weights.gate)?,
                up: mine(&weights.up)?,
                down: mine(&weights.down)?,
                descend: up(&weights.descend)?,
                ascend: up(&weights.ascend)?,
                scratch: None,
            });
        }
        Ok(ParallelMoeLayer {
            group,
            structure,
            shape,
            normalise: true,
            ranks,
            traffic: LayerTraffic::default(),
        })
    }

    /// The structure.
    pub fn structure(&self) -> Structure {
        self.structure
    }

    /// The sizes.
    pub fn shape(&self) -> MoeShape {
        self.shape
    }

    /// The communicator.
    pub fn group(&self) -> &Arc<CommGroup> {
        &self.group
    }

    /// What the all-to-alls of the last call moved.
    pub fn traffic(&self) -> &LayerTraffic {
        &self.traffic
    }

    /// The routing of rank `r`'s tokens in the last call (global expert ids).
    pub fn routing(&self, r: usize) -> Option<&Routing> {
        self.ranks
            .get(r)?
            .scratch
            .as_ref()
            .map(|s| &s.route.routing)
    }

    /// The layer on every rank's tokens: `xs[r]` `[tokens_r, h]` on rank `r`'s device, into
    /// `ys[r]` (the same shape). Every rank needs at least one token; ranks may hold different
    /// numbers of tokens. The buffers of a call are kept for the next one.
    pub fn forward(
        &mut self,
        xs: &[&DeviceBuffer<T>],
        ys: &mut [&mut DeviceBuffer<T>],
    ) -> Result<(), RuntimeError> {
        self.prepare(xs, ys)?;
        self.run(xs, ys, &mut None)
    }

    /// [`ParallelMoeLayer::forward`] with events at the stage boundaries, returning where the
    /// time went (the events make it a little slower than an untimed call).
    pub fn forward_timed(
        &mut self,
        xs: &[&DeviceBuffer<T>],
        ys: &mut [&mut DeviceBuffer<T>],
    ) -> Result<ParallelStageTimes, RuntimeError> {
        self.prepare(xs, ys)?;
        let mut marks = Some((0..self.ranks.len()).map(|_| Vec::new()).collect());
        self.mark(&mut marks)?;
        self.run(xs, ys, &mut marks)?;
        let m = marks.expect("kept");
        let stage = |i: usize| -> Result<f64, RuntimeError> {
            let mut worst = 0.0f64;
            for r in &m {
                worst = worst.max(r[i].elapsed_ms(&r[i + 1])?);
            }
            Ok(worst)
        };
        Ok(ParallelStageTimes {
            gate_ms: stage(0)?,
            descend_ms: stage(1)?,
            permute_ms: stage(2)?,
            counts_ms: stage(3)?,
            dispatch_ms: stage(4)?,
            experts_ms: stage(5)?,
            return_ms: stage(6)?,
            combine_ms: stage(7)?,
            ascend_ms: stage(8)?,
        })
    }

    fn mark(&self, marks: &mut Option<Vec<Vec<Event>>>) -> Result<(), RuntimeError> {
        if let Some(m) = marks {
            for (r, rank) in self.ranks.iter().enumerate() {
                m[r].push(rank.stages.device().default_stream().record_timed()?);
            }
        }
        Ok(())
    }

    /// Checks the inputs and sizes every rank's sending-side buffers for its token count.
    fn prepare(
        &mut self,
        xs: &[&DeviceBuffer<T>],
        ys: &[&mut DeviceBuffer<T>],
    ) -> Result<(), RuntimeError> {
        let n = self.ranks.len();
        let s = self.shape;
        if xs.len() != n || ys.len() != n {
            return Err(refuse(format!(
                "{} inputs and {} outputs for {n} ranks: one of each per rank",
                xs.len(),
                ys.len()
            )));
        }
        let h = s.hidden as usize;
        let mut total = 0usize;
        for r in 0..n {
            if xs[r].is_empty() || !xs[r].len().is_multiple_of(h) || ys[r].len() != xs[r].len() {
                return Err(refuse(format!(
                    "rank {r}: x holds {} elements and y {}: both must be the same positive number of rows of {h}",
                    xs[r].len(),
                    ys[r].len()
                )));
            }
            total += xs[r].len() / h;
        }
        let (inw, mid) = s.expert_dims(self.structure);
        let widest = inw.max(mid).max(s.hidden) as usize;
        // a rank may receive every routed row of every rank
        if total * s.top_k as usize * widest >= 1 << 32 {
            return Err(refuse(format!(
                "{total} tokens over all ranks × top-{} × width {widest}: the kernels index with 32 bits: split the batch",
                s.top_k
            )));
        }
        let local = (s.experts as usize) / n;
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            let tokens = (xs[r].len() / h) as u32;
            if rank
                .scratch
                .as_ref()
                .is_none_or(|sc| sc.route.tokens != tokens)
            {
                let keep = rank.scratch.take().map(|sc| sc.recv);
                let dev = rank.stages.device().clone();
                rank.scratch = Some(RankScratch::new(
                    &dev,
                    self.structure,
                    s,
                    tokens,
                    (n, local),
                    keep,
                )?);
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        xs: &[&DeviceBuffer<T>],
        ys: &mut [&mut DeviceBuffer<T>],
        marks: &mut Option<Vec<Vec<Event>>>,
    ) -> Result<(), RuntimeError> {
        let s = self.shape;
        let n = self.ranks.len();
        let e = s.experts;
        let local = (e as usize) / n;
        let w = s.dispatch_width(self.structure);
        let (inw, mid) = s.expert_dims(self.structure);
        let bigmac = self.structure == Structure::BigMac;
        let normalise = self.normalise;
        // 1. gate
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            let sc = rank.scratch.as_mut().expect("sized by prepare");
            let rt = &mut sc.route.routing;
            rank.stages.gate(
                xs[r],
                &rank.gate,
                rank.bias.as_ref(),
                &mut rt.ids,
                &mut rt.weights,
                (sc.route.tokens, s.hidden, e),
                normalise,
            )?;
        }
        self.mark(marks)?;
        // 2. descend (BigMac)
        if bigmac {
            for (r, rank) in self.ranks.iter_mut().enumerate() {
                let sc = rank.scratch.as_mut().expect("sized");
                rank.stages.gemm(
                    xs[r],
                    None,
                    &rank.descend,
                    (&sc.route.one_start, &sc.route.one_blocks, 1),
                    &mut sc.route.entry,
                    sc.route.tokens,
                    (s.hidden, s.low),
                    false,
                )?;
            }
        }
        self.mark(marks)?;
        // 3. permute: sort by expert (= by destination rank), gather into that order
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            let sc = rank.scratch.as_mut().expect("sized");
            let slots = sc.route.tokens * s.top_k;
            rank.stages.sort(sc.route.sort_buffers(), slots, e)?;
            let entry = if bigmac { &sc.route.entry } else { xs[r] };
            rank.stages
                .permute(entry, &sc.route.rows, &mut sc.send, slots, w)?;
        }
        self.mark(marks)?;
        // 4. counts: each destination's window of every source's expert offsets
        let before = self.group.stats();
        let mut windows = Vec::with_capacity(n * n);
        for from in 0..n {
            for to in 0..n {
                windows.push(Transfer {
                    from,
                    to,
                    send_offset: to * local,
                    recv_offset: from * (local + 1),
                    count: local + 1,
                });
            }
        }
        {
            let (starts, mut got): (Vec<&DeviceBuffer<u32>>, Vec<&mut DeviceBuffer<u32>>) = self
                .ranks
                .iter_mut()
                .map(|rk| {
                    let sc = rk.scratch.as_mut().expect("sized");
                    (&sc.route.routing.start, &mut sc.windows)
                })
                .unzip();
            self.group.send_recv(&starts, &mut got, &windows)?;
        }
        let after_counts = self.group.stats();
        let mut rows = vec![vec![0usize; n]; n];
        for (d, rank) in self.ranks.iter_mut().enumerate() {
            let dev = rank.stages.device().clone();
            let sc = rank.scratch.as_mut().expect("sized");
            let flat = dev.download(&sc.windows)?;
            let win: Vec<Vec<u32>> = flat.chunks(local + 1).map(<[u32]>::to_vec).collect();
            let p = plan(&win)?;
            for (src, &c) in p.from.iter().enumerate() {
                rows[src][d] = c;
            }
            let total = p.by_expert.len();
            if total > sc.recv.capacity {
                // grow by half again, so a slowly growing load does not reallocate every call
                let cap = total.max(sc.recv.capacity + sc.recv.capacity / 2);
                sc.recv = Received::new(&dev, cap, (w as usize, mid as usize))?;
            }
            let rv = &mut sc.recv;
            rv.rows = total as u32;
            rv.by_expert = dev.upload(&nonempty(p.by_expert))?;
            rv.by_source = dev.upload(&nonempty(p.by_source))?;
            rv.start = dev.upload(&p.start)?;
            rv.blocks = dev.upload(&p.blocks)?;
        }
        self.mark(marks)?;
        // 5. dispatch the tokens
        let width = w as usize;
        let counts: Vec<Vec<usize>> = rows
            .iter()
            .map(|row| row.iter().map(|c| c * width).collect())
            .collect();
        {
            let (send, mut recv): (Vec<&DeviceBuffer<T>>, Vec<&mut DeviceBuffer<T>>) = self
                .ranks
                .iter_mut()
                .map(|rk| {
                    let sc = rk.scratch.as_mut().expect("sized");
                    (&sc.send, &mut sc.recv.recv)
                })
                .unzip();
            self.group.all_to_all_v(&send, &mut recv, &counts)?;
        }
        let after_dispatch = self.group.stats();
        self.mark(marks)?;
        // 6. the local experts, then the rows back into source order
        for rank in self.ranks.iter_mut() {
            let sc = rank.scratch.as_mut().expect("sized");
            let rv = &mut sc.recv;
            let groups = (&rv.start, &rv.blocks, local as u32);
            // the Hopper path cannot gather: the rows go into expert order first, through
            // `back` (free until the return below)
            let (entry, gather) = match rank.stages.on_hopper() {
                true => {
                    rank.stages
                        .permute(&rv.recv, &rv.by_expert, &mut rv.back, rv.rows, inw)?;
                    (&rv.back, None)
                }
                false => (&rv.recv, Some(&rv.by_expert)),
            };
            rank.stages.gemm(
                entry,
                gather,
                &rank.up,
                groups,
                &mut rv.y1,
                rv.rows,
                (inw, mid),
                true,
            )?;
            rank.stages.gemm(
                &rv.y1,
                None,
                &rank.down,
                (&rv.start, &rv.blocks, local as u32),
                &mut rv.y2,
                rv.rows,
                (mid, inw),
                false,
            )?;
            rank.stages
                .permute(&rv.y2, &rv.by_source, &mut rv.back, rv.rows, w)?;
        }
        self.mark(marks)?;
        // 7. the outputs back to their tokens' ranks
        let back: Vec<Vec<usize>> = (0..n)
            .map(|d| (0..n).map(|src| counts[src][d]).collect())
            .collect();
        {
            let (send, mut recv): (Vec<&DeviceBuffer<T>>, Vec<&mut DeviceBuffer<T>>) = self
                .ranks
                .iter_mut()
                .map(|rk| {
                    let sc = rk.scratch.as_mut().expect("sized");
                    (&sc.recv.back, &mut sc.ret)
                })
                .unzip();
            self.group.all_to_all_v(&send, &mut recv, &back)?;
        }
        let after_return = self.group.stats();
        self.mark(marks)?;
        // 8. combine, then ascend (BigMac)
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            let sc = rank.scratch.as_mut().expect("sized");
            let out = if bigmac {
                &mut sc.route.combined
            } else {
                &mut *ys[r]
            };
            rank.stages.combine(
                &sc.ret,
                &sc.route.inv,
                &sc.route.routing.weights,
                out,
                sc.route.tokens,
                w,
            )?;
        }
        self.mark(marks)?;
        if bigmac {
            for (r, rank) in self.ranks.iter_mut().enumerate() {
                let sc = rank.scratch.as_mut().expect("sized");
                rank.stages.gemm(
                    &sc.route.combined,
                    None,
                    &rank.ascend,
                    (&sc.route.one_start, &sc.route.one_blocks, 1),
                    &mut *ys[r],
                    sc.route.tokens,
                    (s.low, s.hidden),
                    false,
                )?;
            }
        }
        self.mark(marks)?;
        self.traffic = LayerTraffic {
            counts: after_counts.since(&before),
            dispatch: after_dispatch.since(&after_counts),
            combine: after_return.since(&after_dispatch),
            rows,
        };
        Ok(())
    }
}

/// A row list for upload: a placeholder element when empty (a rank that receives nothing).
fn nonempty(mut v: Vec<u32>) -> Vec<u32> {
    if v.is_empty() {
        v.push(0);
    }
    v
}

impl<T: Real> RankScratch<T> {
    fn new(
        dev: &Device,
        st: Structure,
        s: MoeShape,
        tokens: u32,
        (n, local): (usize, usize),
        keep: Option<Received<T>>,
    ) -> Result<Self, RuntimeError> {
        let slots = (tokens * s.top_k) as usize;
        let w = s.dispatch_width(st) as usize;
        let (_, mid) = s.expert_dims(st);
        let recv = match keep {
            Some(r) => r,
            None => Received::new(dev, slots, (w, mid as usize))?,
        };
        Ok(RankScratch {
            route: RouteScratch::new(dev, st, s, tokens)?,
            send: dev.zeros(slots * w)?,
            windows: dev.zeros(n * (local + 1))?,
            ret: dev.zeros(slots * w)?,
            recv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_groups_received_rows_by_expert() {
        // two sources, two local experts: source 0 sends 2 + 1 rows, source 1 sends 0 + 3
        let p = plan(&[vec![4, 6, 7], vec![10, 10, 13]]).unwrap();
        assert_eq!(p.from, vec![3, 3]);
        // received rows: 0 1 (s0 e0), 2 (s0 e1), 3 4 5 (s1 e1)
        assert_eq!(p.by_expert, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(p.start, vec![0, 2, 6]);
        assert_eq!(p.blocks, vec![0, 1, 2]);
        let p = plan(&[vec![0, 1, 3], vec![0, 2, 2]]).unwrap();
        // received: s0: e0 row 0, e1 rows 1 2; s1: e0 rows 3 4
        assert_eq!(p.by_expert, vec![0, 3, 4, 1, 2]);
        assert_eq!(p.by_source, vec![0, 3, 4, 1, 2]);
        assert_eq!(p.start, vec![0, 3, 5]);
        let e = plan(&[vec![3, 1]]).unwrap_err();
        assert!(e.to_string().contains("non-decreasing"), "{e}");
    }
}
