//! Accepting and driving connections: a cap on open connections, an idle timeout, and a drain
//! that never waits for a connection with nothing in progress.
//!
//! Each listener runs one accept loop on the async runtime; each connection is one task that
//! drives hyper's HTTP/1.1 (REST, metrics) or HTTP/2 (gRPC) connection — the gRPC ones, with
//! every request on them, on threads of their own ([`ConnThreads`]) when `--grpc-threads` asks —
//! and watches three things:
//!
//! - **idle**: no request in progress for `--idle-timeout-s` (since the connection opened or its
//!   last answer went out; a client still sending a request's headers counts as idle) — closed;
//! - **evicted**: the accept loop needs room under `--max-connections` and this is the
//!   connection idle the longest — closed;
//! - **drain** (SIGTERM): graceful shutdown (no keep-alive, HTTP/2 GOAWAY), then closed as soon
//!   as nothing is in progress on it; requests already being served are answered first.
//!
//! "In progress" is counted by [`Active`] guards: one per request, from the moment hyper hands it
//! to the service until its answer's body has been written (the guard rides in the body).
//!
//! Connections over the cap are taken from the listen queue only when one closes or an idle one
//! is evicted, so the process never holds more than `--max-connections` + 1 sockets per set.

use crate::conn_threads::ConnThreads;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// After a graceful shutdown starts, how long a connection with nothing in progress is still
/// polled (to flush a GOAWAY, or dispatch a request whose head already arrived) before it is
/// closed.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// One open connection's state, shared by its task, its requests' guards and the accept loop.
#[derive(Debug)]
pub struct Conn {
    active: AtomicUsize,
    /// When the connection last became idle (ms since the process's epoch).
    idle_since: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn { active: AtomicUsize::new(0), idle_since: AtomicU64::new(now_ms()), evicted: AtomicBool::new(false), wake: Notify::new() }
    }

    /// Counts a request as in progress on this connection until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(Arc::clone(self))
    }

    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn idle_for(&self) -> Option<Duration> {
        (self.active() == 0).then(|| Duration::from_millis(now_ms().saturating_sub(self.idle_since.load(Ordering::Acquire))))
    }
}

/// A request in progress on a connection (see the module docs).
#[derive(Debug)]
pub struct Active(Arc<Conn>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Release);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

/// A set of connections under one cap (`--max-connections`): the HTTP and gRPC listeners share
/// one, the metrics listener has its own.
pub struct Conns {
    cap: usize,
    /// Counts open connections, when given.
    gauge: Option<prometheus::IntGauge>,
    permits: Arc<Semaphore>,
    live: parking_lot::Mutex<Vec<Weak<Conn>>>,
}

