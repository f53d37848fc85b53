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
use super::lanes::LaneRx;
use super::request::Request;
use crossbeam_channel::RecvTimeoutError;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// A worker's batching state: its queue and the requests it set aside.
pub(crate) struct Batcher {
    rx: LaneRx,
    policy: Batching,
    buckets: Arc<Buckets>,
    aside: VecDeque<Request>,
}

impl Batcher {
    pub(crate) fn new(rx: LaneRx, policy: Batching, buckets: Arc<Buckets>) -> Self {
        Batcher { rx, policy, buckets, aside: VecDeque::new() }
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
            self.aside.push_front(r);
        }
    }

    /// Requests still set aside (answered by the worker before it exits).
    pub(crate) fn take_aside(&mut self) -> Vec<Request> {
        self.aside.drain(..).collect()
    }
}
