//! [`Event`]: a marker in a stream's queue, for device-side ordering between streams, host
//! waits, and timing.

use super::handle::Stream;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi::{self, TssEvent};
use crate::status::check;
use std::time::{Duration, Instant};

/// An event on one backend. Record it on a stream; then another stream can [`wait`](Event::wait)
/// for it on the device, or the host can [`synchronize`](Event::synchronize) with it.
///
/// `Send` (it may be recorded on one thread and waited on by another) but not `Sync`:
/// re-recording needs `&mut`. On CPU, where work is synchronous, recording notes the host time,
/// waiting and synchronising return at once, and `elapsed` measures host time.
///
/// ```
/// use tch_streams::stream::{Event, Priority, Stream};
/// let dev = tch::Device::cuda_if_available();
/// let (producer, consumer) = (Stream::from_pool(dev, Priority::Normal)?, Stream::from_pool(dev, Priority::Normal)?);
/// let mut done = Event::new(dev)?;
/// done.record(&producer)?;   // marks everything queued on `producer` so far
/// done.wait(&consumer)?;     // `consumer`'s later work starts after that, without blocking the host
/// done.synchronize()?;       // the host waits too
/// assert!(done.query()?);
/// # Ok::<(), tch_streams::Error>(())
/// ```
pub struct Event {
    backend: Backend,
    raw: *mut TssEvent,
    timing: bool,
    cpu_recorded_at: Option<Instant>,
}

// SAFETY: a c10::Event may be used from any thread, one at a time; `&mut self` on record and the
// absence of `Sync` guarantee that.
unsafe impl Send for Event {}

impl Event {
    /// An event for `device`'s backend, without timing (the cheaper kind).
    pub fn new(device: tch::Device) -> Result<Event> {
        Self::create(device, false)
    }

    /// An event that can measure [`elapsed`](Event::elapsed) time.
    pub fn with_timing(device: tch::Device) -> Result<Event> {
        Self::create(device, true)
    }

    fn create(device: tch::Device, timing: bool) -> Result<Event> {
        let (backend, index) = Backend::of(device);
        let mut raw = std::ptr::null_mut();
        if backend != Backend::Cpu {
            // SAFETY: `raw` is a valid out-pointer; on success it owns a TssEvent freed in Drop.
            check(unsafe { ffi::tss_event_new(backend.c10_device_type(), timing, &mut raw) }, backend, index, "Event::new")?;
        }
        Ok(Event { backend, raw, timing, cpu_recorded_at: None })
    }

    /// Records the event on `stream`: it completes when the work queued there so far completes.
    /// Re-recording moves the marker.
    pub fn record(&mut self, stream: &Stream) -> Result<()> {
        self.same_backend(stream)?;
        if self.backend == Backend::Cpu {
            self.cpu_recorded_at = Some(Instant::now());
            return Ok(());
        }
        let (b, i) = Backend::of(stream.device());
        // SAFETY: `raw` is a live event owned by self; `&mut self` excludes concurrent use.
        check(unsafe { ffi::tss_event_record(self.raw, stream.raw()) }, b, i, "Event::record")
    }

    /// Makes `stream` wait, on the device, until this event completes; the host does not block.
    pub fn wait(&self, stream: &Stream) -> Result<()> {
        self.same_backend(stream)?;
        if self.backend == Backend::Cpu {
            return Ok(());
        }
        let (b, i) = Backend::of(stream.device());
        // SAFETY: `raw` is a live event owned by self.
        check(unsafe { ffi::tss_event_block(self.raw, stream.raw()) }, b, i, "Event::wait")
    }

    /// Blocks the calling thread until the event completes (at once if never recorded).
    pub fn synchronize(&self) -> Result<()> {
        if self.backend == Backend::Cpu {
            return Ok(());
        }
        // SAFETY: `raw` is a live event owned by self.
        check(unsafe { ffi::tss_event_synchronize(self.raw) }, self.backend, 0, "Event::synchronize")
    }

    /// Whether the event has completed (true if never recorded). Never blocks.
    pub fn query(&self) -> Result<bool> {
        if self.backend == Backend::Cpu {
            return Ok(true);
        }
        let mut ready = false;
        // SAFETY: `raw` is live; `ready` is a valid out-pointer.
        check(unsafe { ffi::tss_event_query(self.raw, &mut ready) }, self.backend, 0, "Event::query")?;
        Ok(ready)
    }

    /// Time from this event to `later`; both must be created [`with_timing`](Event::with_timing)
    /// and recorded, and `later` must have completed (synchronize it first).
    pub fn elapsed(&self, later: &Event) -> Result<Duration> {
        if !self.timing || !later.timing {
            return Err(Error::InvalidArgument("elapsed() needs two events created with Event::with_timing".into()));
        }
        if self.backend != later.backend {
            return Err(Error::InvalidArgument(format!("elapsed() between a {} and a {} event", self.backend, later.backend)));
        }
        if self.backend == Backend::Cpu {
            return match (self.cpu_recorded_at, later.cpu_recorded_at) {
                (Some(a), Some(b)) => Ok(b.saturating_duration_since(a)),
                _ => Err(Error::InvalidArgument("elapsed() needs both events recorded".into())),
            };
        }
        let mut ms = 0.0f64;
        // SAFETY: both events are live; `ms` is a valid out-pointer.
        check(unsafe { ffi::tss_event_elapsed_ms(self.raw, later.raw, &mut ms) }, self.backend, 0, "Event::elapsed")?;
        Ok(Duration::from_secs_f64(ms.max(0.0) / 1e3))
    }

    /// The backend this event belongs to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn same_backend(&self, stream: &Stream) -> Result<()> {
        if stream.backend() != self.backend {
            return Err(Error::InvalidArgument(format!("a {} event cannot be used with {}", self.backend, stream)));
        }
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: `raw` was created by tss_event_new and is freed exactly once.
            unsafe { ffi::tss_event_free(self.raw) };
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").field("backend", &self.backend).field("timing", &self.timing).finish()
    }
}