impl Conns {
    /// A set of at most `cap` connections (1..=u32::MAX), counted in `gauge` when given.
    pub fn new(cap: usize, gauge: Option<prometheus::IntGauge>) -> Arc<Conns> {
        Arc::new(Conns { cap, gauge, permits: Arc::new(Semaphore::new(cap)), live: parking_lot::Mutex::new(Vec::new()) })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    fn register(&self) -> Arc<Conn> {
        let c = Arc::new(Conn::new());
        let mut live = self.live.lock();
        if live.len() >= 2 * self.cap {
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(&c));
        c
    }

    /// Asks the connection idle the longest (not already asked) to close; whether there was one.
    fn evict_idle(&self) -> bool {
        let mut live = self.live.lock();
        live.retain(|w| w.strong_count() > 0);
        let oldest = live
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.active() == 0 && !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        match oldest {
            Some(c) => {
                c.evicted.store(true, Ordering::Release);
                c.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Resolves once every connection of the set has closed.
    pub async fn all_closed(&self) {
        let n = u32::try_from(self.cap).unwrap_or(u32::MAX);
        if let Ok(p) = self.permits.acquire_many(n).await {
            drop(p);
        }
    }

    /// A permit for one more connection: at once if under the cap; else after evicting an idle
    /// connection (or, with none idle, once any connection closes). `None` on drain.
    async fn permit(&self, stop: &watch::Receiver<bool>) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(p);
        }
        loop {
            let evicted = self.evict_idle();
            tokio::select! {
                p = Arc::clone(&self.permits).acquire_owned() => return p.ok(),
                _ = stopped(stop.clone()) => return None,
                // None idle now: look again soon (a request may have finished); one evicted: it
                // closes within its grace period.
                _ = tokio::time::sleep(if evicted { CLOSE_GRACE * 3 } else { CLOSE_GRACE }) => {}
            }
        }
    }
}

/// Resolves once `rx` says the drain has begun (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// One accepted connection's place under the cap and in the gauge, until its task ends (or is
/// dropped unfinished).
struct Opened {
    gauge: Option<prometheus::IntGauge>,
    _permit: OwnedSemaphorePermit,
}

impl Opened {
    fn new(gauge: Option<prometheus::IntGauge>, permit: OwnedSemaphorePermit) -> Opened {
        if let Some(g) = &gauge {
            g.inc();
        }
        Opened { gauge, _permit: permit }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// Accepts connections on `listener` under `conns`' cap until the drain begins; each accepted
/// connection is driven by the future `serve` makes, on a task of its own: on this runtime, or,
/// given `threads`, whole on the least busy of them (see [`ConnThreads`]).
pub async fn accept_loop<F, Fut>(listener: TcpListener, conns: Arc<Conns>, stop: watch::Receiver<bool>, threads: Option<Arc<ConnThreads>>, serve: F)
where
    F: Fn(TcpStream, Arc<Conn>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // back off a moment instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(stop.clone()) => return,
        };
        let Some(permit) = conns.permit(&stop).await else { return };
        let _ = tcp.set_nodelay(true);
        let conn = conns.register();
        let open = Opened::new(conns.gauge.clone(), permit);
        let serve = Arc::clone(&serve);
        match &threads {
            Some(t) => {
                t.spawn_conn(tcp, move |tcp| async move {
                    serve(tcp, conn).await;
                    drop(open);
                });
            }
            None => {
                tokio::spawn(async move {
                    serve(tcp, conn).await;
                    drop(open);
                });
            }
        }
    }
}

/// Drives one hyper connection until it ends, goes idle, is evicted or the drain begins (see
/// the module docs); `graceful` starts hyper's graceful shutdown of it.
pub async fn drive<F>(mut conn: Pin<&mut F>, graceful: impl Fn(Pin<&mut F>), state: Arc<Conn>, idle: Duration, stop: watch::Receiver<bool>)
where
    F: Future<Output = Result<(), hyper::Error>>,
{
    loop {
        let idle_left = state.idle_for().map(|d| idle.saturating_sub(d));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = state.wake.notified() => {
                if state.evicted.load(Ordering::Acquire) && state.active() == 0 {
                    return; // nothing in progress: dropping the connection closes the socket
                }
            }
            _ = stopped(stop.clone()) => break,
            _ = tokio::time::sleep(idle_left.unwrap_or(idle)), if idle_left.is_some() => {
                if state.idle_for().is_some_and(|d| d >= idle) {
                    return;
                }
            }
        }
    }
    // The drain: no more requests on this connection; what is in progress finishes first.
    graceful(conn.as_mut());
    let grace = tokio::time::sleep(CLOSE_GRACE);
    tokio::pin!(grace);
    let mut grace_over = false;
    loop {
        if grace_over && state.active() == 0 {
            return; // dropping the connection closes the socket
        }
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = &mut grace, if !grace_over => grace_over = true,
            _ = state.wake.notified() => {}
        }
    }
}

/// A response body that keeps its request counted as in progress until hyper has written it and
/// dropped it.
pub struct Tracked<B> {
    inner: B,
    _active: Active,
}

impl<B> Tracked<B> {
    /// `inner`, holding `active` until dropped.
    pub fn new(inner: B, active: Active) -> Tracked<B> {
        Tracked { inner, _active: active }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises this process's open-file limit to its hard limit (most systems start services at a
/// soft limit of 1024), and returns the limit now in force.
pub fn raise_open_files() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit struct we own; RLIMIT_NOFILE is a valid resource.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            // SAFETY: setrlimit reads one rlimit struct we own; raising the soft limit up to the
            // hard limit needs no privilege.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_is_evicted_and_busy_ones_never() {
        let conns = Conns::new(3, None);
        let a = conns.register();
        std::thread::sleep(Duration::from_millis(5));
        let b = conns.register();
        let busy = a.enter();
        assert!(conns.evict_idle());
        assert!(b.evicted.load(Ordering::Acquire) && !a.evicted.load(Ordering::Acquire));
        assert!(!conns.evict_idle(), "a is busy, b is already asked");
        drop(busy);
        assert_eq!(a.active(), 0);
        assert!(conns.evict_idle());
        assert!(a.evicted.load(Ordering::Acquire));
    }
}
