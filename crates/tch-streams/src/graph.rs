//! [`Graph`]: a CUDA graph (libtorch's `at::cuda::CUDAGraph`), captured from the work a thread
//! queues on its current stream and replayed there. Compiled in only with CUDA graphs
//! (`cfg(tss_cuda_graphs)`: a CUDA libtorch with the CUDA headers beside it).
//!
//! Invariants:
//! - **Which stream.** A capture records the calling thread's current stream on the current CUDA
//!   device, which must not be the default stream (bind a pool stream first, e.g. with
//!   [`bind_thread`](crate::stream::bind_thread)). A replay launches on the calling thread's
//!   current stream.
//! - **Which thread.** A `Graph` is neither `Send` nor `Sync`: it is captured, replayed and
//!   dropped on one thread, whose current stream is the one above. Capture runs in thread-local
//!   capture mode: other threads' CUDA work goes on while one thread captures, but the capturing
//!   thread itself must not synchronise or allocate outside the graph's pool during the capture.
//! - **Process-wide state.** Capture and destruction change state every graph shares (the
//!   default CUDA generator's graph-safe state, which every capture registers and every replay
//!   advances; the caching allocator's private pools and its list of captures under way). They
//!   take [`LIFECYCLE`] exclusively, replays take it shared: graphs replay side by side on many
//!   threads, but never while one is being captured or destroyed. Eager work takes no lock.
//! - **Who synchronises.** Nobody here: a replay only queues the graph's kernels. The caller
//!   waits for its stream (or an event recorded after the replay) before reading the outputs.
//! - **Errors.** Every call returns the shim's status through [`check`](crate::status::check),
//!   as every other shim call does; no C++ exception crosses into Rust. Graph calls are about no
//!   particular device index, so errors name device 0's backend (CUDA) only.

use crate::backend::Backend;
use crate::error::Result;
use crate::ffi::graph as ffi;
use crate::status::check;
use parking_lot::RwLock;
use std::mem::ManuallyDrop;
use tch::Tensor;

/// Orders graph captures and destructions (exclusive) against replays (shared), process-wide.
static LIFECYCLE: RwLock<()> = RwLock::new(());

/// A captured CUDA graph with its static inputs (what a replay reads: write a batch into them
/// first) and outputs (what the captured work returned, in the graph's memory pool: every replay
/// overwrites them). Both are dropped with the graph, under the same lock. See the module docs for the thread, stream and lock rules.
pub(crate) struct Graph<T> {
    handle: Handle,
    inputs: Vec<Tensor>,
    /// Dropped by hand in `Drop`, under [`LIFECYCLE`].
    outputs: ManuallyDrop<T>,
}

/// The shim's graph object; freed on drop *without* taking [`LIFECYCLE`] (whoever drops it
/// holds the lock already).
struct Handle(*mut ffi::TssGraph);

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by tss_graph_new, freed exactly once, here; the caller holds LIFECYCLE.
            unsafe { ffi::tss_graph_free(self.0) }
        }
    }
}

/// A capture under way on the calling thread's current stream. Dropping it unended (the work
/// panicked) ends the capture, so that the stream never stays in capture mode: pool streams are
/// shared by every thread of the process that asks the pool.
struct Capturing<'h> {
    handle: &'h Handle,
    open: bool,
}

impl<'h> Capturing<'h> {
    fn begin(handle: &'h Handle, pool: Option<PoolId>) -> Result<Capturing<'h>> {
        let (hi, lo) = pool.map_or((0, 0), |p| (p.0, p.1));
        // SAFETY: a live graph, used on the thread that created it; (0, 0) asks for a new pool.
        check(unsafe { ffi::tss_graph_capture_begin_in(handle.0, hi, lo) }, Backend::Cuda, 0, "CUDAGraph::capture_begin")?;
        Ok(Capturing { handle, open: true })
    }

    /// Ends the capture; an error means the graph is unusable.
    fn end(mut self) -> Result<()> {
        self.open = false;
        // SAFETY: as in `begin`; the capture was begun on this thread.
        check(unsafe { ffi::tss_graph_capture_end(self.handle.0) }, Backend::Cuda, 0, "CUDAGraph::capture_end")
    }
}

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        if self.open {
            // SAFETY: as in `end`.
            let status = unsafe { ffi::tss_graph_capture_end(self.handle.0) };
            if let Err(e) = check(status, Backend::Cuda, 0, "CUDAGraph::capture_end") {
                tracing::error!("could not end a CUDA graph capture after a panic: {e}");
            }
        }
    }
}

