//! Streams for tch: pool streams, RAII guards, events, synchronisation and record-stream, over
//! libtorch's device-generic c10 guard interface (CUDA on stock libtorch; MPS with our patch).
//!
//! # The model
//! - A **stream** is an ordered queue of device work. Kernels launched by a thread go to *that
//!   thread's current stream* for the device; each thread starts on the device's default stream.
//! - **One current stream per thread per device.** [`StreamGuard`] (or [`with_stream`]) makes a
//!   stream current for the calling thread and restores the previous one when dropped; a
//!   long-lived worker may instead bind one for its whole life with [`bind_thread`].
//! - **Who synchronises.** Work on different streams may run concurrently and in any order. When
//!   a tensor produced on stream A is read on stream B, the *consumer* must order B after A:
//!   record an [`Event`] on A and [`Event::wait`] it on B (device-side, cheap), or synchronise A
//!   on the host. If B (or any stream other than the producer's) is the last to use the tensor's
//!   memory, call [`record_stream`] so the caching allocator does not hand that memory out again
//!   while B's work is still queued.
//! - **CPU** is the documented exception: it has one stream (id 0); every request returns it and
//!   every stream operation on it is a cheap no-op, so stream-aware code runs unchanged on CPU.
//! - A backend without a stream pool (e.g. MPS on stock libtorch) answers a pool request with
//!   [`Error::Unsupported`](crate::Error::Unsupported), never with a silent default stream.
//!
//! ```
//! use tch_streams::stream::{with_stream, Priority, Stream};
//! let device = tch::Device::cuda_if_available();
//! let s = Stream::from_pool(device, Priority::Normal)?;
//! let y = with_stream(&s, || tch::Tensor::ones([4], (tch::Kind::Float, device)) * 2)?;
//! s.synchronize()?; // the consumer (here: the host) waits for the producer stream
//! assert_eq!(y.sum(tch::Kind::Float).double_value(&[]), 8.0);
//! # Ok::<(), tch_streams::Error>(())
//! ```

mod event;
mod guard;
mod handle;
mod memory;
mod rayon_pool;
mod sync;

pub use event::Event;
pub use guard::{bind_thread, with_stream, StreamGuard};
pub use handle::{Priority, Stream};
pub use memory::{device_capacity, empty_cache, memory_stats, DeviceCapacity, release_thread_workspaces, reset_peak_memory, MemoryStats};
pub use rayon_pool::StreamThreadPool;
pub use sync::{record_stream, synchronize_device};
