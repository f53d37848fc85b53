//! Reusable events that mark when a request's GPU input is ready on the caller's stream.
//!
//! Creating and destroying a driver event per request costs two heavyweight driver calls on the
//! hot path; the engine instead keeps used events and re-records them. Re-recording is safe once
//! the worker has *queued* its wait: a stream wait applies to the record that preceded it.

use crate::stream::{Event, Stream};
use parking_lot::Mutex;
use std::collections::HashMap;
use tch::{Device, Tensor};

/// Most idle events kept per device.
const KEEP: usize = 4096;

/// Idle events by device (an event, once recorded, belongs to one device).
#[derive(Default)]
pub(crate) struct EventPool {
    free: Mutex<HashMap<Device, Vec<Event>>>,
}

impl EventPool {
    /// For a GPU input: an event recorded on the calling thread's current stream, after which the
    /// input is ready. `None` for host tensors (nothing to wait for).
    pub(crate) fn mark_ready(&self, input: &Tensor) -> Option<(Device, Event)> {
        let device = input.device();
        if device == Device::Cpu {
            return None;
        }
        let stream = Stream::current(device).ok()?;
        let pooled = self.free.lock().get_mut(&device).and_then(Vec::pop);
        let mut event = match pooled {
            Some(e) => e,
            None => Event::new(device).ok()?,
        };
        event.record(&stream).ok()?;
        Some((device, event))
    }

    /// Returns an event whose wait has been queued.
    pub(crate) fn give_back(&self, device: Device, event: Event) {
        let mut free = self.free.lock();
        let idle = free.entry(device).or_default();
        if idle.len() < KEEP {
            idle.push(event);
        }
    }
}