/// A graph's memory pool (libtorch's pair of ids), to capture later graphs into the same memory.
///
/// Sharing one pool is what keeps several graphs' memory near that of the largest alone: a
/// capture reuses what earlier captures freed (their intermediates). It is safe when the graphs
/// are replayed one at a time and each replay's outputs are read (copied) before the next
/// replay of the pool: a graph's static outputs stay allocated, so no later capture takes
/// them, but they may lie in memory another graph uses as scratch. Capture the largest first,
/// so that the smaller ones fit in what it freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolId(u64, u64);

/// Why a capture produced no graph.
pub(crate) enum CaptureError<E> {
    /// The captured work failed (its own error comes first: a failed capture usually follows).
    Work(E),
    /// The graph could not be made, begun or ended.
    Graph(crate::Error),
}

impl<T> Graph<T> {
    /// Captures the CUDA work `work` queues on the calling thread's current stream (see the
    /// module docs: a non-default stream, nothing synchronised inside) into a new graph, holding
    /// [`LIFECYCLE`] exclusively throughout. `work` runs on `inputs`, which become the graph's
    /// static inputs; what it returns becomes its static outputs. The capture is ended whatever
    /// `work` does, panics included (the panic then continues); on any failure every tensor
    /// involved is freed under the lock.
    /// `pool`: capture into that pool (see [`PoolId`] for when that is safe), or a new one.
    pub(crate) fn capture<E>(
        pool: Option<PoolId>,
        inputs: Vec<Tensor>,
        work: impl FnOnce(&[Tensor]) -> std::result::Result<T, E>,
    ) -> std::result::Result<Graph<T>, CaptureError<E>> {
        let _exclusive = LIFECYCLE.write();
        let inputs = inputs; // dropped before the lock is released, on every path
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; on success it owns a graph freed by `Handle`.
        check(unsafe { ffi::tss_graph_new(&mut raw) }, Backend::Cuda, 0, "CUDAGraph::new").map_err(CaptureError::Graph)?;
        let handle = Handle(raw);
        let capturing = Capturing::begin(&handle, pool).map_err(CaptureError::Graph)?;
        let out = work(&inputs);
        // Always end the capture, even if the work failed (and, through Drop, if it panicked).
        let ended = capturing.end();
        let outputs = out.map_err(CaptureError::Work)?;
        ended.map_err(CaptureError::Graph)?;
        Ok(Graph { handle, inputs, outputs: ManuallyDrop::new(outputs) })
    }

    /// The memory pool this graph was captured into.
    pub(crate) fn pool(&self) -> Result<PoolId> {
        let (mut hi, mut lo) = (0u64, 0u64);
        // SAFETY: a live, captured graph; valid out-pointers.
        check(unsafe { ffi::tss_graph_pool(self.handle.0, &mut hi, &mut lo) }, Backend::Cuda, 0, "CUDAGraph::pool")?;
        Ok(PoolId(hi, lo))
    }

    /// The static inputs, one per input of the captured work.
    pub(crate) fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// The static outputs: valid once the replay that wrote them is done on the device.
    pub(crate) fn outputs(&self) -> &T {
        &self.outputs
    }

    /// Queues the graph's kernels on the calling thread's current stream; does not synchronise.
    /// Takes [`LIFECYCLE`] shared while it launches.
    pub(crate) fn replay(&self) -> Result<()> {
        let _shared = LIFECYCLE.read();
        // SAFETY: a live graph, replayed on the thread that captured it.
        check(unsafe { ffi::tss_graph_replay(self.handle.0) }, Backend::Cuda, 0, "CUDAGraph::replay")
    }
}

impl<T> Drop for Graph<T> {
    /// Frees the graph, its static tensors and its memory pool, holding [`LIFECYCLE`]
    /// exclusively. Does not wait for the device: drop a graph only once its replays are done
    /// (the engine's worker drops its graphs after its last batch completed).
    fn drop(&mut self) {
        let _exclusive = LIFECYCLE.write();
        // Freed here, under the lock; the handle's own Drop then sees null.
        drop(std::mem::replace(&mut self.handle, Handle(std::ptr::null_mut())));
        self.inputs.clear();
        // SAFETY: dropped once, here; `outputs` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.outputs) };
    }
}
