//! Capability probes by behaviour: ask a backend for pool streams and bind one, through the same
//! c10 guard interface the stream API uses, and report what actually happened.

use crate::backend::Backend;
use crate::ffi;
use crate::status::{has_backend, last_error};
use serde::Serialize;
use std::fmt;

/// What a backend's stream pool did when probed on device 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "pool", rename_all = "kebab-case")]
pub enum PoolProbe {
    /// Two pool streams with these ids; binding the first made it the thread's current stream.
    Yes {
        /// Id of the first pool stream.
        first: i64,
        /// Id of the second pool stream.
        second: i64,
    },
    /// The backend answered, but only ever with its default stream (or ignored the binding).
    DefaultOnly {
        /// What was observed.
        detail: String,
    },
    /// The backend refused; libtorch's message.
    Unsupported {
        /// libtorch's message.
        message: String,
    },
    /// Nothing to probe: no backend in this libtorch, or no device of that kind.
    Absent {
        /// Why.
        reason: String,
    },
}

impl PoolProbe {
    /// Whether the probe found a working stream pool.
    pub fn has_pool(&self) -> bool {
        matches!(self, PoolProbe::Yes { .. })
    }
}

impl fmt::Display for PoolProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolProbe::Yes { first, second } => write!(f, "pool: yes (ids {first}, {second})"),
            PoolProbe::DefaultOnly { detail } => write!(f, "pool: no (default stream only: {detail})"),
            PoolProbe::Unsupported { message } => write!(f, "pool: unsupported ({message})"),
            PoolProbe::Absent { reason } => write!(f, "pool: absent ({reason})"),
        }
    }
}

fn ok(status: i32) -> bool {
    status == ffi::TssStatus::TSS_OK as i32
}

/// Probes `backend`'s stream pool on device 0 of the calling thread and restores the thread's
/// current stream afterwards. Safe to call from any thread; it changes nothing it does not restore.
///
/// ```
/// use tch_streams::{Backend, runtime::probe_pool};
/// // CPU has a single stream: never a pool.
/// assert!(!probe_pool(Backend::Cpu).has_pool());
/// ```
pub fn probe_pool(backend: Backend) -> PoolProbe {
    let ty = backend.c10_device_type();
    if !has_backend(backend) {
        return PoolProbe::Absent { reason: format!("this libtorch has no {backend} backend") };
    }
    if crate::status::device_count(backend) == 0 {
        return PoolProbe::Absent { reason: format!("no {backend} device visible") };
    }
    let mut a = ffi::TssStream::default();
    let mut b = ffi::TssStream::default();
    let mut default = ffi::TssStream::default();
    // SAFETY: out-pointers are valid locals for each call.
    unsafe {
        if !ok(ffi::tss_stream_from_pool(ty, 0, false, &mut a)) || !ok(ffi::tss_stream_from_pool(ty, 0, false, &mut b)) {
            return PoolProbe::Unsupported { message: last_error() };
        }
        if !ok(ffi::tss_stream_default(ty, 0, &mut default)) {
            return PoolProbe::Unsupported { message: last_error() };
        }
    }
    if a.id == default.id && b.id == default.id {
        return PoolProbe::DefaultOnly { detail: format!("both pool requests returned stream {}", default.id) };
    }
    // Bind the first and read it back.
    let mut previous = ffi::TssStream::default();
    let mut current = ffi::TssStream::default();
    // SAFETY: as above; the exchange is undone before returning.
    unsafe {
        if !ok(ffi::tss_stream_exchange(a, &mut previous)) {
            return PoolProbe::Unsupported { message: last_error() };
        }
        let read = ok(ffi::tss_stream_current(ty, 0, &mut current));
        let mut ignored = ffi::TssStream::default();
        ffi::tss_stream_exchange(previous, &mut ignored);
        if !read {
            return PoolProbe::Unsupported { message: last_error() };
        }
    }
    if current.id != a.id {
        return PoolProbe::DefaultOnly {
            detail: format!("bound stream {} but the current stream stayed {}", a.id, current.id),
        };
    }
    PoolProbe::Yes { first: a.id, second: b.id }
}
