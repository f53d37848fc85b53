//! Per-worker CUDA graph cache (`cuda-graphs` feature). See [`super::graphs`] for the policy.
//!
//! Thread rule: a `GraphCache` belongs to one worker thread and is only used on it, with the
//! worker's pool stream current (capture requires a non-default stream).

use super::graphs::MAX_GRAPHS;
use crate::ffi::graph as ffi;
use crate::models::{Forward, ForwardError, Outputs};
use crate::status::last_error;
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// Shapes and dtypes of every input.
type Key = Vec<(Vec<i64>, Kind)>;

struct Graph(*mut ffi::TssGraph);

impl Graph {
    fn new() -> Result<Graph, String> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the graph is freed in Drop.
        ok(unsafe { ffi::tss_graph_new(&mut raw) })?;
        Ok(Graph(raw))
    }
    fn begin(&self) -> Result<(), String> {
        // SAFETY: live graph, used on its owning thread.
        ok(unsafe { ffi::tss_graph_capture_begin(self.0) })
    }
    fn end(&self) -> Result<(), String> {
        // SAFETY: as above.
        ok(unsafe { ffi::tss_graph_capture_end(self.0) })
    }
    fn replay(&self) -> Result<(), String> {
        // SAFETY: as above.
        ok(unsafe { ffi::tss_graph_replay(self.0) })
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // Callers hold LIFECYCLE exclusively: `capture` (a failed capture) and `GraphCache::drop`.
        // SAFETY: created by tss_graph_new, freed once.
        unsafe { ffi::tss_graph_free(self.0) }
    }
}

fn ok(status: i32) -> Result<(), String> {
    if status == crate::ffi::TssStatus::TSS_OK as i32 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// A captured graph with its static inputs and outputs.
struct Captured {
    graph: Graph,
    inputs: Vec<Tensor>,
    outputs: Outputs,
}

/// Graphs of one worker, by input shape and dtype.
#[derive(Default)]
pub(crate) struct GraphCache {
    seen: HashMap<Key, u32>,
    graphs: HashMap<Key, Captured>,
    refused: HashSet<Key>,
}

impl GraphCache {
    /// Captures these shapes now (see [`Runner::prepare`](super::graphs::Runner::prepare)).
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
        match capture(model, xs) {
            Ok(c) => {
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
        for (stat, p) in c.inputs.iter().zip(parts) {
            let target = stat.f_narrow(0, 0, rows)?;
            if p.len() == 1 {
                target.shallow_clone().f_copy_(p[0])?;
            } else {
                let _written = Tensor::f_cat_out(&target, p, 0)?; // returns `target` itself
            }
        }
        c.replay(Some(rows)).map(Some)
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
        for (stat, x) in c.inputs.iter().zip(xs) {
            stat.shallow_clone().f_copy_(x)?;
        }
        c.replay(None)
    }
}

impl Captured {
    /// Replays (static inputs already written) and copies out the first `rows` rows of every
    /// output, or all of them: the static outputs are overwritten by the next replay.
    fn replay(&self, rows: Option<i64>) -> Result<Outputs, ForwardError> {
        {
            let _shared = LIFECYCLE.read();
            self.graph.replay().map_err(ForwardError::Other)?;
        }
        let copies = self
            .outputs
            .tensors()
            .into_iter()
            .map(|t| match rows {
                Some(n) => t.f_narrow(0, 0, n)?.f_detach_copy(),
                None => t.f_detach_copy(),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.outputs.rebuild_like(copies))
    }
}

/// Graph lifecycle lock. Capture and destruction touch process-wide state (the default CUDA
/// generator's graph-safe state, which every capture registers and every replay advances; the
/// allocator's private pools and its list of captures under way): they take it exclusively.
/// Replays take it shared, so workers replay side by side but never while a graph is being
/// captured or destroyed. Eager work is not affected.
static LIFECYCLE: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

impl Drop for GraphCache {
    fn drop(&mut self) {
        let _exclusive = LIFECYCLE.write();
        self.graphs.clear();
    }
}

/// An open capture on the worker's stream. Dropping it ends the capture, also when the model
/// panics inside it: the stream never stays in capture mode (pool streams are shared by every
/// thread of the process that asks the pool).
struct Capturing<'g> {
    graph: &'g Graph,
    open: bool,
}

impl<'g> Capturing<'g> {
    fn begin(graph: &'g Graph) -> Result<Capturing<'g>, String> {
        graph.begin()?;
        Ok(Capturing { graph, open: true })
    }

    /// Ends the capture and reports whether the graph is usable.
    fn end(mut self) -> Result<(), String> {
        self.open = false;
        self.graph.end()
    }
}

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        if self.open {
            // Unwinding from a panic in the model: close the capture; the graph is discarded.
            if let Err(e) = self.graph.end() {
                tracing::error!("could not end a CUDA graph capture after a panic: {e}");
            }
        }
    }
}

fn capture(model: &dyn Forward, xs: &[Tensor]) -> Result<Captured, String> {
    let _exclusive = LIFECYCLE.write();
    let inputs = xs.iter().map(|x| x.f_detach_copy()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let graph = Graph::new()?;
    let capturing = Capturing::begin(&graph)?;
    let out = model.run(&inputs);
    // Always end the capture, even if the forward failed (and, through Drop, if it panicked).
    let ended = capturing.end();
    let outputs = out.map_err(|e| e.to_string())?;
    ended?;
    Ok(Captured { graph, inputs, outputs })
}
