//! Device-wide synchronisation and allocator record-stream.

use super::handle::{device_index, Stream};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi;
use crate::status::check;

/// Blocks the calling thread until all work on **every** stream of `device` has finished.
///
/// ```
/// tch_streams::stream::synchronize_device(tch::Device::Cpu)?; // CPU: nothing to wait for
/// # Ok::<(), tch_streams::Error>(())
/// ```
pub fn synchronize_device(device: tch::Device) -> Result<()> {
    let (backend, index) = Backend::of(device);
    if backend == Backend::Cpu {
        return Ok(());
    }
    let idx = device_index(backend, index)?;
    // SAFETY: plain value arguments.
    check(unsafe { ffi::tss_device_synchronize(backend.c10_device_type(), idx) }, backend, index, "synchronizeDevice")
}

/// Tells the device's caching allocator that `tensor` is used on `stream`, so its memory is not
/// handed out again until the work queued on `stream` so far has finished — even if the tensor is
/// dropped first. Needed whenever a stream other than the one that allocated a tensor is the last
/// to use it. The tensor must live on the stream's device. No-op on CPU.
///
/// ```
/// use tch_streams::stream::{record_stream, Priority, Stream};
/// let s = Stream::from_pool(tch::Device::Cpu, Priority::Normal)?;
/// let t = tch::Tensor::zeros([8], (tch::Kind::Float, tch::Device::Cpu));
/// record_stream(&t, &s)?;
/// # Ok::<(), tch_streams::Error>(())
/// ```
pub fn record_stream(tensor: &tch::Tensor, stream: &Stream) -> Result<()> {
    if !tensor.defined() {
        return Err(Error::InvalidArgument("record_stream: the tensor is undefined (it holds no memory to protect)".into()));
    }
    if tensor.device() != stream.device() {
        return Err(Error::InvalidArgument(format!(
            "record_stream: tensor is on {:?} but the stream is on {:?}",
            tensor.device(),
            stream.device()
        )));
    }
    if stream.backend() == Backend::Cpu {
        return Ok(());
    }
    let (backend, index) = Backend::of(stream.device());
    // SAFETY: `as_ptr` is a valid at::Tensor* borrowed for the duration of the call.
    let status = unsafe { ffi::tss_record_stream(tensor.as_ptr() as *const std::ffi::c_void, stream.raw()) };
    check(status, backend, index, "recordDataPtrOnStream")
}
