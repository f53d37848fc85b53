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
//! Invariants: a [`ReadyEvents`] belongs to one worker thread; its events are re-recorded only
//! after the wait on their previous record was queued (a stream wait applies to the record that
//! preceded it), or after the host waited for it.
//!
//! Which event a record uses depends on the backend. On CUDA one event per device serves every
//! producer stream: re-recording captures the new stream's work, whatever the event marked before.
//! On MPS an event is a shared event whose signal *sets* a value, and signals on different
//! streams land in whatever order those streams finish: re-recorded on an idle stream while its
//! record on a busy one is pending, the event goes back to the older value when the busy stream
//! finishes, and waits for the newer one stall. A libtorch with an earlier revision of our MPS
//! patch hangs there; the current one makes the new record wait for the old one instead, which
//! would hold the second producer's later work behind the first's. So on MPS each producer stream
//! gets its own event: every event is recorded on one stream only, where its signals land in
//! order. There are at most 33 MPS streams per device, so the map stays small.

use crate::backend::Backend;
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

/// Which of a worker's events a producer mark records: see the module notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EventKey {
    /// One event for every stream of the device (CUDA).
    Device(Device),
    /// One event per producer stream (MPS).
    Stream(Stream),
}

impl EventKey {
    fn of(mark: &ReadyMark) -> EventKey {
        match mark.stream.backend() {
            Backend::Mps => EventKey::Stream(mark.stream),
            Backend::Cuda | Backend::Cpu => EventKey::Device(mark.device),
        }
    }
}

/// A worker's events, reused batch after batch: one per device, or per producer stream on MPS.
#[derive(Default)]
pub(crate) struct ReadyEvents {
    events: HashMap<EventKey, Event>,
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
        let event = match self.events.entry(EventKey::of(mark)) {
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

    fn stream(backend: Backend, id: i64) -> Stream {
        Stream::made_up(backend, 0, id)
    }

    #[test]
    fn mps_producers_get_an_event_each_cuda_producers_share_one() {
        let mark = |backend: Backend, device: Device, id: i64| ReadyMark { device, stream: stream(backend, id) };
        // MPS: a shared event re-recorded on another stream can go back to an older value
        let (m1, m2) = (mark(Backend::Mps, Device::Mps, 1), mark(Backend::Mps, Device::Mps, 2));
        assert_eq!(EventKey::of(&m1), EventKey::Stream(m1.stream));
        assert_ne!(EventKey::of(&m1), EventKey::of(&m2));
        assert_eq!(EventKey::of(&m1), EventKey::of(&mark(Backend::Mps, Device::Mps, 1)));
        // CUDA: one event per device, whatever the producer stream
        let (c1, c2) = (mark(Backend::Cuda, Device::Cuda(0), 1), mark(Backend::Cuda, Device::Cuda(0), 2));
        assert_eq!(EventKey::of(&c1), EventKey::Device(Device::Cuda(0)));
        assert_eq!(EventKey::of(&c1), EventKey::of(&c2));
        assert_ne!(EventKey::of(&c1), EventKey::of(&mark(Backend::Cuda, Device::Cuda(1), 1)));
        let cpu = ReadyMark { device: Device::Cpu, stream: Stream::default_for(Device::Cpu).unwrap() };
        assert_eq!(EventKey::of(&cpu), EventKey::Device(Device::Cpu));
    }
}
