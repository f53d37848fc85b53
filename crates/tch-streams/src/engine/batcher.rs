//! Forming batches from the queue: take one request, then gather compatible ones until the batch
//! is full or the wait is over. Incompatible requests are kept aside for a later batch of their
//! own — never refused.

use super::config::Batching;
use super::lanes::LaneRx;
use super::request::Request;
use crossbeam_channel::RecvTimeoutError;
use std::collections::VecDeque;
use std::time::Instant;

/// A worker's batching state: its queue and the requests it set aside.
pub(crate) struct Batcher {
    rx: LaneRx,
    policy: Batching,
    aside: VecDeque<Request>,
}

impl Batcher {
    pub(crate) fn new(rx: LaneRx, policy: Batching) -> Self {
        Batcher { rx, policy, aside: VecDeque::new() }
    }

    /// The next batch (all requests in it share a batch key), or `None` once the queue is closed
    /// and drained. Blocks while the queue is empty.
    pub(crate) fn next_batch(&mut self) -> Option<Vec<Request>> {
        let first = match self.aside.pop_front() {
            Some(r) => r,
            None => self.rx.recv()?,
        };
        let (max_batch, max_wait) = match self.policy {
            Batching::Off | Batching::Auto => return Some(vec![first]), // Auto is resolved before workers start
            Batching::Dynamic { max_batch, max_wait } => (max_batch.max(1) as i64, max_wait),
        };
        let key = first.key.clone();
        let mut rows = first.rows;
        let mut batch = vec![first];
        // Set-aside requests first (they are older), keeping the order of the rest.
        let mut i = 0;
        while i < self.aside.len() && rows < max_batch {
            if self.aside[i].key == key && rows + self.aside[i].rows <= max_batch {
                let r = self.aside.remove(i).expect("index in range");
                rows += r.rows;
                batch.push(r);
            } else {
                i += 1;
            }
        }
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
            if next.key == key && rows + next.rows <= max_batch {
                rows += next.rows;
                batch.push(next);
            } else {
                self.aside.push_back(next);
                if self.aside.len() >= max_batch as usize {
                    break; // plenty waiting elsewhere: serve what we have
                }
            }
        }
        Some(batch)
    }

    /// Requests still set aside (answered by the worker before it exits).
    pub(crate) fn take_aside(&mut self) -> Vec<Request> {
        self.aside.drain(..).collect()
    }
}
