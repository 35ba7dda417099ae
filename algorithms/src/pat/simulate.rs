//! A batch's generation, step by step, under a static layout or under PAT's one switch —
//! the 1-GPU simulation mode: the decisions and costs of the real system, from a profile
//! and the predictor fitted to it, without running the decoder.

use super::predictor::Predictor;
use super::profile::{prefill_ms, Card, ModelDims};
use super::workload::LongTail;

/// A data-parallel × tensor-parallel split of the GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// GPUs per tensor-parallel group.
    pub tp: u32,
    /// Replicas.
    pub dp: u32,
}

/// What a switch costs, split by kind, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SwitchCost {
    /// Weight resharding: free when the TP degree grows (every GPU already holds the new
    /// shard and slices it in place), an all-gather when it shrinks; done layer by layer,
    /// so the extra memory is at most one layer's weights per GPU.
    pub weights_ms: f64,
    /// KV moved to the GPUs that own its heads under the new layout (all links busy at once).
    pub migrate_ms: f64,
    /// KV rebuilt by a prefill of the context under the new layout.
    pub recompute_ms: f64,
    /// Sequences whose KV was migrated.
    pub migrated: usize,
    /// Sequences whose KV was recomputed.
    pub recomputed: usize,
}

impl SwitchCost {
    /// The whole pause, ms.
    pub fn total_ms(&self) -> f64 {
        self.weights_ms + self.migrate_ms + self.recompute_ms
    }
}

/// How a generation went.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// The policy, e.g. `TP1×DP4`.
    pub policy: String,
    /// Prefill time, ms.
    pub prefill_ms: f64,
    /// Decode time, ms.
    pub decode_ms: f64,
    /// The switch, when one happened: at which step, to what, at what cost.
    pub switch: Option<(usize, Layout, SwitchCost)>,
    /// Decode steps until the last sequence finished.
    pub steps: usize,
}

impl RunReport {
    /// Prefill + decode + switch, ms.
    pub fn total_ms(&self) -> f64 {
        self.prefill_ms + self.decode_ms + self.switch.map_or(0.0, |(_, _, c)| c.total_ms())
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The model.
    pub model: ModelDims,
    /// The card and its links.
    pub card: Card,
    /// GPUs in all.
    pub gpus: u32,
    /// Step latencies.
    pub predictor: Predictor,
    /// The workload (its law gives the run-time estimates of the remaining lengths).
    pub workload: LongTail,
    /// Steps between two switch decisions.
    pub check_every: usize,
}

#[derive(Clone, Copy, Debug)]
struct Seq {
    context: usize,
    left: usize,
}

/// What the scheduler knows of an unfinished sequence at a decision: its context (tokens
/// in its KV cache) and how many tokens it has generated — not how many it will.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    /// Tokens in its KV cache.
    pub context: usize,
    /// Tokens generated so far.
    pub generated: usize,
}

fn split(seqs: Vec<Seq>, dp: u32) -> Vec<Vec<Seq>> {
    let mut out = vec![Vec::new(); dp as usize];
    for (i, s) in seqs.into_iter().enumerate() {
        out[i % dp as usize].push(s);
    }
    out
}

/// One decode step: every sequence gains a token; finished ones retire.
fn advance(reps: &mut [Vec<Seq>]) {
    for r in reps.iter_mut() {
        for s in r.iter_mut() {
            s.context += 1;
            s.left -= 1;
        }
        r.retain(|s| s.left > 0);
    }
}

impl Setup {
    fn step_ms(&self, tp: u32, replicas: &[Vec<Seq>]) -> f64 {
        let contexts: Vec<Vec<usize>> = replicas
            .iter()
            .map(|r| r.iter().map(|s| s.context).collect())
            .collect();
        self.predict_step_ms(tp, &contexts)
    }

