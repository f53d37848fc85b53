//! Device memory as the backend's caching allocator sees it (CUDA; MPS on a libtorch whose
//! allocator implements c10's device-generic interface).

use super::handle::device_index;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi;
use crate::status::check;

/// A snapshot of one device's caching allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// Bytes currently held by live tensors (and allocator-owned workspaces).
    pub allocated: i64,
    /// Bytes reserved from the driver (allocated + cached free blocks).
    pub reserved: i64,
}

/// The allocator statistics of `device`. CPU has no caching device allocator: `InvalidArgument`.
///
/// ```
/// assert!(tch_streams::stream::memory_stats(tch::Device::Cpu).is_err());
/// ```
pub fn memory_stats(device: tch::Device) -> Result<MemoryStats> {
    let (backend, index) = Backend::of(device);
    if backend == Backend::Cpu {
        return Err(Error::InvalidArgument("CPU has no caching device allocator".into()));
    }
    let idx = device_index(backend, index)?;
    let (mut allocated, mut reserved) = (0i64, 0i64);
    // SAFETY: valid out-pointers for the duration of the call.
    let status = unsafe { ffi::tss_memory_stats(backend.c10_device_type(), idx, &mut allocated, &mut reserved) };
    check(status, backend, index, "getDeviceStats")?;
    Ok(MemoryStats { allocated, reserved })
}

/// Returns the device allocator's cached free blocks to the driver (does not touch live tensors).
pub fn empty_cache(device: tch::Device) -> Result<()> {
    let (backend, index) = Backend::of(device);
    if backend == Backend::Cpu {
        return Ok(());
    }
    // SAFETY: plain value argument.
    check(unsafe { ffi::tss_memory_empty_cache(backend.c10_device_type()) }, backend, index, "emptyCache")
}
