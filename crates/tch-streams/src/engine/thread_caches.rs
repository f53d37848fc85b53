//! What libtorch caches per thread, given back when an engine thread ends, and the short-lived
//! threads start-up runs the model on.
//!
//! libtorch keeps a cuBLAS workspace for every (cuBLAS handle, stream) pair it meets, for the
//! life of the process (see [`stream::release_thread_workspaces`]). Every thread on which the
//! engine runs the model (workers, the calibration thread, the batch-independence check) frees
//! its own when it ends, so that engines started and stopped leave nothing behind, and nothing
//! is added to the caller's thread.

use crate::stream::{self, Stream};
use tch::Device;

/// Frees the calling thread's cuBLAS workspaces when dropped, after synchronising `stream` (the
/// stream the thread ran its work on). Create it on the thread it cleans up after, before
/// anything that could still use the workspaces (graphs, pending work), so it is dropped last.
pub(crate) struct ThreadWorkspaces {
    device: Device,
    stream: Stream,
}

impl ThreadWorkspaces {
    pub(crate) fn new(device: Device, stream: Stream) -> Self {
        ThreadWorkspaces { device, stream }
    }
}

impl Drop for ThreadWorkspaces {
    fn drop(&mut self) {
        if self.device == Device::Cpu {
            return;
        }
        if let Err(e) = self.stream.synchronize() {
            tracing::warn!("{:?}: stream not synchronised as the thread ends ({e}); its cuBLAS workspaces are kept", self.device);
            return;
        }
        match stream::release_thread_workspaces(self.device) {
            Ok(n) => tracing::debug!("{:?}: {n} cuBLAS workspace(s) freed as the thread ends", self.device),
            Err(e) => tracing::debug!("{:?}: cuBLAS workspaces kept as the thread ends: {e}", self.device),
        }
    }
}

/// Runs `f` on a scoped thread of its own, bound to the caller's current stream on `device`
/// (so its work is ordered as if the caller had run it), and frees that thread's cuBLAS
/// workspaces when `f` is done. A panic in `f`, or no thread to be had, is a panic on the
/// caller's thread.
pub(crate) fn on_own_thread<T: Send>(device: Device, name: &str, f: impl FnOnce() -> T + Send) -> T {
    let current = if device == Device::Cpu { None } else { Stream::current(device).ok() };
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn_scoped(s, move || {
                let _bound = current.and_then(|st| stream::bind_thread(&st).ok().map(|b| (b, ThreadWorkspaces::new(device, st))));
                f()
            });
        match handle {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(e) => panic!("could not start a thread for {name}: {e}"),
        }
    })
}
