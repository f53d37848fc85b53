//! Lanes: one request queue per device the engine's workers serve.
//!
//! An input already on a GPU goes to that device's lane, so the workers that take it read it
//! where it lies (no copy between devices, no wait on another device's stream). A host input
//! goes to the live lane with the fewest waiting requests. The workers of a device read only its
//! lane. An input on a device that has no workers (fewer workers than devices) is treated like a
//! host input.
//!
//! Capacity is a count, not a buffer: a lane's queue grows only with what is in it (nothing is
//! allocated in proportion to the capacity). A submitter waits for room on a condition variable
//! *without* holding any lock of the lanes, so closing (which takes the write lock for a moment)
//! never waits for a blocked submitter, and `try_send` never waits at all.
//!
//! A lane whose workers have all died (a panic, then a replacement that could not start) is
//! *dead*: its queued requests fail with [`EngineError::NoWorkers`], GPU inputs for it are
//! refused, host inputs go to the other lanes.
//!
//! Thread safety: every method takes `&self`; any number of clients submit at once.

use super::error::EngineError;
use super::metrics::Metrics;
use super::request::Request;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

/// Why a request was not queued; it comes back with the request where there is one.
pub(crate) enum SendError {
    /// The lanes are closed (shutdown).
    Closed(Request),
    /// `try_send` only: the lane is full.
    Full(Request),
    /// No live worker can take it; the message says which device.
    NoWorkers(Request, String),
}

/// One lane's shared state; workers hold it through [`LaneRx`] and [`LiveWorker`].
pub(crate) struct Lane {
    device: Device,
    /// Requests queued and not yet taken by a worker.
    queued: AtomicUsize,
    capacity: usize,
    room: Mutex<()>,
    freed: Condvar,
    /// Submitters waiting for room: a worker takes the lock to wake one only when there is one,
    /// so the common case (room to spare) costs an atomic per request, not a lock.
    waiting: AtomicUsize,
    closed: AtomicBool,
    /// Worker threads alive on this lane (counted from spawn to thread exit).
    live: AtomicUsize,
    dead: AtomicBool,
    rx: Receiver<Request>,
    metrics: Arc<Metrics>,
}

impl Lane {
    fn release(&self) {
        // SeqCst pairs with `reserve`: either this load sees the waiter's increment, or the
        // waiter's check of `queued` sees this decrement and it does not wait.
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _g = self.room.lock();
            self.freed.notify_one();
        }
    }

    /// Reserves room for one request; `wait` says whether to wait for it.
    fn reserve(&self, wait: bool) -> Result<(), Stop> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Stop::Closed);
            }
            if self.dead.load(Ordering::Acquire) {
                return Err(Stop::Dead);
            }
            let q = self.queued.load(Ordering::Acquire);
            if q < self.capacity {
                if self.queued.compare_exchange(q, q + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Ok(());
                }
                continue;
            }
            if !wait {
                return Err(Stop::Full);
            }
            let mut g = self.room.lock();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while self.queued.load(Ordering::SeqCst) >= self.capacity
                && !self.closed.load(Ordering::Acquire)
                && !self.dead.load(Ordering::Acquire)
            {
                self.freed.wait(&mut g);
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Fails every request still queued here (a dead lane): each is counted and answered (or,
    /// its caller gone, counted as cancelled).
    fn fail_queued(&self) {
        for r in self.rx.try_iter() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let Some(r) = r.live() else { continue };
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            r.promise.fulfil(Err(EngineError::NoWorkers(self.no_workers())));
        }
    }

    fn no_workers(&self) -> String {
        format!(
            "every worker serving {:?} has died (a model panic, then a replacement that could not start); \
             this engine no longer serves that device: rebuild it",
            self.device
        )
    }

    fn wake_all(&self) {
        let _g = self.room.lock();
        self.freed.notify_all();
    }
}

enum Stop {
    Closed,
    Full,
    Dead,
}

