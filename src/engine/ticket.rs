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
/// [`EngineError::WorkerDied`].
pub(crate) struct Promise {
    slot: Arc<Slot>,
}

pub(crate) fn pair() -> (Promise, Ticket) {
    let slot = Arc::new(Slot::default());
    (Promise { slot: Arc::clone(&slot) }, Ticket { slot })
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
    /// Answers the ticket.
    pub(crate) fn fulfil(self, outcome: Outcome) {
        let mut st = self.slot.state.lock();
        st.outcome = Some(outcome);
        let waker = st.waker.take();
        drop(st);
        self.slot.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        std::mem::forget(self); // answered: skip the "abandoned" path in Drop
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        let mut st = self.slot.state.lock();
        st.abandoned = true;
        let waker = st.waker.take();
        drop(st);
        self.slot.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}
