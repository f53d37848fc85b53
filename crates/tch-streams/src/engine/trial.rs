//! The start-up trial: batching off against dynamic batching at the calibrated `max_batch`, run
//! side by side on the engine's own set-up, so that the defaults never batch where batching off
//! serves more.
//!
//! The calibration ([`super::auto::calibrate`]) times forward passes alone, on one thread: it
//! sees neither the cost of joining requests into a batch and splitting every output back per
//! request, nor what several workers on their own streams gain by running unbatched requests
//! concurrently. The trial measures both, on the configuration the engine will run. Where the
//! plan asks (GPU workers it counted itself), a third mode runs the batches on only the first
//! half of the workers, the others idle, so that the engine can start fewer workers when they
//! serve nearly as much ([`Trial::fewer_suffice`]); and once every thread is set up it reads
//! what the workers hold on the first GPU ([`Trial::held_per_worker`]), for the memory estimate.
//!
//! Invariants:
//! - One trial thread per planned worker, on that worker's device and model instance (shared
//!   where the workers share it), bound for its whole life to a stream of its own taken as the
//!   worker takes its stream (a pool stream where the device has a pool, else the default
//!   stream), grad off. Each runs the model through a [`Runner`] of its own, which captures CUDA
//!   graphs exactly when the workers will ([`worker::warm_up`]), and runs every batch with the
//!   workers' own code ([`worker::run_batch`]): requests' host inputs joined (through pinned
//!   staging on CUDA), the model, the outputs copied to the host under [`Output::Cpu`], and every
//!   output split back per request.
//! - Each thread synchronises its own stream: it lets as many batches run ahead of it as the
//!   worker does (up to [`DEPTH`] with a completion thread, none without), and waits for its
//!   stream before it reports a rate, so every reported sample was computed.
//! - The calling thread only coordinates: it starts every phase on every thread at once, and
//!   waits for each step at most the step limit it is given beyond the phase's window. A thread
//!   that fails, panics or runs out of time ends the trial (`Err`); threads still in the model
//!   are left behind and end on their own once the model returns.
//! - Each thread frees its cuBLAS workspaces ([`ThreadWorkspaces`]) and drops its graphs before
//!   it reports that it has ended; the caller gives the devices' cached memory back afterwards.

use super::buckets::Buckets;
use super::completion::DEPTH;
use super::config::{Output, SampleInputs};
use super::graphs::Runner;
use super::metrics::Stages;
use super::plan::{Specs, WorkerPlan};
use super::staging::Staging;
use super::thread_caches::ThreadWorkspaces;
use super::threads::panic_message;
use super::worker::{self, BatchSetup};
use crate::stream::{bind_thread, Event, Priority, Stream};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// How long each mode runs per round on every thread. Long enough for a few hundred requests
/// of a model of a few hundred µs per call (and a few dozen batches of one of a few ms), so that
/// the rate is not one iteration's noise; short enough that the four phases add well under a
/// second to `build()`.
pub(crate) const WINDOW: Duration = Duration::from_millis(150);

/// Rounds of each mode, alternating (off, batched[, fewer], off, batched[, fewer]): the best
/// rate of each mode counts, so a burst of other work on the machine during one phase does not
/// decide the choice.
const ROUNDS: usize = 2;

/// Share of all the workers' batched rate that the fewer workers must reach for the engine to
/// start only them: the memory of the others' graphs and cached batches is worth more than the
/// last few percent, which are within the trial's own noise.
pub(crate) const FEWER_KEEPS: f64 = 0.95;

