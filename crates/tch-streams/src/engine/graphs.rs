//! How a worker runs its model: eagerly, or (with the `cuda-graphs` feature, on CUDA) by
//! replaying a CUDA graph captured per input shape.
//!
//! Graph policy: a set of input shapes is captured the second time it is seen (the first run is eager and
//! doubles as warm-up on the worker's stream); at most [`MAX_GRAPHS`] shapes per worker; shapes
//! never captured run eagerly. Capture uses thread-local capture mode, so other workers keep
//! running while one captures.

use crate::models::{Forward, ForwardError, Outputs};
use std::sync::Arc;
use tch::Tensor;

/// Most graphs one worker keeps (each holds its static input, output and a memory pool).
pub const MAX_GRAPHS: usize = 16;

/// Runs a worker's model, eagerly or through captured graphs.
pub(crate) struct Runner {
    model: Arc<dyn Forward>,
    #[cfg(feature = "cuda-graphs")]
    graphs: Option<super::cuda_graph::GraphCache>,
}

impl Runner {
    pub(crate) fn new(model: Arc<dyn Forward>, graphs: bool) -> Runner {
        #[cfg(feature = "cuda-graphs")]
        return Runner { model, graphs: graphs.then(super::cuda_graph::GraphCache::default) };
        #[cfg(not(feature = "cuda-graphs"))]
        {
            let _ = graphs;
            Runner { model }
        }
    }

    pub(crate) fn forward(&mut self, xs: &[Tensor]) -> Result<Outputs, ForwardError> {
        #[cfg(feature = "cuda-graphs")]
        if let Some(cache) = &mut self.graphs {
            return cache.forward(&*self.model, xs);
        }
        self.model.run(xs)
    }
}
