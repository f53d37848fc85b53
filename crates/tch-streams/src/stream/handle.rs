//! [`Stream`]: a device plus a stream id, copyable and usable from any thread.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi::{self, TssStream};
use crate::status::check;
use std::fmt;

/// Pool priority for [`Stream::from_pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// The normal-priority pool.
    #[default]
    Normal,
    /// The high-priority pool (where the backend has one; CUDA does).
    High,
}

/// A stream on a device: an id into the backend's stream table, not an owner of it.
///
/// Streams are plain values (`Copy`, `Send`, `Sync`): any thread may synchronise or query one,
/// or make it current for itself with a [`StreamGuard`](super::StreamGuard). Pool streams live
/// for the whole process; two `Stream`s with equal ids are the same queue.
///
/// ```
/// use tch_streams::stream::{Priority, Stream};
/// let cpu = Stream::from_pool(tch::Device::Cpu, Priority::Normal)?;
/// assert_eq!(cpu, Stream::default_for(tch::Device::Cpu)?); // CPU: one stream
/// assert_eq!(cpu.to_string(), "cpu/stream 0");
/// # Ok::<(), tch_streams::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stream {
    backend: Backend,
    index: usize,
    id: i64,
}

impl Stream {
    /// CPU's single stream.
    pub(crate) const CPU: Stream = Stream { backend: Backend::Cpu, index: 0, id: 0 };

    /// A stream from the device's global pool (round-robin; CUDA has 32 per priority).
    ///
    /// Errors: [`Error::DeviceIndex`] for a device this process does not see;
    /// [`Error::Unsupported`] when the backend has no pool (stock MPS);
    /// [`Error::BackendUnavailable`] when libtorch lacks the backend. CPU returns its one stream.
    pub fn from_pool(device: tch::Device, priority: Priority) -> Result<Stream> {
        crate::runtime::load_backends();
        let (backend, index) = Backend::of(device);
        if backend == Backend::Cpu {
            return Ok(Stream::CPU);
        }
        let mut out = TssStream::default();
        let ty = backend.c10_device_type();
        let idx = device_index(backend, index)?;
        // SAFETY: `out` is a valid out-pointer.
        let status = unsafe { ffi::tss_stream_from_pool(ty, idx, priority == Priority::High, &mut out) };
        check(status, backend, index, "getStreamFromGlobalPool").map_err(|e| match e {
            Error::Torch { message, .. } => Error::Unsupported { backend, op: "pool streams", detail: message },
            other => other,
        })?;
        Ok(Stream::from_raw(out))
    }

    /// The device's default stream (the one every thread starts on).
    pub fn default_for(device: tch::Device) -> Result<Stream> {
        crate::runtime::load_backends();
        Self::query_device(device, "getDefaultStream", ffi::tss_stream_default)
    }

    /// The calling thread's current stream on `device`.
    pub fn current(device: tch::Device) -> Result<Stream> {
        crate::runtime::load_backends();
        Self::query_device(device, "getStream", ffi::tss_stream_current)
    }

    fn query_device(
        device: tch::Device,
        op: &'static str,
        f: unsafe extern "C" fn(i8, i8, *mut TssStream) -> i32,
    ) -> Result<Stream> {
        let (backend, index) = Backend::of(device);
        if backend == Backend::Cpu {
            return Ok(Stream::CPU);
        }
        let idx = device_index(backend, index)?;
        let mut out = TssStream::default();
        // SAFETY: `f` is one of the shim's (type, index, out) queries; `out` is valid.
        let status = unsafe { f(backend.c10_device_type(), idx, &mut out) };
        check(status, backend, index, op)?;
        Ok(Stream::from_raw(out))
    }

    /// Blocks the calling thread until all work queued on this stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        if self.backend == Backend::Cpu {
            return Ok(());
        }
        // SAFETY: plain value argument.
        check(unsafe { ffi::tss_stream_synchronize(self.raw()) }, self.backend, self.index, "synchronizeStream")
    }

    /// Whether all work queued on this stream has finished (never blocks).
    pub fn query(&self) -> Result<bool> {
        if self.backend == Backend::Cpu {
            return Ok(true);
        }
        let mut ready = false;
        // SAFETY: `ready` is a valid out-pointer.
        check(unsafe { ffi::tss_stream_query(self.raw(), &mut ready) }, self.backend, self.index, "queryStream")?;
        Ok(ready)
    }

    /// The device this stream belongs to.
    pub fn device(&self) -> tch::Device {
        self.backend.device(self.index)
    }

    /// The backend of this stream's device.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The backend's stream id (0 is the default stream on CUDA and CPU).
    pub fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn raw(&self) -> TssStream {
        TssStream { id: self.id, device_index: self.index as i8, device_type: self.backend.c10_device_type() }
    }

    pub(crate) fn from_raw(raw: TssStream) -> Stream {
        let backend = Backend::ALL.into_iter().find(|b| b.c10_device_type() == raw.device_type).unwrap_or(Backend::Cpu);
        Stream { backend, index: raw.device_index.max(0) as usize, id: raw.id }
    }

    /// A stream value made up for a test (nothing is asked of the backend).
    #[cfg(test)]
    pub(crate) fn made_up(backend: Backend, index: usize, id: i64) -> Stream {
        Stream { backend, index, id }
    }
}

/// Validates that a device index fits c10's `int8_t` before it crosses the FFI boundary.
pub(crate) fn device_index(backend: Backend, index: usize) -> Result<i8> {
    i8::try_from(index).map_err(|_| Error::DeviceIndex { backend, index, count: crate::status::device_count(backend) })
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend {
            Backend::Cuda => write!(f, "cuda:{}/stream {}", self.index, self.id),
            b => write!(f, "{b}/stream {}", self.id),
        }
    }
}