/// Counts one worker thread as alive on its lane from creation to drop. The last live worker of
/// a lane that is not shutting down marks it dead and fails what is queued there.
pub(crate) struct LiveWorker(Arc<Lane>);

impl LiveWorker {
    pub(crate) fn new(lane: &Arc<Lane>) -> LiveWorker {
        lane.live.fetch_add(1, Ordering::AcqRel);
        LiveWorker(Arc::clone(lane))
    }
}

impl Drop for LiveWorker {
    fn drop(&mut self) {
        let lane = &self.0;
        if lane.live.fetch_sub(1, Ordering::AcqRel) == 1 && !lane.closed.load(Ordering::Acquire) {
            tracing::warn!("no worker left on {:?}: its queued requests fail and new ones are refused", lane.device);
            lane.dead.store(true, Ordering::Release);
            lane.wake_all();
            lane.fail_queued();
        }
    }
}

/// A worker's end of its lane: receiving a request frees its room for a submitter.
#[derive(Clone)]
pub(crate) struct LaneRx(Arc<Lane>);

impl LaneRx {
    /// Blocks for the next request; `None` once the lane is closed and empty. Polls for a moment
    /// before parking (see [`handoff`](super::handoff)).
    pub(crate) fn recv(&self) -> Option<Request> {
        if let Some(r) = super::handoff::spin(super::handoff::SPIN, || self.0.rx.try_recv().ok()) {
            self.0.release();
            return Some(r);
        }
        let r = self.0.rx.recv().ok()?;
        self.0.release();
        Some(r)
    }

    /// The next request if one is queued.
    pub(crate) fn try_recv(&self) -> Result<Request, TryRecvError> {
        let r = self.0.rx.try_recv()?;
        self.0.release();
        Ok(r)
    }

    /// The next request, waiting until `deadline` at most.
    pub(crate) fn recv_deadline(&self, deadline: Instant) -> Result<Request, RecvTimeoutError> {
        let r = self.0.rx.recv_deadline(deadline)?;
        self.0.release();
        Ok(r)
    }

    /// The lane itself (for the worker's liveness guard).
    pub(crate) fn lane(&self) -> &Arc<Lane> {
        &self.0
    }
}

pub(crate) struct Lanes {
    devices: Vec<Device>,
    lanes: Vec<Arc<Lane>>,
    senders: RwLock<Option<Vec<Sender<Request>>>>,
}

/// The lane for an input on `device`: that device's lane when it has one, else the lane with the
/// fewest `waiting(lane)` requests (the first of equals) among those `usable`. Allocation-free:
/// it runs per request. `None` when no lane is usable.
pub(crate) fn pick(device: Device, lanes: &[Device], waiting: impl Fn(usize) -> usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    if let Some(i) = lanes.iter().position(|&d| d == device && d != Device::Cpu) {
        return Some(i);
    }
    (0..lanes.len()).filter(|&i| usable(i)).min_by_key(|&i| (waiting(i), i))
}

impl Lanes {
    /// One lane of `capacity` requests per distinct device of `devices`, in first-seen order.
    pub(crate) fn new(devices: &[Device], capacity: usize, metrics: &Arc<Metrics>) -> Lanes {
        let mut distinct: Vec<Device> = Vec::new();
        for &d in devices {
            if !distinct.contains(&d) {
                distinct.push(d);
            }
        }
        let mut senders = Vec::new();
        let mut lanes = Vec::new();
        for &device in &distinct {
            let (tx, rx) = crossbeam_channel::unbounded();
            senders.push(tx);
            lanes.push(Arc::new(Lane {
                device,
                queued: AtomicUsize::new(0),
                capacity,
                room: Mutex::new(()),
                freed: Condvar::new(),
                waiting: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                live: AtomicUsize::new(0),
                dead: AtomicBool::new(false),
                rx,
                metrics: Arc::clone(metrics),
            }));
        }
        Lanes { devices: distinct, lanes, senders: RwLock::new(Some(senders)) }
    }