/// What the trial measured: requests served per second by all the workers together, with
/// batching off and with batches of `max_batch` requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trial {
    /// Workers (trial threads) that ran at once.
    pub workers: usize,
    /// Requests per batch in the batched runs (the calibrated `max_batch`).
    pub max_batch: usize,
    /// Single-sample requests per second, one request per forward pass (best of the rounds).
    pub off_per_s: f64,
    /// Single-sample requests per second in batches of `max_batch` (best of the rounds).
    pub batched_per_s: f64,
    /// Workers that ran the third mode, batches of `max_batch` on only the first of them (the
    /// others idle), when it ran: GPU workers the builder did not count, two or more.
    pub fewer_workers: Option<usize>,
    /// Single-sample requests per second in batches of `max_batch` on `fewer_workers`.
    pub fewer_per_s: Option<f64>,
    /// Device bytes each worker held once set up as it will serve (graphs of `max_batch` and of
    /// one sample captured, buffers made, each mode run once): the rise of the first GPU's
    /// reserved memory over the trial's start, divided by the workers on it. `None` on the CPU.
    pub held_per_worker: Option<i64>,
}

impl Trial {
    /// Whether batching (on all the workers, or on fewer where they suffice) served more than
    /// batching off.
    pub fn batching_wins(&self) -> bool {
        self.batched_per_s > self.off_per_s || self.fewer_suffice().is_some()
    }

    /// The workers to start when fewer of them, batching, serve more than all of them unbatched
    /// and at least 95 % of all of them batched: `Some(fewer_workers)`; `None` to start all.
    /// (Where batching off serves the most, it holds the least memory too: no fewer workers.)
    pub fn fewer_suffice(&self) -> Option<usize> {
        let (n, rate) = (self.fewer_workers?, self.fewer_per_s?);
        (rate > self.off_per_s && rate >= FEWER_KEEPS * self.batched_per_s).then_some(n)
    }
}

/// What the trial runs, besides the workers.
pub(crate) struct TrialSetup<'a> {
    /// Per-sample shape and dtype of every input.
    pub(crate) specs: &'a Specs,
    pub(crate) samples: Option<&'a SampleInputs>,
    pub(crate) output: Output,
    /// Whether the workers capture CUDA graphs (on CUDA devices).
    pub(crate) graphs: bool,
    /// Requests per batch in the batched runs; at least 2.
    pub(crate) max_batch: usize,
    /// Workers of the third mode (batched on only the first of them), when it runs: 1 or more
    /// and fewer than the workers.
    pub(crate) fewer: Option<usize>,
}

/// A trial thread's report to the coordinator.
enum Report {
    /// Set up (stream bound, warmed up, graphs captured, each mode run once).
    Ready,
    /// A phase done: requests served and the seconds it took (stream synchronised).
    Phase { requests: u64, secs: f64 },
    /// Why the thread stopped (the model failed or panicked, no stream).
    Failed(String),
    /// The thread's graphs, buffers and workspaces are freed; it is about to end.
    Ended,
}