    /// The predicted latency of one decode step of replicas at TP `tp` whose sequences have
    /// the contexts `replicas[j]`: the slowest replica's (they step together), ms.
    pub fn predict_step_ms(&self, tp: u32, replicas: &[Vec<usize>]) -> f64 {
        replicas
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let mean = r.iter().map(|&c| c as f64).sum::<f64>() / r.len() as f64;
                self.predictor
                    .predict(tp, r.len() as u32, mean)
                    .unwrap_or(f64::INFINITY)
            })
            .fold(0.0, f64::max)
    }

    /// PAT's rule at one decision point: with each sequence's remaining length estimated
    /// from the law ([`LongTail::expected_length`] of what it generated), whether the
    /// predicted remaining time under `from` exceeds that under `to` plus the switch's cost;
    /// the cost when it does (the switch pays), `None` when it does not.
    pub fn decide(&self, from: Layout, to: Layout, replicas: &[Vec<Live>]) -> Option<SwitchCost> {
        let guess: Vec<Vec<Seq>> = replicas
            .iter()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let total = self.workload.expected_length(s.generated);
                        Seq {
                            context: s.context,
                            left: (total - s.generated as f64).round().max(1.0) as usize,
                        }
                    })
                    .collect()
            })
            .collect();
        let now = self.remaining_ms(from, &guess);
        let then = self.remaining_ms(to, &split(guess.concat(), to.dp));
        let contexts: Vec<usize> = replicas.iter().flatten().map(|s| s.context).collect();
        let cost = self.switch_cost(from, to, &contexts);
        (now > then + cost.total_ms()).then_some(cost)
    }

    /// The modelled cost of moving one sequence of `context` tokens from `from` to `to`,
    /// ms: `(migrate, recompute)` — its KV over the links, or a prefill under `to`.
    pub fn kv_costs(&self, from: Layout, to: Layout, context: usize) -> (f64, f64) {
        let m = &self.model;
        let moved = (1.0 - from.tp.min(to.tp) as f64 / from.tp.max(to.tp) as f64).max(0.0);
        let bytes = moved * context as f64 * m.kv_bytes_per_token();
        let migrate = 1e3 * bytes / (self.card.link_bw * self.gpus as f64);
        (migrate, prefill_ms(m, &self.card, to.tp, context as u64))
    }

    /// The predicted remaining decode time of `replicas` under `layout` if each sequence
    /// runs `left` more steps.
    fn remaining_ms(&self, layout: Layout, replicas: &[Vec<Seq>]) -> f64 {
        let mut reps: Vec<Vec<Seq>> = replicas.to_vec();
        let mut total = 0.0;
        while reps.iter().any(|r| !r.is_empty()) {
            total += self.step_ms(layout.tp, &reps);
            advance(&mut reps);
        }
        total
    }

    /// The cost of moving `seqs` from `from` to `to` (see [`SwitchCost`]): per sequence the
    /// cheaper of migrating its KV and recomputing it.
    pub fn switch_cost(&self, from: Layout, to: Layout, contexts: &[usize]) -> SwitchCost {
        let m = &self.model;
        let mut c = SwitchCost::default();
        if to.tp < from.tp {
            let bytes = m.weight_bytes() * (1.0 / to.tp as f64 - 1.0 / from.tp as f64);
            c.weights_ms = 1e3 * bytes / self.card.link_bw;
        }
        for &ctx in contexts {
            let (migrate, recompute) = self.kv_costs(from, to, ctx);
            if migrate <= recompute {
                c.migrate_ms += migrate;
                c.migrated += 1;
            } else {
                c.recompute_ms += recompute;
                c.recomputed += 1;
            }
        }
        c
    }

    /// Generates the batch with response lengths `lengths` starting in `start`; with
    /// `switch_to`, every `check_every` steps PAT's rule decides whether to switch (once):
    /// when the predicted remaining time under the current layout exceeds that under the new
    /// one plus the switch cost, both predicted from the law's estimate of each sequence's
    /// remaining length (the scheduler does not know the true lengths).
    pub fn run(&self, start: Layout, switch_to: Option<Layout>, lengths: &[usize]) -> RunReport {
        // a layout has at least one replica, and decisions come at least every step
        let start = Layout {
            tp: start.tp.max(1),
            dp: start.dp.max(1),
        };
        let switch_to = switch_to.map(|l| Layout {
            tp: l.tp.max(1),
            dp: l.dp.max(1),
        });
        let check_every = self.check_every.max(1);
        let prompt = self.workload.prompt;
        let seqs: Vec<Seq> = lengths
            .iter()
            .map(|&l| Seq {
                context: prompt,
                left: l.max(1),
            })
            .collect();
        let mut layout = start;
        let mut reps = split(seqs, layout.dp);
        let prefill = reps
            .iter()
            .map(|r| {
                prefill_ms(
                    &self.model,
                    &self.card,
                    layout.tp,
                    (r.len() * prompt) as u64,
                )
            })
            .fold(0.0, f64::max);
        let (mut decode, mut step, mut switch) = (0.0, 0usize, None);
        while reps.iter().any(|r| !r.is_empty()) {
            if let Some(to) = switch_to {
                if switch.is_none() && step > 0 && step % check_every == 0 {
                    let live: Vec<Vec<Live>> = reps
                        .iter()
                        .map(|r| {
                            r.iter()
                                .map(|s| Live {
                                    context: s.context,
                                    generated: s.context - prompt,
                                })
                                .collect()
                        })
                        .collect();
                    if let Some(cost) = self.decide(layout, to, &live) {
                        switch = Some((step, to, cost));
                        layout = to;
                        reps = split(reps.concat(), to.dp);
                    }
                }
            }
            decode += self.step_ms(layout.tp, &reps);
            advance(&mut reps);
            step += 1;
        }
        let policy = match (start, switch) {
            (s, None) if switch_to.is_none() => format!("TP{}×DP{}", s.tp, s.dp),
            (s, _) => format!(
                "adaptive TP{}×DP{} → TP{}×DP{}",
                s.tp,
                s.dp,
                switch_to.map_or(s.tp, |t| t.tp),
                switch_to.map_or(s.dp, |t| t.dp)
            ),
        };
        RunReport {
            policy,
            prefill_ms: prefill,
            decode_ms: decode,
            switch,
            steps: step,
        }
    }
}
