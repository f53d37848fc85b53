//! Per-worker CUDA graph cache (CUDA graph builds only): which input shapes have a graph, and
//! running a batch through one. The policy (what is captured when) is described with the
//! `Runner` in `graphs.rs`, which owns the cache; capture, replay and their locking are
//! [`crate::graph::Graph`]'s.
//!
//! Thread rule: a `GraphCache` belongs to one worker thread and is only used on it, with the
//! worker's pool stream current (capture needs a non-default stream). It never synchronises:
//! the worker waits for its stream (or hands an event to its completion thread) before a caller
//! sees an answer, and drops the cache only after its last batch completed.

use super::config::MAX_GRAPHS;
use crate::graph::{CaptureError, Graph, PoolId};
use crate::models::{Forward, ForwardError, Outputs};
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// Shapes and dtypes of every input.
type Key = Vec<(Vec<i64>, Kind)>;

/// A captured graph of the model: its static inputs and outputs.
type Captured = Graph<Outputs>;

/// Graphs of one worker, by input shape and dtype.
#[derive(Default)]
pub(crate) struct GraphCache {
    seen: HashMap<Key, u32>,
    graphs: HashMap<Key, Captured>,
    refused: HashSet<Key>,
    /// The memory pool every graph of this worker is captured into (the first graph's): one
    /// worker replays one graph at a time and copies its outputs out before the next (see
    /// `replay`), which is what sharing needs. The worker warms its buckets largest first.
    pool: Option<PoolId>,
}

impl GraphCache {
    /// Captures these shapes now (the worker's warm-up, through `Runner::prepare`).
    pub(crate) fn prepare(&mut self, model: &dyn Forward, xs: &[Tensor]) {
        let key: Key = xs.iter().map(|x| (x.size(), x.kind())).collect();
        if self.graphs.contains_key(&key) || self.refused.contains(&key) || self.graphs.len() >= MAX_GRAPHS {
            return;
        }
        self.try_capture(model, xs, key);
    }

    /// Captures `xs`'s shapes under `key`; a failure is logged and the key refused for good.
    /// Returns whether a graph now exists for it.
    fn try_capture(&mut self, model: &dyn Forward, xs: &[Tensor], key: Key) -> bool {
        match capture(model, xs, self.pool) {
            Ok(c) => {
                if self.pool.is_none() {
                    self.pool = c.pool().map_err(|e| tracing::warn!("CUDA graph pool unknown ({e}); later graphs get pools of their own")).ok();
                }
                self.graphs.insert(key, c);
                true
            }
            Err(e) => {
                tracing::warn!("CUDA graph capture failed for input shapes {:?}; running them eagerly: {e}", key);
                self.refused.insert(key);
                false
            }
        }
    }

    /// Replays the graph captured for `padded` rows of these inputs, if there is one, writing the
    /// batch's parts straight into the graph's static inputs (one kernel per input; the rows past
    /// `rows` keep whatever an earlier batch left there: rows are independent, and those outputs
    /// are never handed out). Returns copies of the first `rows` rows of every output, or `None`
    /// when no graph fits (the caller runs the batch another way).
    pub(crate) fn replay_parts(&mut self, parts: &[Vec<&Tensor>], rows: i64, padded: i64) -> Result<Option<Outputs>, ForwardError> {
        let key: Key = parts
            .iter()
            .map(|p| {
                let mut size = p[0].size();
                size[0] = padded;
                (size, p[0].kind())
            })
            .collect();
        let Some(c) = self.graphs.get(&key) else { return Ok(None) };
        for (stat, p) in c.inputs().iter().zip(parts) {
            let target = stat.f_narrow(0, 0, rows)?;
            if p.len() == 1 {
                target.shallow_clone().f_copy_(p[0])?;
            } else {
                let _written = Tensor::f_cat_out(&target, p, 0)?; // returns `target` itself
            }
        }
        replay(c, Some(rows)).map(Some)
    }

    pub(crate) fn forward(&mut self, model: &dyn Forward, xs: &[Tensor]) -> Result<Outputs, ForwardError> {
        let key: Key = xs.iter().map(|x| (x.size(), x.kind())).collect();
        if !self.graphs.contains_key(&key) {
            let n = self.seen.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n < 2 || self.graphs.len() >= MAX_GRAPHS || self.refused.contains(&key) {
                return model.run(xs);
            }
            if !self.try_capture(model, xs, key.clone()) {
                return model.run(xs);
            }
        }
        let c = &self.graphs[&key];
        for (stat, x) in c.inputs().iter().zip(xs) {
            stat.shallow_clone().f_copy_(x)?;
        }
        replay(c, None)
    }
}

/// Replays (static inputs already written) and copies out the first `rows` rows of every output,
/// or all of them: the static outputs are overwritten by the next replay.
fn replay(c: &Captured, rows: Option<i64>) -> Result<Outputs, ForwardError> {
    c.replay().map_err(|e| ForwardError::Other(e.to_string()))?;
    let copies = c
        .outputs()
        .tensors()
        .into_iter()
        .map(|t| match rows {
            Some(n) => t.f_narrow(0, 0, n)?.f_detach_copy(),
            None => t.f_detach_copy(),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(c.outputs().rebuild_like(copies))
}

/// Captures the model on copies of `xs` (the graph's static inputs); its outputs become the
/// graph's static outputs.
fn capture(model: &dyn Forward, xs: &[Tensor], pool: Option<PoolId>) -> Result<Captured, String> {
    let inputs = xs.iter().map(|x| x.f_detach_copy()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    super::device_cache::capturing(|| Graph::capture(pool, inputs, |inputs| model.run(inputs))).map_err(|e| match e {
        CaptureError::Work(e) => e.to_string(),
        CaptureError::Graph(e) => e.to_string(),
    })
}
