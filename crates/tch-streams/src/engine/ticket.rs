//! [`Ticket`]: the caller's handle on one submitted request — waitable from sync code, and a
//! `Future` for async code (no particular runtime needed: it only uses the `Waker` it is given).

use super::error::EngineError;
use parking_lot::{Condvar, Mutex};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tch::Tensor;

type Outcome = Result<Tensor, EngineError>;

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
}

/// The result of a submitted request, once a worker answers it.
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
}

pub(crate) fn pair() -> (Promise, Ticket) {
    let slot = Arc::new(Slot::default());
    (Promise { slot: Some(Arc::clone(&slot)) }, Ticket { slot })
}

impl Ticket {
    /// A ticket that is already answered (used for requests refused at submission).
    pub(crate) fn resolved(outcome: Outcome) -> Ticket {
        let (promise, ticket) = pair();
        promise.fulfil(outcome);
        ticket
    }

    /// Blocks until the request is answered.
    pub fn wait(self) -> Outcome {
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
    pub fn wait_timeout(self, timeout: Duration) -> Result<Outcome, Ticket> {
        let deadline = std::time::Instant::now() + timeout;
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

impl Future for Ticket {
    type Output = Outcome;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut st = self.slot.state.lock();
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
    fn settle(&self, update: impl FnOnce(&mut State)) {
        let mut st = self.state.lock();
        update(&mut st);
        let waker = st.waker.take();
        drop(st);
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
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
    fn a_dropped_promise_resolves_as_worker_died() {
        let (promise, ticket) = pair();
        drop(promise);
        assert!(ticket.is_ready());
        assert_eq!(ticket.wait(), Err(EngineError::WorkerDied));
    }
}
