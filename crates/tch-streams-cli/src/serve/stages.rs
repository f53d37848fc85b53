//! Where a request's time goes inside the server: four stages, timed per request and observed
//! in `tch_streams_request_stage_seconds{model,protocol,stage}` for each successful request.
//!
//! | stage | from | to |
//! |---|---|---|
//! | `decode` | the whole body read (gRPC: the message, before protobuf decoding) | tensors admitted |
//! | `admission` | tensors admitted | submitted to the engine (in-flight cap, the model's window) |
//! | `engine` | submitted | the engine's answer (queue, batching, compute) |
//! | `encode` | the answer | the response built (HTTP: JSON head + bytes; gRPC: the message, which tonic then frames) |
//!
//! Reading the body is not a stage: it runs at the client's pace. A handler fills a [`Stages`]
//! as it goes and hands it to its [`Recorder`](super::state::Recorder) when it finishes.

use std::time::Instant;

/// The stages, in order, as their metric labels.
pub const STAGES: [&str; 4] = ["decode", "admission", "engine", "encode"];

/// One of [`STAGES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Bytes to admitted tensors.
    Decode = 0,
    /// Waiting for a place: the in-flight cap and the model's window.
    Admission = 1,
    /// Submitted to the engine until answered.
    Engine = 2,
    /// Output tensors to response bytes.
    Encode = 3,
}

/// Seconds one request spent in each stage so far, with the clock of the stage in progress.
///
/// ```
/// use tch_streams_cli::serve::stages::{Stage, Stages};
/// let mut s = Stages::starting_now();
/// s.end(Stage::Decode);
/// s.end(Stage::Admission);
/// assert!(s.seconds()[0] >= 0.0 && s.seconds()[2] == 0.0);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Stages {
    seconds: [f64; 4],
    since: Instant,
}

impl Stages {
    /// Stages whose first one starts at `since`.
    pub fn starting(since: Instant) -> Stages {
        Stages { seconds: [0.0; 4], since }
    }

    /// Stages whose first one starts now.
    pub fn starting_now() -> Stages {
        Stages::starting(Instant::now())
    }

    /// Ends `stage` now (adding the time since the last stage ended) and starts the next.
    pub fn end(&mut self, stage: Stage) {
        let now = Instant::now();
        self.seconds[stage as usize] += now.saturating_duration_since(self.since).as_secs_f64();
        self.since = now;
    }

    /// Restarts the clock without counting the time since the last stage ended (time spent
    /// outside every stage).
    pub fn restart(&mut self) {
        self.since = Instant::now();
    }

    /// Seconds per stage, in [`STAGES`] order.
    pub fn seconds(&self) -> [f64; 4] {
        self.seconds
    }
}
