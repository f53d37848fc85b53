//! [`Ticket`]: the caller's handle on one submitted request — waitable from sync code, and a
//! `Future` for async code (no particular runtime needed: it only uses the `Waker` it is given).

use super::error::EngineError;
use super::metrics::Metrics;
use parking_lot::{Condvar, Mutex};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use crate::models::Outputs;
use tch::Tensor;

/// What a worker answers: the model's outputs for this request, or why not.
pub(crate) type Outcome = Result<Outputs, EngineError>;

/// The single tensor of an answer ([`Ticket::wait`]'s shorthand).
fn single(outcome: Outcome) -> Result<Tensor, EngineError> {
    outcome.and_then(|o| o.into_tensor().map_err(EngineError::from))
}

#[derive(Default)]
struct State {
    outcome: Option<Outcome>,
    /// The promise was dropped without an answer (its worker died).
    abandoned: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    ready: Condvar,
    /// Set once, when the ticket is dropped: nobody reads the answer any more. Read by workers
    /// without the lock (see [`Promise::is_cancelled`]).
    cancelled: AtomicBool,
    /// Set once the outcome (or abandonment) is in `state`: lets a waiter poll without the lock.
    settled: AtomicBool,
}

/// The result of a submitted request, once a worker answers it.
///
/// Dropping a ticket before its answer cancels the request: a worker that has not begun it yet
/// skips it without running the model (counted in [`EngineStats::cancelled`](super::EngineStats)).
/// One already running finishes its batch; its answer is then freed at once. A ticket that is
/// waited on, awaited to the end or given back by a timeout is not cancelled.
///
/// Awaited, a ticket's waker is called on the engine thread that answers it: it should only
/// schedule the task (as every runtime's waker does). A waker that panics is caught and logged;
/// one that shuts the engine down stops intake without waiting (see [`Engine::shutdown`](super::Engine::shutdown)).
///
/// ```
/// use tch_streams::engine::Engine;
/// use tch_streams::models::Model;
/// let engine = Engine::builder(Model::closure(|x: &tch::Tensor| x.f_add_scalar(1.0))).workers(1).build()?;
/// let ticket = engine.submit(tch::Tensor::zeros([1, 4], (tch::Kind::Float, tch::Device::Cpu)));
/// let y = ticket.wait()?;                       // or `ticket.await` in async code
/// assert_eq!(y.sum(tch::Kind::Float).double_value(&[]), 4.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a ticket does nothing unless waited on or awaited"]
pub struct Ticket {
    slot: Arc<Slot>,
}

/// The worker's side of a ticket. Dropping it unanswered resolves the ticket with
/// [`EngineError::WorkerDied`]. `slot` is `None` once answered.
pub(crate) struct Promise {
    slot: Option<Arc<Slot>>,
    /// Counts the request as failed if the promise is dropped unanswered.
    metrics: Option<Arc<Metrics>>,
}

pub(crate) fn pair() -> (Promise, Ticket) {
    let slot = Arc::new(Slot::default());
    (Promise { slot: Some(Arc::clone(&slot)), metrics: None }, Ticket { slot })
}

/// A pair for an accepted request: dropping its promise unanswered counts a failure, so that
/// submitted = completed + failed holds even when a worker dies holding it.
pub(crate) fn counted_pair(metrics: &Arc<Metrics>) -> (Promise, Ticket) {
    let (mut promise, ticket) = pair();
    promise.metrics = Some(Arc::clone(metrics));
    (promise, ticket)
}

impl Ticket {
    /// A ticket that is already answered (used for requests refused at submission).
    pub(crate) fn resolved(outcome: Outcome) -> Ticket {
        let (promise, ticket) = pair();
        promise.fulfil(outcome);
        ticket
    }

    /// Blocks until the request is answered; the model's single output tensor. A model that
    /// returns a tuple, list or dict answers [`EngineError::Output`] here: use
    /// [`wait_outputs`](Ticket::wait_outputs).
    pub fn wait(self) -> Result<Tensor, EngineError> {
        single(self.wait_outputs())
    }

    /// Blocks until the request is answered; the model's outputs in its own structure.
    pub fn wait_outputs(self) -> Outcome {
        // An answer due within microseconds is polled for before parking (see `handoff`).
        let _ = super::handoff::spin(super::handoff::SPIN, || self.slot.settled.load(Ordering::Acquire).then_some(()));
        let mut st = self.slot.state.lock();
        loop {
            if let Some(outcome) = st.outcome.take() {
                return outcome;
            }
            if st.abandoned {
                return Err(EngineError::WorkerDied);
            }
            self.slot.ready.wait(&mut st);
        }
    }

    /// Waits at most `timeout`; gives the ticket back if it is not answered by then.
    pub fn wait_timeout(self, timeout: Duration) -> Result<Result<Tensor, EngineError>, Ticket> {
        self.wait_outputs_timeout(timeout).map(single)
    }

