//! How a worker runs its model: eagerly, or (with the `cuda-graphs` feature, on CUDA) by
//! replaying a CUDA graph captured per input shape.
//!
//! Graph policy: every bucket size is captured at start-up, after its eager warm-up
//! ([`Runner::prepare`]); any other set of input shapes is captured the second time it is seen
//! (the first run is eager and doubles as warm-up on the worker's stream); at most
//! [`MAX_GRAPHS`](super::MAX_GRAPHS) shapes per worker; shapes never captured run eagerly. Capture uses
//! thread-local capture mode, so other workers keep running while one captures.

use crate::models::{Forward, ForwardError, Outputs};
use std::sync::Arc;
use tch::Tensor;

/// Runs a worker's model, eagerly or through captured graphs.
pub(crate) struct Runner {
    model: Arc<dyn Forward>,
    #[cfg(tss_cuda_graphs)]
    graphs: Option<super::cuda_graph::GraphCache>,
}

impl Runner {
    pub(crate) fn new(model: Arc<dyn Forward>, graphs: bool) -> Runner {
        #[cfg(tss_cuda_graphs)]
        return Runner { model, graphs: graphs.then(super::cuda_graph::GraphCache::default) };
        #[cfg(not(tss_cuda_graphs))]
        {
            let _ = graphs;
            Runner { model }
        }
    }

    /// Whether this runner captures CUDA graphs.
    pub(crate) fn captures(&self) -> bool {
        #[cfg(tss_cuda_graphs)]
        return self.graphs.is_some();
        #[cfg(not(tss_cuda_graphs))]
        false
    }

    /// Captures a graph for these input shapes now, when graphs are on (the shapes must have run
    /// eagerly on this stream already). A failed capture is logged; those shapes run eagerly.
    pub(crate) fn prepare(&mut self, xs: &[Tensor]) {
        #[cfg(tss_cuda_graphs)]
        if let Some(cache) = &mut self.graphs {
            cache.prepare(&*self.model, xs);
        }
        let _ = xs;
    }

    /// A batch given as its parts per input (all on the worker's device), to run as `padded`
    /// rows: replayed straight from the parts when a graph of that size exists (outputs of
    /// `rows` rows), `None` otherwise.
    pub(crate) fn replay_parts(&mut self, parts: &[Vec<&Tensor>], rows: i64, padded: i64) -> Result<Option<Outputs>, ForwardError> {
        #[cfg(tss_cuda_graphs)]
        if let Some(cache) = &mut self.graphs {
            return cache.replay_parts(parts, rows, padded);
        }
        let _ = (parts, rows, padded);
        Ok(None)
    }

    pub(crate) fn forward(&mut self, xs: &[Tensor]) -> Result<Outputs, ForwardError> {
        #[cfg(tss_cuda_graphs)]
        if let Some(cache) = &mut self.graphs {
            return cache.forward(&*self.model, xs);
        }
        self.model.run(xs)
    }
}
