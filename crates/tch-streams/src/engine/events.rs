//! Ordering a worker after the streams that produced a request's GPU inputs, without a driver
//! call per request.
//!
//! At submission the engine only notes each input's *producer*: the submitting thread's current
//! stream on the input's device (a thread-local read, no driver call). Before running a batch,
//! the worker records one event on each distinct producer stream of the batch and makes its own
//! stream wait for it (two driver calls per distinct stream and batch, however many requests
//! share it). That is enough: the producer enqueued the input's work before it submitted, the
//! worker records after it received the request, and a stream runs its work in the order it
//! was enqueued, so the event completes only after the input is ready. It may also cover work
//! the producer enqueued after submitting: a longer wait, never a wrong one.
//!
//! This matters most for callers on the default stream, where an event recorded per request
//! serialises every submitting thread on the legacy default stream. The worker first asks
//! whether the producer stream is idle (a query, which does not enqueue anything): then
//! everything enqueued there, the inputs included, is done and there is nothing to wait for.
//!
//! Invariants: a [`ReadyMarks`] belongs to one worker thread; its events are re-recorded only
//! after the wait on their previous record was queued (a stream wait applies to the record that
//! preceded it), or after the host waited for it.

use crate::stream::{Event, Stream};
use std::collections::HashMap;
use tch::{Device, Tensor};

/// The stream a request's inputs on one device were made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadyMark {
    pub(crate) device: Device,
    pub(crate) stream: Stream,
}

/// For a request's GPU inputs: per device they lie on, the calling thread's current stream
/// there. Nothing for host tensors. A device without a current stream is skipped with a warning
/// (the request then fails its device check).
pub(crate) fn producers(inputs: &[Tensor]) -> Vec<ReadyMark> {
    let mut marks: Vec<ReadyMark> = Vec::new();
    for device in inputs.iter().map(Tensor::device) {
        if device == Device::Cpu || marks.iter().any(|m| m.device == device) {
            continue;
        }
        match Stream::current(device) {
            Ok(stream) => marks.push(ReadyMark { device, stream }),
            Err(err) => tracing::warn!(?device, %err, "no current stream for a request's input"),
        }
    }
    marks
}

/// Distinct producer streams of a batch, and how many marks they cover in all.
///
/// ```text
/// requests:  [s1] [s1] [s2] [s1]   ->   distinct [s1, s2], total 4
/// ```
pub(crate) fn distinct(marks: impl IntoIterator<Item = ReadyMark>) -> (Vec<ReadyMark>, usize) {
    let mut out: Vec<ReadyMark> = Vec::new();
    let mut total = 0;
    for m in marks {
        total += 1;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    (out, total)
}

/// A worker's events, one per device (reused batch after batch).
#[derive(Default)]
pub(crate) struct ReadyEvents {
    by_device: HashMap<Device, Event>,
}

impl ReadyEvents {
    /// Orders `worker` (on `own`) after everything enqueued so far on `mark.stream`: on the
    /// device when it is the worker's device, on the host otherwise (kernels on another device's
    /// stream are not ordered by a wait on this one).
    pub(crate) fn order_after(&mut self, mark: &ReadyMark, worker: &Stream, own: Device) -> crate::Result<()> {
        if mark.stream == *worker {
            return Ok(()); // the same stream: already in order
        }
        if mark.stream.query()? {
            return Ok(()); // idle: every input it produced is complete
        }
        let event = match self.by_device.entry(mark.device) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Event::new(mark.device)?),
        };
        event.record(&mark.stream)?;
        if mark.device == own {
            event.wait(worker)
        } else {
            event.synchronize()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wait_per_distinct_producer_stream() {
        let cpu = Stream::default_for(Device::Cpu).unwrap();
        let m = ReadyMark { device: Device::Cpu, stream: cpu };
        let (d, total) = distinct(vec![m, m, m]);
        assert_eq!((d.len(), total), (1, 3));
        assert!(producers(&[Tensor::zeros([1], (tch::Kind::Float, Device::Cpu))]).is_empty(), "host inputs need no ordering");
    }
}
