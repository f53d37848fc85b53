//! [`StreamThreadPool`]: a rayon pool whose every thread owns one pool stream.

use super::guard::bind_thread;
use super::handle::{Priority, Stream};
use crate::error::{Error, Result};
use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    static BOUND: Cell<Option<Stream>> = const { Cell::new(None) };
}

/// A rayon thread pool in which each thread, when it starts, binds its own pool stream on the
/// device (for its whole life) and turns gradient tracking off (grad mode is thread-local).
/// Work run through [`install`](StreamThreadPool::install) therefore launches kernels on
/// per-thread streams and concurrent threads do not queue behind one another.
///
/// Results handed back to another thread are subject to the stream rules in [`crate::stream`]:
/// synchronise the worker's stream (or use an event) before another stream or the host reads them.
///
/// ```
/// use rayon::prelude::*;
/// use tch_streams::stream::StreamThreadPool;
/// let pool = StreamThreadPool::new(tch::Device::Cpu, 2)?;
/// let sums: Vec<f64> = pool.install(|| {
///     (0..4).into_par_iter().map(|i| {
///         let t = tch::Tensor::full([3], i as f64, (tch::Kind::Float, tch::Device::Cpu));
///         StreamThreadPool::current_stream().unwrap().synchronize().unwrap();
///         t.sum(tch::Kind::Float).double_value(&[])
///     }).collect()
/// });
/// assert_eq!(sums, vec![0.0, 3.0, 6.0, 9.0]);
/// # Ok::<(), tch_streams::Error>(())
/// ```
pub struct StreamThreadPool {
    pool: rayon::ThreadPool,
    streams: Arc<Vec<Stream>>,
}

impl StreamThreadPool {
    /// Builds `threads` threads on `device`, each bound to its own pool stream (distinct streams
    /// as long as `threads` ≤ the backend's pool size; CUDA's is 32).
    ///
    /// Errors: as [`Stream::from_pool`]; `InvalidArgument` for zero threads or when a thread
    /// failed to bind its stream.
    pub fn new(device: tch::Device, threads: usize) -> Result<StreamThreadPool> {
        if threads == 0 {
            return Err(Error::InvalidArgument("StreamThreadPool needs at least one thread".into()));
        }
        let streams: Vec<Stream> =
            (0..threads).map(|_| Stream::from_pool(device, Priority::Normal)).collect::<Result<_>>()?;
        let streams = Arc::new(streams);
        let for_threads = Arc::clone(&streams);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tch-streams-{i}"))
            .start_handler(move |i| {
                let stream = for_threads[i];
                match bind_thread(&stream) {
                    Ok(_) => BOUND.with(|b| b.set(Some(stream))),
                    Err(e) => tracing::error!("worker {i} could not bind {stream}: {e}"),
                }
                // Grad mode is per thread; this thread never computes gradients.
                std::mem::forget(tch::no_grad_guard());
            })
            .build()
            .map_err(|e| Error::InvalidArgument(format!("could not start the thread pool: {e}")))?;
        let pool = StreamThreadPool { pool, streams };
        let bound = pool.bindings();
        if bound.iter().any(Option::is_none) {
            return Err(Error::InvalidArgument(format!(
                "{} of {threads} pool threads failed to bind their stream (see the log)",
                bound.iter().filter(|b| b.is_none()).count()
            )));
        }
        Ok(pool)
    }

    /// Runs `op` inside the pool (rayon's `install`): parallel iterators in it use the pool's
    /// threads, each on its own stream.
    pub fn install<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        self.pool.install(op)
    }

    /// The streams owned by the pool's threads, indexed by rayon thread index.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.streams.len()
    }

    /// Each thread's own report of the stream it has bound, by thread index (`None`: not bound).
    pub fn bindings(&self) -> Vec<Option<Stream>> {
        self.pool.broadcast(|_| Self::current_stream())
    }

    /// The stream bound by the calling pool thread (`None` outside a `StreamThreadPool`).
    pub fn current_stream() -> Option<Stream> {
        BOUND.with(Cell::get)
    }

    /// The underlying rayon pool.
    pub fn rayon(&self) -> &rayon::ThreadPool {
        &self.pool
    }
}
