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
    /// The highest `allocated` since the process started or the last [`reset_peak_memory`].
    pub peak_allocated: i64,
    /// The highest `reserved` since the process started or the last [`reset_peak_memory`].
    pub peak_reserved: i64,
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
    let (mut allocated, mut reserved, mut peak_allocated, mut peak_reserved) = (0i64, 0i64, 0i64, 0i64);
    // SAFETY: valid out-pointers for the duration of the call.
    let status = unsafe {
        ffi::tss_memory_stats(backend.c10_device_type(), idx, &mut allocated, &mut reserved, &mut peak_allocated, &mut peak_reserved)
    };
    check(status, backend, index, "getDeviceStats")?;
    Ok(MemoryStats { allocated, reserved, peak_allocated, peak_reserved })
}

/// Starts the peak figures of `device` ([`MemoryStats::peak_allocated`], `peak_reserved`) again
/// from the current ones. The figures are the device's, for the whole process: anything else
/// measuring peaks on that device sees them reset too. CPU: `InvalidArgument`, as for
/// [`memory_stats`].
pub fn reset_peak_memory(device: tch::Device) -> Result<()> {
    let (backend, index) = Backend::of(device);
    if backend == Backend::Cpu {
        return Err(Error::InvalidArgument("CPU has no caching device allocator".into()));
    }
    let idx = device_index(backend, index)?;
    // SAFETY: plain value arguments.
    check(unsafe { ffi::tss_memory_reset_peak(backend.c10_device_type(), idx) }, backend, index, "resetPeakStats")
}

/// The driver's view of one device: bytes free (to this process and every other) and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCapacity {
    /// Bytes the driver could still hand out (memory the caching allocator holds, used or
    /// cached, is not free).
    pub free: i64,
    /// The device's memory.
    pub total: i64,
}

/// Free and total memory of `device`, from the driver. CPU: `InvalidArgument`; a backend whose
/// allocator cannot say (MPS in the libtorch versions supported): `Unsupported`-like failure
/// from the shim.
///
/// ```
/// assert!(tch_streams::stream::device_capacity(tch::Device::Cpu).is_err());
/// ```
pub fn device_capacity(device: tch::Device) -> Result<DeviceCapacity> {
    let (backend, index) = Backend::of(device);
    if backend == Backend::Cpu {
        return Err(Error::InvalidArgument("CPU has no caching device allocator".into()));
    }
    let idx = device_index(backend, index)?;
    let (mut free, mut total) = (0i64, 0i64);
    // SAFETY: valid out-pointers for the duration of the call.
    let status = unsafe { ffi::tss_memory_info(backend.c10_device_type(), idx, &mut free, &mut total) };
    check(status, backend, index, "getMemoryInfo")?;
    Ok(DeviceCapacity { free, total })
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

/// Frees the cuBLAS workspaces libtorch cached for the calling thread on `device`; returns how
/// many it freed.
///
/// libtorch keeps one workspace (32 MiB on Hopper, from the caching allocator) for every
/// (cuBLAS handle, stream) pair it has met, for the life of the process. A handle belongs to one
/// thread while that thread lives and then goes back to a pool; pool streams are handed out round
/// robin. Threads that come and go on pool streams (an engine's workers, engines started and
/// stopped) therefore meet new pairs, and the cache grows towards handles × streams workspaces.
/// The engine calls this on each worker thread as the worker ends; a thread of yours that ran
/// matrix products on pool streams can call it the same way before it ends.
///
/// Invariants: call it on the thread whose workspaces go, after synchronising every stream that
/// thread ran cuBLAS work on (no queued kernel may still use them). Other threads are unaffected:
/// only entries of the calling thread's own handle are removed, and that handle is used by no
/// other thread while this one lives. A later matrix product on this thread simply makes a new
/// workspace.
///
/// CPU and MPS have no such cache: `Ok(0)`. CUDA on a build without the CUDA shim (no CUDA
/// headers at build time; see the crate's build script): [`Error::Unsupported`].
pub fn release_thread_workspaces(device: tch::Device) -> Result<usize> {
    let (backend, index) = Backend::of(device);
    if backend != Backend::Cuda {
        return Ok(0);
    }
    let idx = device_index(backend, index)?;
    #[cfg(tss_cuda_graphs)]
    {
        let mut released = 0i64;
        // SAFETY: a valid out-pointer for the duration of the call.
        let status = unsafe { ffi::blas::tss_cuda_release_thread_blas_workspaces(idx, &mut released) };
        check(status, backend, index, "release cuBLAS workspaces")?;
        Ok(usize::try_from(released).unwrap_or(0))
    }
    #[cfg(not(tss_cuda_graphs))]
    {
        let _ = idx;
        Err(Error::Unsupported {
            backend,
            op: "releasing cuBLAS workspaces",
            detail: "this build has no CUDA shim (the CUDA headers were not found when it was built)".into(),
        })
    }
}
