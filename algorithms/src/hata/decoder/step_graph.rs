//! The graph-captured step (sparse or dense): a step's launches captured once and replayed while the
//! column count, the budget and the caller's buffers stay what they were at the capture
//! (the append and the scoring read the cache length from device memory; the score, top-k
//! and attention cover the keyed columns and budget), so a step costs the host one launch
//! instead of a dozen and the device no gaps between them. One graph is kept: a caller
//! alternating two sets of step buffers recaptures every step (use one set, or graphs off).

use kiln::prelude::*;
use kiln::{Element, Graph, RuntimeError};

use super::{HataError, HataLayer, StepIo};

/// A captured step and what it was captured for.
pub(super) struct StepGraph {
    graph: Graph,
    key: StepKey,
}

/// What a replay repeats: the scored columns, the keys attended, and the addresses of the
/// step's inputs and outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StepKey {
    columns: u32,
    keys: u32,
    buffers: [u64; 5],
}

impl<T: Element + Float> HataLayer<T> {
    /// A [`HataLayer::step`]: one replay of the graph captured for this step's key,
    /// or (on a new key, or a stale graph) the step launched kernel by kernel, which also
    /// sizes every scratch buffer, then captured for the next steps.
    pub(super) fn graph_step(&mut self, mut io: StepIo<'_, T>) -> Result<(), HataError> {
        let next = self.len + 1;
        let key = StepKey {
            columns: self.columns_at(next),
            // 0 for a dense step (its attention covers the columns)
            keys: if self.sparse_at(next) {
                self.budget_for(next)
            } else {
                0
            },
            buffers: [
                io.q.address(),
                io.k_new.address(),
                io.v_new.address(),
                io.out.address(),
                io.lse.address(),
            ],
        };
        // a sparse step's graph hashes its key into a fully hashed cache: encode what dense
        // steps left out first (eagerly; never part of a graph)
        if key.keys > 0 {
            self.hash_missing()?;
        }
        let stream = self.device.default_stream();
        if let Some(g) = self
            .graph
            .as_mut()
            .filter(|g| g.key == key && !g.graph.is_stale())
        {
            g.graph.launch(&stream)?;
            self.len = next;
            if key.keys > 0 {
                self.hashed = next;
            }
            self.replays += 1;
            return Ok(());
        }
        self.graph = None;
        self.eager_step(io.again())?;
        // the capture records the same launches for the length before this step; the
        // kernels read the length itself from device memory, where it has moved on
        self.len = next - 1;
        let mut failed = None;
        let captured = stream.capture(|_| {
            self.eager_step(io.again()).map_err(|e| {
                let reason = e.to_string();
                failed = Some(e);
                RuntimeError::InvalidInput {
                    what: "hata step capture",
                    reason,
                }
            })
        });
        self.len = next;
        // the step itself ran (eagerly): report the capture's failure, not the step's, and
        // launch kernel by kernel from now on
        if let Some(e) = failed
            .map(|e| e.to_string())
            .or(captured.as_ref().err().map(|e| e.to_string()))
        {
            self.use_graphs = false;
            self.capture_error = Some(e);
            return Ok(());
        }
        self.captures += 1;
        self.graph = Some(StepGraph {
            graph: captured?,
            key,
        });
        Ok(())
    }
}
