//! Every answer reaches its caller (CPU): a ticket's waker, which runs on an engine thread, cannot
//! take a worker (or the answers it owes) down, nor join its own thread by shutting the engine
//! down; `shutdown_timeout` answers every request a stuck worker had set aside. Each test
//! reproduces one way this used to go wrong (issue #24) and fails, rather than hangs, if it comes
//! back. Every test runs under a watchdog and checks submitted = completed + failed.

mod common;

use common::{accounted, watchdog};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError, Ticket};
use tch_streams::models::Model;

/// One sample of four values `v, v+1, v+2, v+3`.
fn x(v: f64) -> Tensor {
    Tensor::arange(4, (Kind::Float, Device::Cpu)).f_add_scalar(v).unwrap().reshape([1, 4])
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

// ---- 3. A waker runs on the worker's thread -------------------------------------------------

fn poll_once(t: &mut Ticket, waker: &Waker) -> Poll<Result<Tensor, EngineError>> {
    Pin::new(t).poll(&mut Context::from_waker(waker))
}

struct Panics;
impl Wake for Panics {
    fn wake(self: Arc<Self>) {
        panic!("a waker that panics");
    }
}

/// A panicking waker used to kill the worker: the other answers of its batch came back
/// `WorkerDied` (after being counted completed), and no worker was left to serve.
#[test]
fn a_panicking_waker_harms_no_answer_and_no_worker() {
    watchdog(60, || {
        let engine = Engine::builder(Model::closure(|x: &Tensor| x.f_add_scalar(1.0)))
            .devices(vec![Device::Cpu])
            .workers(1)
            .batching(Batching::Dynamic { max_batch: 2, max_wait: Duration::MAX })
            .build()
            .unwrap();
        let mut a = engine.submit(x(0.0));
        // The batch waits for a second request, so this poll registers the waker first.
        assert!(poll_once(&mut a, &Waker::from(Arc::new(Panics))).is_pending());
        let b = engine.submit(x(10.0));
        assert_eq!(b.wait().map(|t| values(&t)), Ok(vec![11.0, 12.0, 13.0, 14.0]));
        assert_eq!(a.wait().map(|t| values(&t)), Ok(vec![1.0, 2.0, 3.0, 4.0]));
        // The same worker serves on.
        let outs = engine.infer_many(vec![x(20.0), x(30.0)]);
        assert!(outs.iter().all(Result::is_ok), "{outs:?}");
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.submitted, st.completed, st.failed, st.workers_replaced), (4, 4, 0, 0));
    });
}

/// A waker that shuts the engine down runs on a worker thread: it used to join that very
/// thread. Now it stops intake and returns; the worker serves what was queued before.
struct ShutsDown {
    engine: Mutex<Option<Arc<Engine>>>,
    returned: AtomicBool,
}
impl Wake for ShutsDown {
    fn wake(self: Arc<Self>) {
        let engine = self.engine.lock().unwrap().take();
        if let Some(e) = engine {
            e.shutdown();
            self.returned.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_waker_that_shuts_the_engine_down_does_not_join_its_own_worker() {
    watchdog(60, || {
        let (tokens, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        // Each call waits for a token, so both requests are queued before the first answer.
        let model = Model::closure(move |x: &Tensor| -> Result<Tensor, String> {
            gate.lock().map_err(|e| e.to_string())?.recv().map_err(|e| e.to_string())?;
            x.f_add_scalar(1.0).map_err(|e| e.to_string())
        });
        let engine = Arc::new(Engine::builder(model).devices(vec![Device::Cpu]).workers(1).batching(Batching::Off).build().unwrap());
        let waker = Arc::new(ShutsDown { engine: Mutex::new(Some(Arc::clone(&engine))), returned: AtomicBool::new(false) });
        let mut a = engine.submit(x(0.0));
        assert!(poll_once(&mut a, &Waker::from(Arc::clone(&waker))).is_pending());
        let b = engine.submit(x(10.0));
        tokens.send(()).unwrap();
        tokens.send(()).unwrap();
        assert_eq!(a.wait().map(|t| values(&t)), Ok(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(b.wait().map(|t| values(&t)), Ok(vec![11.0, 12.0, 13.0, 14.0]), "queued before the shutdown: served");
        assert!(waker.returned.load(Ordering::SeqCst), "the waker's shutdown returned");
        assert_eq!(engine.infer(x(0.0)).unwrap_err(), EngineError::ShutDown);
        engine.shutdown();
        let st = engine.stats();
        accounted(&st);
        assert_eq!((st.submitted, st.completed, st.failed, st.workers_replaced), (3, 2, 1, 0));
    });
}

// ---- 4. shutdown_timeout leaves set-aside requests unanswered -------------------------------

/// A worker stuck in the model holds requests it set aside: one of another shape (taken aside
/// while gathering) and one trimmed from its batch. `shutdown_timeout` answers both.
#[test]
fn shutdown_timeout_answers_what_a_stuck_worker_set_aside() {
    watchdog(60, || {
        let (stuck_tx, stuck) = mpsc::channel::<()>();
        let stuck_tx = Mutex::new(stuck_tx);
        let model = Model::closure(move |x: &Tensor| {
            if x.double_value(&[0, 0]) > 100.0 {
                let _ = stuck_tx.lock().map(|tx| tx.send(()));
                loop {
                    std::thread::park(); // stuck for good (this thread is left behind)
                }
            }
            x.f_add_scalar(1.0)
        });
        let engine = Engine::builder(model)
            .devices(vec![Device::Cpu])
            .workers(1)
            // A batch gathers until it holds 3 samples; 3 would be padded to 4: trimmed to 2.
            .batching(Batching::Dynamic { max_batch: 3, max_wait: Duration::MAX })
            .buckets(vec![2, 4])
            .build()
            .unwrap();
        let s1 = engine.submit(x(200.0));
        let other_shape = engine.submit(Tensor::ones([1, 8], (Kind::Float, Device::Cpu)));
        let s2 = engine.submit(x(300.0));
        let trimmed = engine.submit(x(0.0));
        stuck.recv().unwrap(); // the batch [s1, s2] is in the model for good
        assert!(!engine.shutdown_timeout(Duration::from_millis(100)), "the worker cannot finish");
        assert_eq!(trimmed.wait().unwrap_err(), EngineError::ShutdownTimeout);
        assert_eq!(other_shape.wait().unwrap_err(), EngineError::ShutdownTimeout);
        assert!(!s1.is_ready() && !s2.is_ready(), "still in the model");
        let st = engine.stats();
        assert_eq!((st.submitted, st.completed, st.failed, st.workers_detached), (4, 0, 2, 1), "two requests are still in the model");
        std::mem::forget(engine); // dropping would wait for the stuck worker again
    });
}
