//! The inference engine: many client threads, one model, N workers each owning a stream.
//!
//! ```text
//!  clients ── submit() ─┬─► cuda:0 queue ─┬─► worker 0 (stream a, cuda:0) ─┐
//!                       │                 └─► worker 2 (stream c, cuda:0) ─┼─► tickets
//!                       └─► cuda:1 queue ───► worker 1 (stream b, cuda:1) ─┘
//! ```
//! - Each worker is a dedicated OS thread: it binds its own pool stream on its device (workers
//!   go round-robin over the devices given), turns grad off, warms up, then serves. A GPU
//!   worker runs libtorch's CPU operations (joining host inputs, splitting answers) on its own
//!   thread, without an OpenMP team (see `host_ops`); the caller's threads keep theirs.
//! - One bounded queue per device: an input already on a GPU goes to that GPU's queue (no copy
//!   between devices); a host input goes to the queue with the fewest requests waiting.
//! - With [`Batching::Dynamic`], a worker takes a request and gathers compatible ones (same
//!   shape beyond dim 0, dtype and device) until the batch is full or the wait is over, runs
//!   them as one, and splits the result back; incompatible requests form batches of their own.
//! - Results are final when the caller gets them: the worker synchronised its stream (or copied
//!   to the host for [`Output::Cpu`]).
//! - The model never sees a caller's tensor, and no answer shares memory with one: every input
//!   reaches the model as the engine's own copy on the worker's device (a batch is joined into
//!   new memory anyway; a lone request is copied too, or moved, which copies). So a model that
//!   writes into its input (`x.add_(1)`) cannot change the caller's tensor, and an identity model
//!   answers with new memory. Cost: one copy of a lone request's input where it was already on
//!   the worker's device (CPU, 3×224×224 float32: a few tens of µs per request).
//! - Bad input, a model error or a model panic fails only the requests concerned, with an
//!   [`EngineError`]; a panicking worker is replaced. Nothing is dropped silently: on
//!   shutdown every accepted request is completed or explicitly failed.
//! - A request whose [`Ticket`] was dropped before a worker began it is skipped (the model never
//!   runs for it) and counted in [`EngineStats::cancelled`]; once idle,
//!   `submitted == completed + failed + cancelled`.
//!
//! ```
//! use tch_streams::engine::{Batching, Engine, Output};
//! use tch_streams::models::{Builtin, Model};
//! use std::{sync::Arc, time::Duration};
//! let engine = Arc::new(
//!     Engine::builder(Model::Builtin(Builtin::SmallMlp))
//!         .devices(vec![tch::Device::cuda_if_available()])
//!         .workers(2)
//!         .batching(Batching::Dynamic { max_batch: 64, max_wait: Duration::from_micros(100) })
//!         .output(Output::Cpu)
//!         .build()?,
//! );
//! let clients: Vec<_> = (0..4).map(|_| {
//!     let e = Arc::clone(&engine);
//!     std::thread::spawn(move || e.infer(tch::Tensor::ones([1, 512], (tch::Kind::Float, tch::Device::Cpu))))
//! }).collect();
//! for c in clients { assert_eq!(c.join().unwrap()?.size(), vec![1, 512]); }
//! # Ok::<(), tch_streams::engine::EngineError>(())
//! ```

mod auto;
mod batcher;
mod budget;
mod buckets;
mod completion;
mod config;
mod core;
mod device_cache;
mod error;
mod events;
mod graphs;
mod handoff;
mod host_ops;
mod independence;
mod lanes;
#[cfg(tss_cuda_graphs)]
mod cuda_graph;
mod metrics;
mod plan;
mod request;
mod staging;
mod thread_caches;
mod threads;
mod ticket;
mod trial;
mod worker;

pub use auto::{EngineConfig, AUTO_MAX_BATCH};
pub use budget::{MemoryBudget, DEFAULT_MEMORY_FRACTION};
pub use config::{
    Batching, EngineBuilder, InputSpec, Output, Replicas, SampleFn, DEFAULT_CALIBRATION_STEP_LIMIT, DEFAULT_MAX_WAIT, MAX_BATCH,
    MAX_BUCKETS, MAX_BUCKET_OVER_BATCH, MAX_CALIBRATION_STEP_LIMIT, MAX_GRAPHS, MAX_QUEUE_CAPACITY, MAX_WARMUP_ELEMENTS, MAX_WORKERS,
};
pub use core::{Engine, WorkerInfo};
pub use error::EngineError;
pub use metrics::{DeviceMemory, EngineStats, StageStats};
pub use plan::CUDA_GRAPHS_BUILT;
pub use ticket::{OutputsTicket, Ticket};
pub use trial::Trial;
