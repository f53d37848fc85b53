//! Forming batches from the queue: take one request, then gather compatible ones until the batch
//! is full or the wait is over. Incompatible requests are kept aside for a later batch of their
//! own — never refused.
//!
//! With shape buckets, a batch that would be padded by more than an eighth of its bucket is
//! trimmed instead to the largest bucket it fills: its newest requests wait for the next batch
//! (first in line), so that uniform requests of several samples (64-row requests, say) run as
//! full buckets rather than, for example, 576 samples padded to 1024.

use super::buckets::Buckets;
use super::config::Batching;
use super::error::EngineError;
use super::lanes::LaneRx;
use super::metrics::Metrics;
use super::request::{BatchKey, Request};
use crossbeam_channel::RecvTimeoutError;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The requests a worker holds outside any batch: those it inherited from the worker it
/// replaces, and those it set aside while gathering (another batch key, or trimmed from a
/// batch). Shared with the engine, so that a `shutdown_timeout` that gives up on a stuck worker
/// can answer them ([`Held::give_up`]); the worker takes each one under the same lock, so every
/// request is answered exactly once.
pub(crate) struct Held {
    state: Mutex<HeldState>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct HeldState {
    /// Served one at a time, before anything else (the replaced worker's leftovers).
    inherited: VecDeque<Request>,
    aside: VecDeque<Request>,
    /// Shutdown gave up on this worker: what it would set aside from now on fails at once.
    given_up: bool,
}

impl Held {
    pub(crate) fn new(inherited: Vec<Request>, metrics: Arc<Metrics>) -> Held {
        Held { state: Mutex::new(HeldState { inherited: inherited.into(), ..HeldState::default() }), metrics }
    }

    /// The next inherited request, if any is left.
    pub(crate) fn next_inherited(&self) -> Option<Request> {
        self.state.lock().inherited.pop_front()
    }

    fn pop_aside(&self) -> Option<Request> {
        self.state.lock().aside.pop_front()
    }

    /// Moves set-aside requests of `key` into `batch` (oldest first) while they fit in
    /// `max_batch` samples, counting them into `rows`.
    /// Set-aside requests whose caller has gone are let go on the way (see [`Request::live`]).
    fn gather(&self, key: &BatchKey, rows: &mut i64, max_batch: i64, batch: &mut Vec<Request>) {
        let mut gone = Vec::new();
        let mut st = self.state.lock();
        let mut i = 0;
        while i < st.aside.len() && *rows < max_batch {
            if st.aside[i].is_cancelled() {
                gone.push(st.aside.remove(i).expect("index in range"));
            } else if st.aside[i].key == *key && *rows + st.aside[i].rows <= max_batch {
                let r = st.aside.remove(i).expect("index in range");
                *rows += r.rows;
                batch.push(r);
            } else {
                i += 1;
            }
        }
        drop(st);
        for r in gone {
            let _gone = r.live(); // counted as cancelled, outside the lock
        }
    }

    /// Sets `r` aside, last in line (`first`: first in line); returns how many are aside.
    fn set_aside(&self, r: Request, first: bool) -> usize {
        let mut st = self.state.lock();
        if st.given_up {
            drop(st);
            self.fail(vec![r]);
            return 0;
        }
        if first {
            st.aside.push_front(r);
        } else {
            st.aside.push_back(r);
        }
        st.aside.len()
    }

    /// Everything held, for a replacement worker: inherited first, then set aside.
    pub(crate) fn take_all(&self) -> Vec<Request> {
        let mut st = self.state.lock();
        let HeldState { inherited, aside, .. } = &mut *st;
        inherited.drain(..).chain(aside.drain(..)).collect()
    }

    /// Shutdown gave up waiting for this worker: fails everything it holds, and whatever it
    /// would set aside later, with [`EngineError::ShutdownTimeout`]. Returns how many failed.
    pub(crate) fn give_up(&self) -> usize {
        let taken = {
            let mut st = self.state.lock();
            st.given_up = true;
            let HeldState { inherited, aside, .. } = &mut *st;
            inherited.drain(..).chain(aside.drain(..)).collect::<Vec<_>>()
        };
        let n = taken.len();
        self.fail(taken);
        n
    }

    /// Counts and answers (outside the lock: answering runs the callers' wakers).
    fn fail(&self, requests: Vec<Request>) {
        for r in requests.into_iter().filter_map(Request::live) {
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            r.promise.fulfil(Err(EngineError::ShutdownTimeout));
        }
    }
}

/// A worker's batching state: its queue and the requests it holds (see [`Held`]).
pub(crate) struct Batcher {
    rx: LaneRx,
    policy: Batching,
    buckets: Arc<Buckets>,
    held: Arc<Held>,
}

impl Batcher {
    pub(crate) fn new(rx: LaneRx, policy: Batching, buckets: Arc<Buckets>, held: Arc<Held>) -> Self {
        Batcher { rx, policy, buckets, held }
    }

    /// The next batch (all requests in it share a batch key), or `None` once the queue is closed
    /// and drained. Blocks while the queue is empty. Requests whose caller has gone are let go as
    /// they are taken (see [`Request::live`]): they take no room in a batch.
    pub(crate) fn next_batch(&mut self) -> Option<Vec<Request>> {
        let first = loop {
            let r = match self.held.pop_aside() {
                Some(r) => r,
                None => self.rx.recv()?,
            };
            if let Some(r) = r.live() {
                break r;
            }
        };
        let (max_batch, max_wait) = match self.policy {
            Batching::Off | Batching::Auto => return Some(vec![first]), // Auto is resolved before workers start
            Batching::Dynamic { max_batch, max_wait } => (max_batch.max(1) as i64, max_wait),
        };
        let key = first.key.clone();
        let mut rows = first.rows;
        let mut batch = vec![first];
        // Set-aside requests first (they are older), keeping the order of the rest.
        self.held.gather(&key, &mut rows, max_batch, &mut batch);
        // A wait too long to express as an instant (Duration::MAX) means: until the batch is full.
        let deadline = Instant::now().checked_add(max_wait);
        while rows < max_batch {
            let next = match self.rx.try_recv() {
                Ok(r) => r,
                Err(_) => match deadline {
                    Some(deadline) => match self.rx.recv_deadline(deadline) {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match self.rx.recv() {
                        Some(r) => r,
                        None => break,
                    },
                },
            };
            let Some(next) = next.live() else { continue };
            if next.key == key && rows + next.rows <= max_batch {
                rows += next.rows;
                batch.push(next);
            } else if self.held.set_aside(next, false) >= max_batch as usize {
                break; // plenty waiting elsewhere: serve what we have
            }
        }
        self.trim(&mut batch, rows);
        Some(batch)
    }

    /// Trims a batch that would carry more than an eighth of padding down to the largest bucket
    /// it fills (see the module docs); the trimmed requests go first in line for the next batch.
    fn trim(&mut self, batch: &mut Vec<Request>, mut rows: i64) {
        let fit = self.buckets.fit(rows);
        if batch.len() < 2 || (fit - rows) * 8 <= fit {
            return;
        }
        let Some(target) = self.buckets.largest_at_most(rows) else { return };
        while rows > target && batch.len() > 1 {
            let r = batch.pop().expect("more than one request");
            rows -= r.rows;
            self.held.set_aside(r, true);
        }
    }
}
