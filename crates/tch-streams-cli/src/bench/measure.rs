//! The measurement protocol of one point, identical to the Python peer's:
//!
//! 1. T threads are started; each turns grad off and builds its [`Client`] (binding a stream,
//!    taking its input), then all meet at a barrier.
//! 2. Each repetition: a warm-up of `warmup` (every thread ends it by settling: its stream is
//!    synchronised or its requests answered), a barrier; then `t0`, the threads are released
//!    together and count the samples they complete until `t0 + duration`, settle, and meet again;
//!    the main thread synchronises the device and takes the elapsed time, which so includes the
//!    final synchronisation and the overrun of the last call.
//! 3. samples/s of a repetition = samples completed / elapsed.
//!
//! A client that fails or panics fails the point (the other threads stop at their next call and
//! every thread still passes every barrier, so nothing hangs).

use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use tch::Device;

/// What one measuring thread does.
pub(crate) trait Client {
    /// Issues one call; returns the samples that *completed* during it (an engine client may
    /// only queue a request and complete none, or complete an earlier one).
    fn step(&mut self) -> Result<u64, String>;
    /// Synchronises: waits until all the client issued has finished; returns the samples that
    /// completed while waiting.
    fn settle(&mut self) -> Result<u64, String>;
    /// Called before each phase: `timed` is false for a warm-up, true for a timed phase (a client
    /// that measures latency records it only then).
    fn phase(&mut self, _timed: bool) {}
}

/// Builds a client on its measuring thread (so stream binding applies to that thread).
pub(crate) type Factory<'a> = Box<dyn FnOnce() -> Result<Box<dyn Client + 'a>, String> + Send + 'a>;

/// Repetitions and phase lengths of a point.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) reps: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Synchronised by the main thread at the end of each timed phase.
    pub(crate) devices: Vec<Device>,
}

struct Shared {
    barrier: Barrier,
    deadline: Mutex<Instant>,
    samples: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        self.error.lock().get_or_insert(e);
        self.failed.store(true, Ordering::SeqCst);
    }
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Runs the protocol with one thread per factory; returns samples/s of every repetition.
pub(crate) fn measure(factories: Vec<Factory<'_>>, timing: Timing) -> Result<Vec<f64>, String> {
    let n = factories.len();
    let shared = Shared {
        barrier: Barrier::new(n + 1),
        deadline: Mutex::new(Instant::now()),
        samples: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(n);
    let mut runs = Vec::with_capacity(timing.reps);
    std::thread::scope(|scope| {
        let mut started = 0;
        for (i, factory) in factories.into_iter().enumerate() {
            let (sh, go, reps) = (&shared, go_rx.clone(), timing.reps);
            let spawned = std::thread::Builder::new()
                .name(format!("tch-streams-bench-{i}"))
                .spawn_scoped(scope, move || {
                    if go.recv().is_ok() {
                        worker(sh, factory, reps);
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    shared.fail(format!("could not start measuring thread {i}: {e}"));
                    break;
                }
            }
        }
        if started < n {
            drop(go_tx); // the started threads see the channel close and exit without waiting
            return;
        }
        for _ in 0..n {
            let _ = go_tx.send(());
        }
        shared.barrier.wait(); // set up
        if shared.failed() {
            return;
        }
        for _ in 0..timing.reps {
            *shared.deadline.lock() = Instant::now() + timing.warmup;
            shared.barrier.wait(); // warm-up starts
            shared.barrier.wait(); // warm-up over, every client settled
            shared.samples.store(0, Ordering::SeqCst);
            let t0 = Instant::now();
            *shared.deadline.lock() = t0 + timing.duration;
            shared.barrier.wait(); // timed phase starts
            shared.barrier.wait(); // every client done and settled
            for &device in &timing.devices {
                if let Err(e) = tch_streams::stream::synchronize_device(device) {
                    shared.fail(format!("synchronizing {device:?} failed: {e}"));
                }
            }
            let elapsed = t0.elapsed().as_secs_f64();
            runs.push(shared.samples.load(Ordering::SeqCst) as f64 / elapsed);
            shared.barrier.wait(); // verdict: every thread sees the same `failed`
            if shared.failed() {
                return;
            }
        }
    });
    match shared.error.into_inner() {
        Some(e) => Err(e),
        None => Ok(runs),
    }
}

fn worker(sh: &Shared, factory: Factory<'_>, reps: usize) {
    let _no_grad = tch::no_grad_guard(); // grad mode is thread-local
    let mut client = match catch(factory) {
        Ok(c) => Some(c),
        Err(e) => {
            sh.fail(e);
            None
        }
    };
    sh.barrier.wait(); // set up
    if sh.failed() {
        return;
    }
    for _ in 0..reps {
        sh.barrier.wait(); // warm-up starts
        let deadline = *sh.deadline.lock();
        if let Some(c) = client.as_mut() {
            c.phase(false);
            if let Err(e) = catch(|| phase(c.as_mut(), deadline, &sh.failed)) {
                sh.fail(e);
            }
        }
        sh.barrier.wait(); // warm-up over
        sh.barrier.wait(); // timed phase starts
        let deadline = *sh.deadline.lock();
        if let Some(c) = client.as_mut() {
            c.phase(true);
            match catch(|| phase(c.as_mut(), deadline, &sh.failed)) {
                Ok(n) => {
                    sh.samples.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) => sh.fail(e),
            }
        }
        sh.barrier.wait(); // timed phase over
        sh.barrier.wait(); // verdict
        if sh.failed() {
            return;
        }
    }
}

/// At least one call, then calls until the deadline (or another thread fails), then settle.
fn phase(client: &mut dyn Client, deadline: Instant, failed: &AtomicBool) -> Result<u64, String> {
    if failed.load(Ordering::Relaxed) {
        return Ok(0);
    }
    let mut samples = client.step()?;
    while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
        samples += client.step()?;
    }
    Ok(samples + client.settle()?)
}

/// Runs `f`, turning a panic into an error message.
fn catch<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("panicked: {msg}"))
        }
    }
}
