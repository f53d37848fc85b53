//! Reusable events that mark when a request's GPU input is ready on the caller's stream.
//!
//! Creating and destroying a driver event per request costs two heavyweight driver calls on the
//! hot path; the engine instead keeps used events and re-records them. Re-recording is safe once
//! the worker has *queued* its wait: a stream wait applies to the record that preceded it.
//!
//! Each mark also names its producer (the submitting thread and its stream) and a per-thread
//! sequence number. Two marks of one producer were recorded on one stream in that thread's
//! program order, so the later one completes only after the earlier: a worker serving a batch
//! waits once per producer, on its latest mark, and returns the others unused
//! ([`latest_per_producer`]).

use crate::stream::{Event, Stream};
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::thread::ThreadId;
use tch::{Device, Tensor};

/// An event recorded on a submitting thread's current stream after its inputs were queued.
pub(crate) struct ReadyMark {
    pub(crate) device: Device,
    pub(crate) event: Event,
    producer: (ThreadId, Stream),
    seq: u64,
}

thread_local! {
    /// Marks recorded by this thread so far: orders the marks of one producer.
    static MARKS: Cell<u64> = const { Cell::new(0) };
}

/// Splits `marks` into the ones to wait for (the latest of each producer) and the ones made
/// redundant by a later mark of the same producer.
pub(crate) fn latest_per_producer(marks: Vec<ReadyMark>) -> (Vec<ReadyMark>, Vec<ReadyMark>) {
    let mut latest: Vec<ReadyMark> = Vec::new();
    let mut redundant = Vec::new();
    for m in marks {
        match latest.iter_mut().find(|l| l.producer == m.producer) {
            Some(l) if l.seq < m.seq => redundant.push(std::mem::replace(l, m)),
            Some(_) => redundant.push(m),
            None => latest.push(m),
        }
    }
    (latest, redundant)
}

/// Most idle events kept per device.
const KEEP: usize = 4096;

/// Idle events by device (an event, once recorded, belongs to one device).
#[derive(Default)]
pub(crate) struct EventPool {
    free: Mutex<HashMap<Device, Vec<Event>>>,
}

impl EventPool {
    /// For a request's GPU inputs: per device they lie on, an event recorded on the calling
    /// thread's current stream there, after which they are ready. Nothing for host tensors
    /// (nothing to wait for), and nothing either when no event could be recorded: then this call
    /// has already waited for the caller's stream on the host, so the inputs are ready for any
    /// stream when it returns (slower, never wrong).
    pub(crate) fn mark_ready_all(&self, inputs: &[Tensor]) -> Vec<ReadyMark> {
        let mut devices: Vec<Device> = Vec::new();
        for d in inputs.iter().map(Tensor::device) {
            if d != Device::Cpu && !devices.contains(&d) {
                devices.push(d);
            }
        }
        devices.into_iter().filter_map(|d| self.mark_ready(d)).collect()
    }

    /// One device's event (see [`mark_ready_all`](EventPool::mark_ready_all)).
    fn mark_ready(&self, device: Device) -> Option<ReadyMark> {
        let stream = match Stream::current(device) {
            Ok(stream) => stream,
            Err(err) => {
                // The request fails its device check later; there is no stream to order against.
                tracing::warn!(?device, %err, "no current stream for a request's input");
                return None;
            }
        };
        let pooled = self.free.lock().get_mut(&device).and_then(Vec::pop);
        let recorded = match pooled {
            Some(event) => Ok(event),
            None => Event::new(device),
        }
        .and_then(|mut event| event.record(&stream).map(|()| event));
        match recorded {
            Ok(event) => {
                let seq = MARKS.with(|c| {
                    c.set(c.get() + 1);
                    c.get()
                });
                Some(ReadyMark { device, event, producer: (std::thread::current().id(), stream), seq })
            }
            Err(err) => {
                tracing::warn!(%stream, %err, "input-ready event not recorded; waiting for the caller's stream instead");
                if let Err(err) = stream.synchronize() {
                    tracing::error!(%stream, %err, "could not wait for the caller's stream either");
                }
                None
            }
        }
    }

    /// Returns marks whose waits have been queued, or that nobody will wait for.
    pub(crate) fn give_back(&self, marks: impl IntoIterator<Item = ReadyMark>) {
        let mut free = self.free.lock();
        for m in marks {
            let idle = free.entry(m.device).or_default();
            if idle.len() < KEEP {
                idle.push(m.event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(thread: ThreadId, seq: u64) -> ReadyMark {
        let stream = Stream::default_for(Device::Cpu).unwrap();
        ReadyMark { device: Device::Cpu, event: Event::new(Device::Cpu).unwrap(), producer: (thread, stream), seq }
    }

    #[test]
    fn one_wait_per_producer_on_its_latest_mark() {
        let me = std::thread::current().id();
        let other = std::thread::spawn(|| std::thread::current().id()).join().unwrap();
        let marks = vec![mark(me, 3), mark(other, 1), mark(me, 5), mark(me, 4), mark(other, 2)];
        let (latest, redundant) = latest_per_producer(marks);
        let mut kept: Vec<(bool, u64)> = latest.iter().map(|m| (m.producer.0 == me, m.seq)).collect();
        kept.sort();
        assert_eq!(kept, vec![(false, 2), (true, 5)]);
        let mut dropped: Vec<u64> = redundant.iter().map(|m| m.seq).collect();
        dropped.sort();
        assert_eq!(dropped, vec![1, 3, 4]);
    }
}
