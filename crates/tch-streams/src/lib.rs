//! # tch-streams
//!
//! Thread-safe, scalable parallel inference for Rust [`tch`] on GPU streams.
//!
//! Layers, each depending only on those before it:
//! - `ffi` (private): bindgen output for the C++ shim over libtorch's device-generic c10 guard
//!   interface;
//! - [`runtime`]: which libtorch the process loaded, what it can do, and [`runtime::verify`];
//! - [`stream`]: streams, guards, events, synchronisation, record-stream;
//! - `graph` (private, builds with CUDA graphs): capture and replay of CUDA graphs;
//! - [`models`]: TorchScript, built-in workloads, closures;
//! - [`engine`]: workers with a stream each, dynamic batching, CUDA graphs, metrics.
//!
//! ```
//! // Prove, at startup, that the process runs on the libtorch it was built against.
//! let report = tch_streams::runtime::verify(&Default::default())?;
//! assert_eq!(report.loaded.compiled_version, report.built.torch_version);
//! # Ok::<(), tch_streams::Error>(())
//! ```
#![warn(missing_docs)]

mod backend;
mod error;
mod ffi;
pub mod runtime;
mod status;
pub mod stream;
#[cfg(tss_cuda_graphs)]
mod graph;
pub mod models;
pub mod engine;
pub mod host_tensor;

pub use backend::Backend;
pub use error::{Error, Result};
pub use status::{device_count, has_backend};