/// Runs the trial on one thread per worker in `workers`: every thread sets up, then runs
/// `2 × ROUNDS` phases of `window` each, off and batched alternately, all threads at once.
/// `limit` bounds every wait beyond the phases' own time (each phase's last iteration, the
/// threads' end; set-up gets `limit` per thread, as graph-capturing set-ups take turns). `Err` says why there is no answer: the model failed or panicked, a thread
/// could not start or took longer than `limit`.
pub(crate) fn compare(workers: &[WorkerPlan], setup: &TrialSetup<'_>, window: Duration, limit: Duration) -> Result<Trial, String> {
    if setup.max_batch < 2 {
        return Err(format!("a batch of {} is no batch", setup.max_batch));
    }
    let fewer = setup.fewer.filter(|&f| f >= 1 && f < workers.len());
    // What the workers of the first GPU hold once set up, per worker.
    let gpu = workers.iter().map(|w| w.device).find(|&d| d != Device::Cpu);
    let reserved = move || gpu.and_then(|d| crate::stream::memory_stats(d).ok()).map(|m| m.reserved);
    let on_gpu = workers.iter().filter(|w| Some(w.device) == gpu).count().max(1) as i64;
    let before = reserved();
    let held = move || Some((reserved()? - before?).max(0) / on_gpu);
    let (tx, rx) = unbounded::<(usize, Report)>();
    let mut go = Vec::with_capacity(workers.len());
    for (i, w) in workers.iter().enumerate() {
        let (go_tx, go_rx) = bounded::<()>(2 * ROUNDS);
        let job = Job {
            device: w.device,
            model: w.model.clone(),
            use_pool: w.use_pool,
            specs: setup.specs.clone(),
            samples: setup.samples.cloned(),
            output: setup.output,
            graphs: setup.graphs && matches!(w.device, Device::Cuda(_)),
            max_batch: setup.max_batch,
            window,
            modes: if fewer.is_some() { 3 } else { 2 },
            idle_in_fewer: fewer.is_some_and(|f| i >= f),
        };
        let tx = tx.clone();
        let spawned = std::thread::Builder::new().name(format!("tch-streams-trial-{i}")).spawn(move || {
            let _no_grad = tch::no_grad_guard();
            let failed = catch_unwind(AssertUnwindSafe(|| job.run(i, &go_rx, &tx)))
                .unwrap_or_else(|p| Err(format!("the model panicked: {}", panic_message(&*p))));
            if let Err(why) = failed {
                let _ = tx.send((i, Report::Failed(why)));
            }
            let _ = tx.send((i, Report::Ended));
        });
        if let Err(e) = spawned {
            return Err(format!("no thread for the trial: {e}")); // dropping `go` ends those started
        }
        go.push(go_tx);
    }
    drop(tx);
    let n = workers.len();
    let ended = std::cell::Cell::new(0);
    let phases = Phases { max_batch: setup.max_batch, fewer, window, limit };
    let outcome = coordinate(&rx, &go, &ended, &phases, &held);
    drop(go); // threads waiting for a phase end
    if outcome.is_ok() {
        // Each is about to end, its memory freed: wait for that, so that the caller can give the
        // memory back. (After a failure or a timeout, threads may be stuck in the model: not waited for.)
        let deadline = Instant::now() + limit;
        let mut ended = ended.get();
        while ended < n {
            match rx.recv_deadline(deadline) {
                Ok((_, Report::Ended)) => ended += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    outcome
}

/// What the coordinator runs: the modes' batch and fewer workers, each phase's window and the
/// limit on every wait beyond it.
#[derive(Clone, Copy)]
struct Phases {
    max_batch: usize,
    fewer: Option<usize>,
    window: Duration,
    limit: Duration,
}

/// Waits for every thread to be ready (then reads `held`, what the workers hold), then starts
/// each phase on all of them and adds up their rates; the best of each mode's rounds. Counts in
/// `ended` the threads that ended meanwhile (one may end after its last report while the
/// others' are awaited).
fn coordinate(
    rx: &Receiver<(usize, Report)>,
    go: &[Sender<()>],
    ended: &std::cell::Cell<usize>,
    phases: &Phases,
    held: &dyn Fn() -> Option<i64>,
) -> Result<Trial, String> {
    let Phases { max_batch, fewer, window, limit } = *phases;
    let n = go.len();
    let wait = |deadline: Instant, what: &str, allowed: Duration| -> Result<(usize, Report), String> {
        loop {
            return match rx.recv_deadline(deadline) {
                Ok((i, Report::Failed(why))) => Err(format!("trial thread {i}: {why}")),
                Ok((_, Report::Ended)) => {
                    ended.set(ended.get() + 1);
                    continue;
                }
                Ok(r) => Ok(r),
                Err(RecvTimeoutError::Timeout) => Err(format!("{what} took longer than {} ms", allowed.as_millis())),
                Err(RecvTimeoutError::Disconnected) => Err("every trial thread ended".into()),
            };
        }
    };
    // Each thread's set-up is a step, and graph-capturing ones take turns (see
    // `device_cache`): the last may start only after all the others.
    let allowed = limit.saturating_mul(n.max(1) as u32);
    let deadline = Instant::now() + allowed;
    for _ in 0..n {
        wait(deadline, "setting up (warm-up, graph capture)", allowed)?;
    }
    let held_per_worker = held();
    let modes = if fewer.is_some() { 3 } else { 2 };
    let mut best = [0.0f64; 3]; // off, batched, fewer
    for phase in 0..modes * ROUNDS {
        for g in go {
            g.send(()).map_err(|_| "a trial thread ended early".to_string())?;
        }
        let deadline = Instant::now() + window + limit;
        let mut rate = 0.0;
        for _ in 0..n {
            match wait(deadline, "a phase", limit)? {
                (_, Report::Phase { requests, secs }) if secs > 0.0 => rate += requests as f64 / secs,
                (i, _) => return Err(format!("trial thread {i} reported no time")),
            }
        }
        best[phase % modes] = best[phase % modes].max(rate);
    }
    let [off, batched, on_fewer] = best;
    let usable = |r: f64| r.is_finite() && r > 0.0;
    if !(usable(off) && usable(batched) && (fewer.is_none() || usable(on_fewer))) {
        return Err(format!("no usable rates (unbatched {off}/s, batched {batched}/s, on fewer workers {on_fewer}/s)"));
    }
    Ok(Trial {
        workers: n,
        max_batch,
        off_per_s: off,
        batched_per_s: batched,
        fewer_workers: fewer,
        fewer_per_s: fewer.map(|_| on_fewer),
        held_per_worker,
    })
}

/// One trial thread's work.
struct Job {
    device: Device,
    model: std::sync::Arc<dyn crate::models::Forward>,
    use_pool: bool,
    specs: Specs,
    samples: Option<SampleInputs>,
    output: Output,
    graphs: bool,
    max_batch: usize,
    window: Duration,
    /// Modes per round: off and batched, and the third (batched on fewer workers) when 3.
    modes: usize,
    /// Whether this thread idles in the third mode (it is not among the fewer workers).
    idle_in_fewer: bool,
}

impl Job {
    /// Set-up, then the phases as `go` starts them. Returns when the phases are done or `go`
    /// is gone (the coordinator gave up); everything it made is dropped by then.
    fn run(&self, index: usize, go: &Receiver<()>, tx: &Sender<(usize, Report)>) -> Result<(), String> {
        let stream = if self.use_pool { Stream::from_pool(self.device, Priority::Normal) } else { Stream::default_for(self.device) }
            .map_err(|e| e.to_string())?;
        bind_thread(&stream).map_err(|e| e.to_string())?;
        // libtorch's CPU operations on this thread alone, as on a worker's.
        super::host_ops::serial_for_gpu_worker(self.device);
        // Declared first, dropped last: frees this thread's cuBLAS workspaces once nothing
        // (graphs, queued work) can use them.
        let _workspaces = ThreadWorkspaces::new(self.device, stream);
        let mut runner = Runner::new(self.model.clone(), self.graphs);
        // Largest first, as a worker does (its graphs share one memory pool).
        worker::warm_up(&self.model, &mut runner, &self.specs, self.samples.as_ref(), &[self.max_batch, 1], self.device, false)?;
        // Requests as they reach a worker: single-sample inputs on the host, each its own.
        let one = SampleInputs::make(self.samples.as_ref(), &self.specs, 1, Device::Cpu)?;
        let many = SampleInputs::make(self.samples.as_ref(), &self.specs, self.max_batch, Device::Cpu)?;
        let requests: Vec<Vec<Tensor>> = (0..self.max_batch as i64)
            .map(|j| many.iter().map(|x| x.f_narrow(0, j, 1).and_then(|r| r.f_contiguous())).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        drop(many);
        let modes = [
            Mode { requests: vec![one.as_slice()], rows: vec![1], buckets: Buckets::default() },
            Mode {
                requests: requests.iter().map(Vec::as_slice).collect(),
                rows: vec![1; self.max_batch],
                buckets: Buckets::powers_of_two(self.max_batch),
            },
        ];
        let stages = Stages::default(); // the workers' stage counters; not reported
        let mut staging = Staging::default();
        let mut ahead = Ahead::new(self.device, self.output);
        let mut once = |mode: &Mode<'_>, ahead: &mut Ahead| -> Result<(), String> {
            let setup = BatchSetup { device: self.device, buckets: &mode.buckets, output: self.output, stages: &stages };
            let out = worker::run_batch(&setup, &stream, &mut runner, &mut staging, &mode.requests, &mode.rows).map_err(|e| e.to_string())?;
            let launched = ahead.launched(&stream);
            // Dropped once the batch is done where the thread waits for each batch (answers on
            // the host), as a worker's answers are dropped by callers who have received them:
            // a pinned block freed while its copy is still queued is reclaimed by libtorch's
            // host cache only once every older freed block is, and a trial thread dropping it
            // earlier would pin fresh memory for most of its batches, which a serving worker
            // does only until its cache holds enough blocks. Device answers (the thread lets
            // batches run ahead) are freed in the stream's order either way.
            drop(out);
            launched
        };
        // First sight of each mode's path (staging buffers, the split): not timed.
        for mode in &modes {
            once(mode, &mut ahead)?;
        }
        ahead.drain(&stream)?;
        let _ = tx.send((index, Report::Ready));
        for phase in 0..self.modes * ROUNDS {
            if go.recv().is_err() {
                return Ok(()); // the coordinator gave up
            }
            // The third mode batches as the second does, on the first threads only.
            let kind = phase % self.modes;
            if kind == 2 && self.idle_in_fewer {
                let _ = tx.send((index, Report::Phase { requests: 0, secs: self.window.as_secs_f64() }));
                continue;
            }
            let mode = &modes[kind.min(1)];
            let t0 = Instant::now();
            let mut iterations = 0u64;
            while iterations == 0 || t0.elapsed() < self.window {
                once(mode, &mut ahead)?;
                iterations += 1;
            }
            ahead.drain(&stream)?;
            let secs = t0.elapsed().as_secs_f64();
            let _ = tx.send((index, Report::Phase { requests: iterations * mode.rows.len() as u64, secs }));
        }
        Ok(())
    }
}

/// One mode's batch: its requests' inputs and rows, and the buckets the worker pads to.
struct Mode<'a> {
    requests: Vec<&'a [Tensor]>,
    rows: Vec<i64>,
    buckets: Buckets,
}

/// How far a trial thread lets its stream run ahead, as its worker would: with a completion
/// thread (CUDA, results left on the device) up to [`DEPTH`] batches wait for the device while
/// the worker launches the next; otherwise the worker waits for each batch before the next.
struct Ahead {
    device: Device,
    /// Batches that may be unfinished once the next is launched.
    depth: usize,
    /// One event per unfinished batch, oldest first.
    pending: VecDeque<Event>,
    spare: Vec<Event>,
}

impl Ahead {
    fn new(device: Device, output: Output) -> Ahead {
        let depth = if output == Output::OnDevice && matches!(device, Device::Cuda(_)) { DEPTH } else { 0 };
        Ahead { device, depth, pending: VecDeque::new(), spare: Vec::new() }
    }

    /// A batch was launched on `stream`: waits until at most `depth` batches are unfinished.
    fn launched(&mut self, stream: &Stream) -> Result<(), String> {
        if self.device == Device::Cpu {
            return Ok(()); // CPU work is done when the call returns
        }
        if self.depth == 0 {
            return stream.synchronize().map_err(|e| e.to_string());
        }
        let mut event = match self.spare.pop() {
            Some(e) => e,
            None => Event::new(self.device).map_err(|e| e.to_string())?,
        };
        event.record(stream).map_err(|e| e.to_string())?;
        self.pending.push_back(event);
        while self.pending.len() > self.depth {
            let done = self.pending.pop_front().expect("pending");
            done.synchronize().map_err(|e| e.to_string())?;
            self.spare.push(done);
        }
        Ok(())
    }

    /// Waits for everything launched.
    fn drain(&mut self, stream: &Stream) -> Result<(), String> {
        stream.synchronize().map_err(|e| e.to_string())?;
        self.spare.extend(self.pending.drain(..));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Model, Outputs};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tch::Kind;

    /// Runs `f` on a thread of its own; fails if it takes longer than `secs` (a hang).
    fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(Ok(v)) => v,
            Ok(Err(p)) => std::panic::resume_unwind(p),
            Err(_) => panic!("watchdog: did not finish within {secs} s (a hang)"),
        }
    }

    fn cpu_workers(model: &Model, n: usize) -> Vec<WorkerPlan> {
        let m = model.instantiate(Device::Cpu).unwrap();
        (0..n).map(|_| WorkerPlan { device: Device::Cpu, model: Arc::clone(&m), use_pool: false }).collect()
    }

    fn trial(model: &Model, max_batch: usize, limit: Duration) -> Result<Trial, String> {
        let specs: Specs = vec![(vec![4], Kind::Float)];
        let setup = TrialSetup { specs: &specs, samples: None, output: Output::OnDevice, graphs: false, max_batch, fewer: None };
        compare(&cpu_workers(model, 2), &setup, WINDOW, limit)
    }

    fn sleep_ms(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    fn rates_are_sane(t: &Trial) {
        assert!(t.off_per_s.is_finite() && t.off_per_s > 0.0, "{t:?}");
        assert!(t.batched_per_s.is_finite() && t.batched_per_s > 0.0, "{t:?}");
        assert_eq!(t.workers, 2, "{t:?}");
    }

    /// 2 ms a call whatever the rows (a launch-bound model): batches of 16 serve ~16x more.
    #[test]
    fn a_fixed_cost_per_call_makes_batching_win() {
        let t = watchdog(60, || {
            let fixed = Model::closure(|x: &Tensor| {
                sleep_ms(2);
                x.f_mul_scalar(2.0)
            });
            trial(&fixed, 16, Duration::from_secs(30)).expect("a trial")
        });
        rates_are_sane(&t);
        assert_eq!(t.max_batch, 16);
        assert_eq!(t.held_per_worker, None, "no device memory on the CPU");
        assert!(t.batched_per_s > 3.0 * t.off_per_s, "{t:?}");
    }

    /// A model that holds a lock for its whole call: one worker serves as much as three, and the
    /// third mode says so; a model that sleeps without one is served three times faster by three.
    #[test]
    fn fewer_workers_are_kept_only_when_they_serve_nearly_as_much() {
        let (serial, parallel) = watchdog(60, || {
            let lock = Arc::new(parking_lot::Mutex::new(()));
            let serial = Model::closure(move |x: &Tensor| {
                let _held = lock.lock();
                sleep_ms(2);
                x.f_mul_scalar(2.0)
            });
            let parallel = Model::closure(|x: &Tensor| {
                sleep_ms(2);
                x.f_mul_scalar(2.0)
            });
            let specs: Specs = vec![(vec![4], Kind::Float)];
            let setup = TrialSetup { specs: &specs, samples: None, output: Output::OnDevice, graphs: false, max_batch: 8, fewer: Some(1) };
            let run = |m: &Model| compare(&cpu_workers(m, 3), &setup, WINDOW, Duration::from_secs(30)).expect("a trial");
            (run(&serial), run(&parallel))
        });
        for t in [&serial, &parallel] {
            assert_eq!((t.workers, t.fewer_workers), (3, Some(1)), "{t:?}");
            assert!(t.fewer_per_s.is_some_and(|r| r.is_finite() && r > 0.0), "{t:?}");
            assert!(t.batching_wins(), "{t:?}");
        }
        // Serialised: three workers gain nothing over one (within the trial's noise).
        assert!(serial.fewer_per_s.unwrap() > 0.7 * serial.batched_per_s, "{serial:?}");
        // Concurrent: one worker serves about a third.
        assert!(parallel.fewer_per_s.unwrap() < 0.6 * parallel.batched_per_s, "{parallel:?}");
        assert_eq!(parallel.fewer_suffice(), None, "{parallel:?}");
    }

    #[test]
    fn fewer_workers_suffice_only_at_the_stated_share_of_a_winning_batched_rate() {
        let t = Trial {
            workers: 4,
            max_batch: 64,
            off_per_s: 100.0,
            batched_per_s: 1000.0,
            fewer_workers: Some(2),
            fewer_per_s: Some(960.0),
            held_per_worker: None,
        };
        assert_eq!(t.fewer_suffice(), Some(2));
        assert_eq!(Trial { fewer_per_s: Some(940.0), ..t }.fewer_suffice(), None);
        assert_eq!(Trial { off_per_s: 2000.0, ..t }.fewer_suffice(), None, "batching off serves the most");
        assert!(!Trial { off_per_s: 2000.0, ..t }.batching_wins());
        // All the workers batching contend (copies, host memory); half of them serve the most.
        let contended = Trial { off_per_s: 3378.0, batched_per_s: 1832.0, fewer_per_s: Some(5177.0), ..t };
        assert_eq!(contended.fewer_suffice(), Some(2));
        assert!(contended.batching_wins(), "batching on the fewer workers beats batching off");
        assert_eq!(Trial { fewer_workers: None, fewer_per_s: None, ..t }.fewer_suffice(), None);
    }

    /// rows² ms a call, and a dict of two outputs split per request: one at a time serves ~8x
    /// more than batches of 8.
    #[test]
    fn a_cost_that_grows_faster_than_the_rows_makes_batching_off_win() {
        let t = watchdog(60, || {
            let superlinear = Model::closure_many(|xs: &[Tensor]| -> Result<Outputs, tch::TchError> {
                let rows = xs[0].size()[0] as u64;
                sleep_ms(rows * rows);
                Ok(Outputs::Dict(vec![("double".into(), xs[0].f_mul_scalar(2.0)?), ("sum".into(), xs[0].f_sum_dim_intlist(1, true, None)?)]))
            });
            trial(&superlinear, 8, Duration::from_secs(30)).expect("a trial")
        });
        rates_are_sane(&t);
        assert!(t.off_per_s > 3.0 * t.batched_per_s, "{t:?}");
    }

    #[test]
    fn a_model_that_fails_or_panics_in_a_batch_gives_no_answer() {
        watchdog(60, || {
            let failing = Model::closure(|x: &Tensor| -> Result<Tensor, String> {
                if x.size()[0] > 1 { Err("no batches here".into()) } else { Ok(x.shallow_clone()) }
            });
            let e = trial(&failing, 4, Duration::from_secs(30)).unwrap_err();
            assert!(e.contains("no batches here"), "{e}");
            let panicking = Model::closure(|x: &Tensor| -> Result<Tensor, String> {
                assert!(x.size()[0] == 1, "batch of {}", x.size()[0]);
                Ok(x.shallow_clone())
            });
            let e = trial(&panicking, 4, Duration::from_secs(30)).unwrap_err();
            assert!(e.contains("panicked") && e.contains("batch of 4"), "{e}");
            assert!(trial(&failing, 1, Duration::from_secs(30)).is_err(), "a batch of 1 is not compared");
        });
    }

    /// A model stuck in a batch holds the trial no longer than the limit beyond the window.
    #[test]
    fn a_model_stuck_in_the_trial_is_given_up_on_after_the_limit() {
        let release = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&release);
        let outcome = watchdog(60, move || {
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // Warm-up: 2 calls at 4 rows and 1 at 1 row, per thread; untimed runs: 1 + 1. The
            // first timed batch of 4 sticks.
            let stuck = Model::closure(move |x: &Tensor| {
                if x.size()[0] == 4 && calls.fetch_add(1, Ordering::SeqCst) >= 6 {
                    while !r.load(Ordering::SeqCst) {
                        sleep_ms(5);
                    }
                }
                x.f_mul_scalar(2.0)
            });
            let t0 = Instant::now();
            let e = trial(&stuck, 4, Duration::from_millis(500)).unwrap_err();
            (e, t0.elapsed())
        });
        release.store(true, Ordering::SeqCst);
        let (e, took) = outcome;
        assert!(e.contains("took longer than 500 ms"), "{e}");
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
}
