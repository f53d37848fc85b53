//! The one path by which a shim status code becomes a Rust [`Error`](crate::Error).
//!
//! Every shim function returns a `TssStatus`; on failure the calling thread's message is read
//! from `tss_last_error()` right away, on the same thread, before any other shim call.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi;
use std::ffi::CStr;

/// The calling thread's last shim error message.
pub(crate) fn last_error() -> String {
    // SAFETY: tss_last_error returns a valid NUL-terminated thread-local string that stays
    // alive until this thread's next failing shim call; we copy it immediately.
    unsafe { CStr::from_ptr(ffi::tss_last_error()) }.to_string_lossy().into_owned()
}

/// Converts a shim status into `Ok(())` or the matching [`Error`].
///
/// `index` is the device index the call was about (used for out-of-range messages).
pub(crate) fn check(status: i32, backend: Backend, index: usize, op: &'static str) -> Result<()> {
    use ffi::TssStatus as S;
    if status == S::TSS_OK as i32 {
        return Ok(());
    }
    let message = last_error();
    Err(if status == S::TSS_ERR_NO_BACKEND as i32 {
        Error::BackendUnavailable { backend, detail: message }
    } else if status == S::TSS_ERR_DEVICE_INDEX as i32 {
        Error::DeviceIndex { backend, index, count: device_count(backend) }
    } else if status == S::TSS_ERR_INVALID_ARGUMENT as i32 {
        Error::InvalidArgument(message)
    } else {
        Error::Torch { op, message }
    })
}

/// Number of devices of the backend this process sees (0 when libtorch lacks the backend).
pub fn device_count(backend: Backend) -> usize {
    crate::runtime::load_backends();
    let mut n: i32 = 0;
    // SAFETY: `n` is a valid out-pointer for the duration of the call.
    let status = unsafe { ffi::tss_device_count(backend.c10_device_type(), &mut n) };
    if status == ffi::TssStatus::TSS_OK as i32 {
        n.max(0) as usize
    } else {
        0
    }
}

/// Whether the loaded libtorch registered a guard implementation for the backend.
pub fn has_backend(backend: Backend) -> bool {
    crate::runtime::load_backends();
    // SAFETY: a pure query with no pointers; it cannot fail.
    unsafe { ffi::tss_has_backend(backend.c10_device_type()) }
}