    /// The queue the workers of `device` read. Panics if `device` has no lane (a bug: lanes are
    /// made from the workers' devices).
    pub(crate) fn receiver(&self, device: Device) -> LaneRx {
        let i = self.devices.iter().position(|&d| d == device).expect("every worker's device has a lane");
        LaneRx(Arc::clone(&self.lanes[i]))
    }

    /// Queues `request`; with `wait`, waits while its lane is full (holding no lock).
    pub(crate) fn send(&self, request: Request, wait: bool) -> Result<(), SendError> {
        let device = request.device();
        let lanes = &self.lanes;
        let Some(i) = pick(device, &self.devices, |i| lanes[i].queued.load(Ordering::Relaxed), |i| !lanes[i].dead.load(Ordering::Acquire))
        else {
            let why = format!("every worker of this engine ({:?}) has died; it serves nothing any more: rebuild it", self.devices);
            return Err(SendError::NoWorkers(request, why));
        };
        let lane = &lanes[i];
        match lane.reserve(wait) {
            Ok(()) => {}
            Err(Stop::Closed) => return Err(SendError::Closed(request)),
            Err(Stop::Full) => return Err(SendError::Full(request)),
            Err(Stop::Dead) => {
                let msg = lane.no_workers();
                return Err(SendError::NoWorkers(request, msg));
            }
        }
        let guard = self.senders.read();
        let Some(senders) = guard.as_ref() else {
            lane.release();
            return Err(SendError::Closed(request));
        };
        if let Err(e) = senders[i].send(request) {
            lane.release();
            return Err(SendError::Closed(e.into_inner()));
        }
        drop(guard);
        // The lane may have died between the check and the send: nobody would take it then.
        if lane.dead.load(Ordering::Acquire) {
            lane.fail_queued();
        }
        Ok(())
    }

    /// Stops intake: workers see their lane close once it is empty; waiting submitters give up.
    /// Idempotent.
    pub(crate) fn close(&self) {
        for lane in &self.lanes {
            lane.closed.store(true, Ordering::Release);
            lane.wake_all();
        }
        drop(self.senders.write().take());
    }

    /// Requests still queued in any lane (after the workers are gone).
    pub(crate) fn drain(&self) -> Vec<Request> {
        let mut out = Vec::new();
        for lane in &self.lanes {
            for r in lane.rx.try_iter() {
                lane.queued.fetch_sub(1, Ordering::AcqRel);
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::pick;
    use tch::Device;

    const ALL: fn(usize) -> bool = |_| true;

    #[test]
    fn a_gpu_input_goes_to_its_own_device_lane_whatever_the_queue_lengths() {
        let lanes = [Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(pick(Device::Cuda(1), &lanes, |i| [0, 100][i], ALL), Some(1));
        assert_eq!(pick(Device::Cuda(0), &lanes, |i| [100, 0][i], ALL), Some(0));
    }

    #[test]
    fn a_host_input_goes_to_the_shortest_live_lane_first_of_equals() {
        let lanes = [Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(pick(Device::Cpu, &lanes, |i| [5, 2][i], ALL), Some(1));
        assert_eq!(pick(Device::Cpu, &lanes, |i| [3, 3][i], ALL), Some(0));
        assert_eq!(pick(Device::Cpu, &lanes, |i| [5, 2][i], |i| i == 0), Some(0), "a dead lane is skipped");
        assert_eq!(pick(Device::Cpu, &lanes, |_| 0, |_| false), None, "no live lane");
    }

    #[test]
    fn an_input_on_a_device_without_workers_is_balanced_like_a_host_input() {
        let lanes = [Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(pick(Device::Cuda(2), &lanes, |i| [4, 1][i], ALL), Some(1));
    }

    #[test]
    fn a_cpu_engine_has_one_lane_for_every_input() {
        assert_eq!(pick(Device::Cpu, &[Device::Cpu], |_| 7, ALL), Some(0));
    }
}
