//! A worker's completion thread: waits for the device to finish each launched batch and answers
//! its tickets, so that the worker launches the next batch instead of sitting in a stream
//! synchronisation while the device works.
//!
//! Invariants:
//! - One completion thread per worker, started and joined by it (the worker's thread outlives
//!   its completion thread, so joining the worker joins both).
//! - A batch is handed over with an event recorded on the worker's stream after the batch's last
//!   kernel (the output copies included). The completion thread answers only after that event
//!   completed: results are final when a caller sees them, as with a synchronised stream.
//! - The batch's requests, and so their input tensors (allocated on the callers' streams), stay
//!   alive until then: their memory is not freed for reuse while the worker's kernels may still
//!   read it. Tensors the worker allocated itself (joined, padded, copied inputs) may be dropped
//!   at once: their memory is only reused by later work on the same stream, which is ordered.
//! - At most [`DEPTH`] batches wait per worker; the worker blocks on a full hand-over, which
//!   bounds the device memory held by launched batches.

use super::error::EngineError;
use super::metrics::{Metrics, Stages};
use super::request::Request;
use super::ticket::Outcome;
use crate::stream::Event;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Launched batches that may wait for completion per worker.
pub(crate) const DEPTH: usize = 2;

/// One launched batch: its requests, their outcomes (tensors still being computed), and the
/// event after its last kernel.
pub(crate) struct Launched {
    pub(crate) event: Event,
    /// When the worker began the batch (the end of its requests' time in the queue).
    pub(crate) began: Instant,
    pub(crate) requests: Vec<Request>,
    pub(crate) outcomes: Vec<Outcome>,
}

/// The worker's side: hands batches over, gets events back for reuse.
pub(crate) struct Completer {
    tx: Option<Sender<Launched>>,
    spare: Receiver<Event>,
    handle: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Completer {
    pub(crate) fn start(index: usize, engine: u64, metrics: Arc<Metrics>) -> std::io::Result<Completer> {
        let (tx, rx) = bounded::<Launched>(DEPTH);
        let (spare_tx, spare) = bounded::<Event>(DEPTH + 2);
        let handle = std::thread::Builder::new()
            .name(format!("tch-streams-complete-{index}"))
            .spawn({
                let metrics = Arc::clone(&metrics);
                move || {
                    super::threads::mark_thread(engine);
                    complete_all(rx, spare_tx, metrics)
                }
            })?;
        Ok(Completer { tx: Some(tx), spare, handle: Some(handle), metrics })
    }

    /// An event to record the next batch with: a finished one back from the completion thread
    /// if there is one.
    pub(crate) fn event(&self, device: tch::Device) -> crate::Result<Event> {
        match self.spare.try_recv() {
            Ok(e) => Ok(e),
            Err(_) => Event::new(device),
        }
    }

    /// Hands a launched batch over; blocks while [`DEPTH`] batches wait.
    pub(crate) fn hand_over(&self, batch: Launched) {
        if let Some(tx) = &self.tx {
            if let Err(crossbeam_channel::SendError(batch)) = tx.send(batch) {
                // The completion thread is gone (it cannot panic short of a bug): finish here.
                let done = batch.event.synchronize().err().map(|e| e.to_string());
                finish(batch, done, &self.metrics);
            }
        }
    }
}

impl Drop for Completer {
    /// Answers every batch handed over, then returns.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn complete_all(rx: Receiver<Launched>, spare: Sender<Event>, metrics: Arc<Metrics>) {
    for batch in rx {
        let t0 = Instant::now();
        let done = batch.event.synchronize();
        let t1 = Stages::lap(&metrics.stages.complete, t0);
        let event = finish(batch, done.err().map(|e| e.to_string()), &metrics);
        Stages::lap(&metrics.stages.deliver, t1);
        if let Some(e) = event {
            let _ = spare.try_send(e);
        }
    }
}

/// Counts and answers a finished batch; a device error fails every request of it. Returns the
/// event for reuse.
fn finish(batch: Launched, device_error: Option<String>, metrics: &Metrics) -> Option<Event> {
    let Launched { event, began, requests, outcomes } = batch;
    let outcomes: Vec<Outcome> = match &device_error {
        None => outcomes,
        Some(e) => outcomes.into_iter().map(|_| Err(EngineError::Model(format!("the device failed while running the batch: {e}")))).collect(),
    };
    answer(requests, outcomes, began, metrics);
    device_error.is_none().then_some(event)
}

/// Counts a batch's outcomes and times (before answering, so that a caller who sees its answer
/// also sees it counted), then answers each request. `began`: when the worker began the batch.
pub(crate) fn answer(requests: Vec<Request>, outcomes: Vec<Outcome>, began: Instant, metrics: &Metrics) {
    let now = Instant::now();
    let compute = now.saturating_duration_since(began);
    let mut times = Vec::with_capacity(requests.len());
    let (mut ok, mut failed, mut samples) = (0u64, 0u64, 0u64);
    let n = requests.len();
    let mut answers = Vec::with_capacity(n);
    for (req, outcome) in requests.into_iter().zip(outcomes) {
        times.push((now.saturating_duration_since(req.submitted), began.saturating_duration_since(req.submitted), compute));
        match &outcome {
            Ok(_) => {
                ok += 1;
                samples += req.rows as u64;
            }
            Err(_) => failed += 1,
        }
        answers.push((req.promise, outcome));
    }
    metrics.batch(n, ok, failed, samples, &times);
    metrics.stages.batches.fetch_add(1, Ordering::Relaxed);
    for (promise, outcome) in answers {
        promise.fulfil(outcome);
    }
}