    /// [`wait_outputs`](Ticket::wait_outputs) for at most `timeout`.
    pub fn wait_outputs_timeout(self, timeout: Duration) -> Result<Outcome, Ticket> {
        // A timeout too long to express as an instant (Duration::MAX) is no timeout.
        let Some(deadline) = std::time::Instant::now().checked_add(timeout) else {
            return Ok(self.wait_outputs());
        };
        {
            let mut st = self.slot.state.lock();
            loop {
                if let Some(outcome) = st.outcome.take() {
                    return Ok(outcome);
                }
                if st.abandoned {
                    return Ok(Err(EngineError::WorkerDied));
                }
                if self.slot.ready.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
        }
        Err(self)
    }

    /// Whether the answer has arrived (never blocks).
    pub fn is_ready(&self) -> bool {
        let st = self.slot.state.lock();
        st.outcome.is_some() || st.abandoned
    }
}

impl Drop for Ticket {
    /// Marks the request cancelled: one store, no lock. Harmless once answered (only workers
    /// read the mark, before they run a request).
    fn drop(&mut self) {
        self.slot.cancelled.store(true, Ordering::Release);
    }
}

impl Future for Ticket {
    type Output = Result<Tensor, EngineError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.poll(cx).map(single)
    }
}

/// A [`Ticket`] whose `.await` gives the model's outputs in their own structure
/// ([`Ticket::outputs`]).
#[must_use = "a ticket does nothing unless waited on or awaited"]
pub struct OutputsTicket(Ticket);

impl OutputsTicket {
    /// Blocks until the request is answered.
    pub fn wait(self) -> Outcome {
        self.0.wait_outputs()
    }
}

impl Future for OutputsTicket {
    type Output = Outcome;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.0.slot.poll(cx)
    }
}

impl Ticket {
    /// This ticket, awaiting the model's outputs in their own structure instead of one tensor.
    pub fn outputs(self) -> OutputsTicket {
        OutputsTicket(self)
    }
}

impl Slot {
    fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut st = self.state.lock();
        if let Some(outcome) = st.outcome.take() {
            return Poll::Ready(outcome);
        }
        if st.abandoned {
            return Poll::Ready(Err(EngineError::WorkerDied));
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Promise {
    /// For a request that was never accepted: dropping it must not count a failure (the caller
    /// gets, and is counted for, the refusal instead).
    pub(crate) fn disarm(&mut self) {
        self.metrics = None;
    }

    /// Whether the caller dropped its ticket: the answer would be read by nobody. One atomic
    /// load; a ticket dropped just after it returns false is answered as usual.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.cancelled.load(Ordering::Acquire))
    }

    /// Lets go of a request whose ticket was dropped, unanswered, counting it as cancelled (not
    /// failed) when it was accepted.
    pub(crate) fn cancel(mut self) {
        if let Some(m) = self.metrics.take() {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.slot = None; // nobody waits on it: no wake-up
    }

    /// Answers the ticket. If the caller already dropped its ticket, the outcome (and any device
    /// memory it holds) is freed right here, with the slot.
    pub(crate) fn fulfil(mut self, outcome: Outcome) {
        if let Some(slot) = self.slot.take() {
            slot.settle(|st| st.outcome = Some(outcome));
        }
    }
}

impl Slot {
    /// Updates the state under the lock, then wakes whoever waits (thread or task).
    ///
    /// The waker is the caller's code running on an engine thread (a worker or its completion
    /// thread): a panic in it is caught and logged here, so that it cannot take that thread down
    /// with the answers it still owes. The answer itself is already in the slot by then.
    fn settle(&self, update: impl FnOnce(&mut State)) {
        let mut st = self.state.lock();
        update(&mut st);
        let waker = st.waker.take();
        drop(st);
        self.settled.store(true, Ordering::Release);
        self.ready.notify_all();
        if let Some(w) = waker {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake())) {
                tracing::error!("a ticket's waker panicked (the answer is delivered; the task may not be woken): {}", super::threads::panic_message(&*p));
            }
        }
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Some(m) = &self.metrics {
                m.failed.fetch_add(1, Ordering::Relaxed);
            }
            slot.settle(|st| st.abandoned = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_and_dropped_slots_are_freed() {
        let (promise, ticket) = pair();
        let weak = Arc::downgrade(&ticket.slot);
        drop(ticket); // the caller is gone
        promise.fulfil(Err(EngineError::Busy));
        assert!(weak.upgrade().is_none(), "no slot (and no outcome) outlives both sides");
        let (promise, ticket) = pair();
        let weak = Arc::downgrade(&ticket.slot);
        promise.fulfil(Err(EngineError::ShutDown));
        assert_eq!(ticket.wait(), Err(EngineError::ShutDown));
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn a_dropped_ticket_marks_its_request_cancelled() {
        let (promise, ticket) = pair();
        assert!(!promise.is_cancelled());
        let ticket = match ticket.wait_timeout(Duration::ZERO) {
            Err(t) => t,
            Ok(r) => panic!("answered without an answer: {r:?}"),
        };
        assert!(!promise.is_cancelled(), "a ticket given back by a timeout still waits");
        drop(ticket.outputs());
        assert!(promise.is_cancelled());
        let weak = Arc::downgrade(promise.slot.as_ref().unwrap());
        promise.cancel();
        assert!(weak.upgrade().is_none(), "a cancelled request frees its slot");
    }

    #[test]
    fn a_dropped_promise_resolves_as_worker_died() {
        let (promise, ticket) = pair();
        drop(promise);
        assert!(ticket.is_ready());
        assert_eq!(ticket.wait(), Err(EngineError::WorkerDied));
    }
}
