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
    /// For a request's GPU inputs: per device they lie on, an event recorded on the calling
    /// thread's current stream there, after which they are ready. Nothing for host tensors
    /// (nothing to wait for), and nothing either when no event could be recorded: then this call
    /// has already waited for the caller's stream on the host, so the inputs are ready for any
    /// stream when it returns (slower, never wrong).
    pub(crate) fn mark_ready_all(&self, inputs: &[Tensor]) -> Vec<(Device, Event)> {
        let mut devices: Vec<Device> = Vec::new();
        for d in inputs.iter().map(Tensor::device) {
            if d != Device::Cpu && !devices.contains(&d) {
                devices.push(d);
            }
        }
        devices.into_iter().filter_map(|d| self.mark_ready(d)).collect()
    }

    /// One device's event (see [`mark_ready_all`](EventPool::mark_ready_all)).
    fn mark_ready(&self, device: Device) -> Option<(Device, Event)> {
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
            Ok(event) => Some((device, event)),
            Err(err) => {
                tracing::warn!(%stream, %err, "input-ready event not recorded; waiting for the caller's stream instead");
                if let Err(err) = stream.synchronize() {
                    tracing::error!(%stream, %err, "could not wait for the caller's stream either");
                }
                None
            }
        }
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
