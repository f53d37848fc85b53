//! Lanes: one request queue per device the engine's workers serve.
//!
//! An input already on a GPU goes to that device's lane, so the workers that take it read it
//! where it lies (no copy between devices, no wait on another device's stream). A host input
//! goes to the lane with the fewest waiting requests. The workers of a device read only its
//! lane. An input on a device that has no workers (fewer workers than devices) is treated like a
//! host input.
//!
//! Thread safety: every method takes `&self`; sending holds a read lock only, so any number of
//! clients submit at once; [`Lanes::close`] takes the write lock once.

use super::request::Request;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::RwLock;
use tch::Device;

pub(crate) struct Lanes {
    devices: Vec<Device>,
    senders: RwLock<Option<Vec<Sender<Request>>>>,
    receivers: Vec<Receiver<Request>>,
}

/// The lane for an input on `device`: that device's lane when it has one, else the lane with the
/// fewest `waiting(lane)` requests (the first of equals). Allocation-free: it runs per request.
pub(crate) fn pick(device: Device, lanes: &[Device], waiting: impl Fn(usize) -> usize) -> usize {
    if lanes.len() <= 1 {
        return 0;
    }
    lanes.iter().position(|&d| d == device && d != Device::Cpu).unwrap_or_else(|| {
        (0..lanes.len()).min_by_key(|&i| (waiting(i), i)).unwrap_or(0)
    })
}

impl Lanes {
    /// One lane of `capacity` requests per distinct device of `devices`, in first-seen order.
    pub(crate) fn new(devices: &[Device], capacity: usize) -> Lanes {
        let mut distinct: Vec<Device> = Vec::new();
        for &d in devices {
            if !distinct.contains(&d) {
                distinct.push(d);
            }
        }
        let (senders, receivers) = distinct.iter().map(|_| crossbeam_channel::bounded(capacity)).unzip();
        Lanes { devices: distinct, senders: RwLock::new(Some(senders)), receivers }
    }

    /// The queue the workers of `device` read. Panics if `device` has no lane (a bug: lanes are
    /// made from the workers' devices).
    pub(crate) fn receiver(&self, device: Device) -> Receiver<Request> {
        let i = self.devices.iter().position(|&d| d == device).expect("every worker's device has a lane");
        self.receivers[i].clone()
    }

    fn lane_of(&self, senders: &[Sender<Request>], request: &Request) -> usize {
        pick(request.device(), &self.devices, |i| senders[i].len())
    }

    /// Queues `request`, waiting while its lane is full; gives it back once the lanes are closed.
    // The error hands the request back (a move of ~136 bytes, only after shutdown).
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, request: Request) -> Result<(), Request> {
        let guard = self.senders.read();
        let Some(senders) = guard.as_ref() else { return Err(request) };
        let lane = self.lane_of(senders, &request);
        senders[lane].send(request).map_err(|e| e.into_inner())
    }

    /// Queues `request` if its lane has room.
    // As `send`: the error is the channel's own, holding the request.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_send(&self, request: Request) -> Result<(), TrySendError<Request>> {
        let guard = self.senders.read();
        let Some(senders) = guard.as_ref() else { return Err(TrySendError::Disconnected(request)) };
        let lane = self.lane_of(senders, &request);
        senders[lane].try_send(request)
    }

    /// Stops intake: workers see their lane close once it is empty. Idempotent.
    pub(crate) fn close(&self) {
        drop(self.senders.write().take());
    }

    /// Requests still queued in any lane (after the workers are gone).
    pub(crate) fn drain(&self) -> Vec<Request> {
        self.receivers.iter().flat_map(Receiver::try_iter).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::pick;
    use tch::Device;

    #[test]
    fn a_gpu_input_goes_to_its_own_device_lane_whatever_the_queue_lengths() {
        let lanes = [Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(pick(Device::Cuda(1), &lanes, |i| [0, 9][i]), 1);
        assert_eq!(pick(Device::Cuda(0), &lanes, |i| [9, 0][i]), 0);
    }

    #[test]
    fn a_host_input_goes_to_the_shortest_lane_first_of_equals() {
        let lanes = [Device::Cuda(0), Device::Cuda(1), Device::Cuda(2)];
        assert_eq!(pick(Device::Cpu, &lanes, |i| [5, 2, 7][i]), 1);
        assert_eq!(pick(Device::Cpu, &lanes, |i| [3, 3, 3][i]), 0);
        assert_eq!(pick(Device::Cpu, &lanes, |i| [4, 3, 3][i]), 1);
    }

    #[test]
    fn an_input_on_a_device_without_workers_is_balanced_like_a_host_input() {
        let lanes = [Device::Cuda(0)];
        assert_eq!(pick(Device::Cuda(1), &lanes, |_| 12), 0);
        let lanes = [Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(pick(Device::Cuda(2), &lanes, |i| [4, 1][i]), 1);
    }

    #[test]
    fn a_cpu_engine_has_one_lane_for_every_input() {
        assert_eq!(pick(Device::Cpu, &[Device::Cpu], |_| 100), 0);
    }
}
