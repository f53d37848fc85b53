//! Threads that each run a set of multiplexed (HTTP/2) connections whole: a connection's task
//! and the tasks of every request on it run on one thread.
//!
//! On the multi-threaded runtime one HTTP/2 connection is many tasks: hyper's connection task,
//! which reads and writes every frame, and one task per stream (request), spawned by it. Those
//! tasks land on whichever worker thread is free, so each request crosses threads at least twice
//! (frame read → stream task → answer written), and every crossing wakes a parked thread and
//! contends for the connection's shared stream state. One connection then carries only a few
//! tens of thousands of requests a second, however many cores the host has, where HTTP/1.1
//! (one request at a time per connection, served inline by the connection's own task) needs no
//! crossing at all.
//!
//! A [`ConnThreads`] runs a fixed set of single-threaded runtimes. Everything a connection
//! spawns (`tokio::spawn` inside it) stays on its thread, so a request crosses threads only
//! where it must: to the engine's worker and back. Connections go to the thread with the fewest
//! open ([`ConnThreads::pick`]), so many connections still spread over the cores.
//!
//! The price: one connection uses one core at most. Measured with `serve` and `loadgen` (a
//! built-in MLP on an H100, 16 cores, 8 such threads against the shared runtime): several
//! connections gain the most (16 connections, 64 requests in flight: 112k against 81k
//! requests/s; 4 connections at 16 in flight: 62k against 49k, as fast as HTTP/1.1), and one
//! connection about breaks even (29k against 26k at 64 in flight, 23k against 25k at 16), its
//! thread saturated either way. Hence both `serve` and `loadgen` run their gRPC connections on
//! [`default_count`] such threads unless `--grpc-threads` says otherwise (0: the shared runtime).
//!
//! Invariants:
//! - A connection's socket is registered with the reactor of the thread that drives it
//!   ([`ConnThreads::spawn_conn`] moves it there), so its readiness events wake that thread
//!   alone.
//! - Work spawned on a thread must not block it: a blocking step (a large decode) goes to that
//!   runtime's blocking pool, as on the shared runtime.
//! - Dropping the `ConnThreads` ends every thread: tasks still on them are dropped (cancelled),
//!   as a runtime's shutdown drops them. Callers end their connections first (the drain).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Threads that run connections whole by default: half the cores, at least one (the other half
/// are left to the shared runtime's protocols, the engine's workers and their completions).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// One thread with its runtime, and how many connections it drives.
struct Lane {
    handle: Handle,
    open: Arc<AtomicUsize>,
    /// Dropped (or sent) to end the thread.
    _stop: oneshot::Sender<()>,
}

/// A fixed set of threads, each running its connections whole (see the module docs).
pub struct ConnThreads {
    lanes: Vec<Lane>,
}

/// A connection counted on its thread while this lives.
pub struct Placed {
    open: Arc<AtomicUsize>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnThreads {
    /// Starts `n` threads (at least one), named `{name}-{i}`.
    pub fn start(n: usize, name: &str) -> std::io::Result<ConnThreads> {
        let mut lanes = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                // Runs until the sender is dropped; then the runtime drops what is left on it.
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
            lanes.push(Lane { handle, open: Arc::new(AtomicUsize::new(0)), _stop: stop });
        }
        Ok(ConnThreads { lanes })
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Always false: there is at least one thread.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Connections each thread drives now, in thread order.
    pub fn open(&self) -> Vec<usize> {
        self.lanes.iter().map(|l| l.open.load(Ordering::Acquire)).collect()
    }

    /// The thread with the fewest connections (the first of those tied), counted as driving one
    /// more until the returned [`Placed`] is dropped.
    pub fn pick(&self) -> (Handle, Placed) {
        let lane = self.lanes.iter().min_by_key(|l| l.open.load(Ordering::Acquire)).expect("at least one thread");
        lane.open.fetch_add(1, Ordering::AcqRel);
        (lane.handle.clone(), Placed { open: Arc::clone(&lane.open) })
    }

    /// Thread `i` (modulo their number): for a caller that places connections itself.
    pub fn handle(&self, i: usize) -> Handle {
        self.lanes[i % self.lanes.len()].handle.clone()
    }

    /// Moves `tcp` to the least busy thread and drives it there with the future `serve` makes
    /// of it; the thread counts it until that future ends. A socket that cannot be moved is
    /// closed (logged).
    pub fn spawn_conn<F, Fut>(&self, tcp: TcpStream, serve: F) -> JoinHandle<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (handle, placed) = self.pick();
        // Deregistered from this runtime's reactor; registered again on the thread's own.
        let std = tcp.into_std();
        handle.spawn(async move {
            let _placed = placed;
            let tcp = match std.and_then(TcpStream::from_std) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("could not move a connection to its thread: {e}");
                    return;
                }
            };
            serve(tcp).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    #[test]
    fn connections_go_to_the_thread_with_the_fewest_and_leave_it_when_done() {
        let t = ConnThreads::start(2, "pick").unwrap();
        assert_eq!(t.len(), 2);
        let (_, a) = t.pick();
        let (_, b) = t.pick();
        let (_, c) = t.pick();
        assert_eq!(t.open(), [2, 1]);
        drop(a);
        assert_eq!(t.open(), [1, 1]);
        drop((b, c));
        assert_eq!(t.open(), [0, 0]);
        assert_eq!(ConnThreads::start(0, "none").unwrap().len(), 1, "at least one thread");
    }

    #[test]
    fn by_default_half_the_cores_run_connections_and_never_none() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let n = default_count();
        assert!(n >= 1, "{n}");
        assert!(2 * n <= cores.max(2), "{n} threads for {cores} cores");
        assert!(2 * n + 1 >= cores, "{n} threads for {cores} cores: fewer than half");
    }

    #[test]
    fn a_connection_and_everything_it_spawns_run_on_its_thread_with_its_socket_working() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let threads = ConnThreads::start(3, "lane").unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"ping").await.unwrap();
                let mut back = [0u8; 4];
                s.read_exact(&mut back).await.unwrap();
                back
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let (seen_tx, seen_rx) = oneshot::channel();
            let (release, released) = oneshot::channel::<()>();
            let driven = threads.spawn_conn(tcp, move |mut tcp| async move {
                let on_conn = thread_name();
                // A task the connection spawns (as hyper spawns one per HTTP/2 stream).
                let on_spawned = tokio::spawn(async { thread_name() }).await.unwrap();
                let mut buf = [0u8; 4];
                tcp.read_exact(&mut buf).await.unwrap();
                buf.reverse();
                tcp.write_all(&buf).await.unwrap();
                let _ = seen_tx.send((on_conn, on_spawned));
                let _ = released.await;
            });
            assert_eq!(threads.open(), [1, 0, 0], "counted on the first thread while it runs");
            let back = tokio::time::timeout(Duration::from_secs(10), client).await.expect("watchdog").unwrap();
            assert_eq!(&back, b"gnip");
            let (on_conn, on_spawned) = seen_rx.await.unwrap();
            assert_eq!(on_conn, "lane-0");
            assert_eq!(on_spawned, "lane-0", "spawned from the connection: same thread");
            assert_eq!(threads.open(), [1, 0, 0]);
            release.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(10), driven).await.expect("watchdog").unwrap();
            assert_eq!(threads.open(), [0, 0, 0], "no longer counted once its future ended");
        });
    }
}
