//! Making a stream current for the calling thread: RAII [`StreamGuard`], [`with_stream`], and the
//! lifetime binding [`bind_thread`] for threads that own one stream.

use super::handle::Stream;
use crate::backend::Backend;
use crate::error::Result;
use crate::ffi::{self, TssStream};
use crate::status::check;
use std::marker::PhantomData;

/// Makes a stream (and its device) current for the calling thread; restores the previous stream
/// and device when dropped.
///
/// Guards nest: drop them in reverse order of creation (the natural order for scoped values).
/// **Not `Send`**: the current stream is thread-local state, so a guard must be dropped on the
/// thread that created it — the type system enforces this. On CPU a guard changes nothing.
///
/// ```
/// use tch_streams::stream::{Priority, Stream, StreamGuard};
/// let dev = tch::Device::cuda_if_available();
/// let s = Stream::from_pool(dev, Priority::Normal)?;
/// {
///     let _g = StreamGuard::new(&s)?;
///     assert_eq!(Stream::current(dev)?, s);
/// }
/// assert_eq!(Stream::current(dev)?, Stream::default_for(dev)?);
/// # Ok::<(), tch_streams::Error>(())
/// ```
#[must_use = "the stream is current only while the guard is alive"]
pub struct StreamGuard {
    restore: Option<(TssStream, i8)>,
    // *const () makes the guard !Send and !Sync: it restores this thread's state.
    _not_send: PhantomData<*const ()>,
}

impl StreamGuard {
    /// Makes `stream` current for this thread until the guard is dropped.
    pub fn new(stream: &Stream) -> Result<StreamGuard> {
        if stream.backend() == Backend::Cpu {
            return Ok(StreamGuard { restore: None, _not_send: PhantomData });
        }
        let mut prev_stream = TssStream::default();
        let mut prev_device: i8 = 0;
        let (backend, index) = Backend::of(stream.device());
        // SAFETY: both out-pointers are valid locals.
        let status = unsafe { ffi::tss_guard_enter(stream.raw(), &mut prev_device, &mut prev_stream) };
        check(status, backend, index, "exchangeStream")?;
        Ok(StreamGuard { restore: Some((prev_stream, prev_device)), _not_send: PhantomData })
    }

    /// The stream that was current on this stream's device before the guard (restored on drop);
    /// `None` for a CPU guard.
    pub fn original_stream(&self) -> Option<Stream> {
        self.restore.map(|(s, _)| Stream::from_raw(s))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some((stream, device)) = self.restore.take() {
            // SAFETY: restores values written by tss_guard_enter on this same thread.
            let status = unsafe { ffi::tss_guard_exit(stream, device) };
            if status != ffi::TssStatus::TSS_OK as i32 {
                tracing::error!("restoring the previous stream failed: {}", crate::status::last_error());
            }
        }
    }
}

/// Runs `f` with `stream` current for the calling thread, then restores the previous stream —
/// also when `f` panics (the guard is dropped during unwinding).
///
/// ```
/// use tch_streams::stream::{with_stream, Priority, Stream};
/// let s = Stream::from_pool(tch::Device::Cpu, Priority::Normal)?;
/// let v = with_stream(&s, || 40 + 2)?;
/// assert_eq!(v, 42);
/// # Ok::<(), tch_streams::Error>(())
/// ```
pub fn with_stream<R>(stream: &Stream, f: impl FnOnce() -> R) -> Result<R> {
    let _guard = StreamGuard::new(stream)?;
    Ok(f())
}

/// Makes `stream` current for the calling thread *for the rest of its life* (no restore), and
/// returns the stream it replaced. For dedicated worker threads that own one stream; scoped code
/// should use [`StreamGuard`]. Also makes the stream's device the thread's current device.
///
/// ```
/// use tch_streams::stream::{bind_thread, Priority, Stream};
/// std::thread::spawn(|| {
///     let s = Stream::from_pool(tch::Device::Cpu, Priority::Normal).unwrap();
///     bind_thread(&s).unwrap();
///     assert_eq!(Stream::current(tch::Device::Cpu).unwrap(), s);
/// }).join().unwrap();
/// ```
pub fn bind_thread(stream: &Stream) -> Result<Stream> {
    let guard = StreamGuard::new(stream)?;
    let previous = guard.original_stream().unwrap_or(*stream);
    std::mem::forget(guard);
    Ok(previous)
}
