//! Reliability on CPU (run in CI): fuzzed request validation never panics and always explains;
//! dropped tickets are skipped and counted as cancelled; thread churn. (The CLI's parsing is
//! fuzzed in the CLI crate's tests.)

mod common;

use common::{accounted, watchdog};
use crossbeam_channel::{unbounded, Receiver, Sender};
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError};
use tch_streams::models::{Builtin, Model};
use tch_streams::stream::{with_stream, Priority, Stream};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::builder(Model::Builtin(Builtin::SmallMlp)).devices(vec![Device::Cpu]).workers(2).build().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn request_validation_never_panics(dims in proptest::collection::vec(0i64..4, 0..4), last in prop_oneof![Just(512i64), 1i64..600], double in any::<bool>()) {
        let mut shape = dims.clone();
        if !shape.is_empty() { *shape.last_mut().unwrap() = last; }
        let kind = if double { Kind::Double } else { Kind::Float };
        let valid = shape.len() == 2 && shape[0] > 0 && shape[1] == 512 && !double;
        let x = Tensor::zeros(shape.as_slice(), (kind, Device::Cpu));
        match engine().infer(x) {
            Ok(y) => { prop_assert!(valid, "accepted {:?} {:?}", shape, kind); prop_assert_eq!(y.size(), vec![shape[0], 512]); }
            Err(EngineError::InvalidInput(m)) => { prop_assert!(!valid, "refused a valid input: {m}"); prop_assert!(m.contains("expected") || m.contains("empty batch"), "{m}"); }
            Err(e) => prop_assert!(false, "unexpected error kind {e:?}"),
        }
    }
}

/// A model that counts its calls and the samples it was given, tells `entered` each time it is
/// called, and then waits until the gate is open (its sender dropped).
fn gated_add_one(calls: Arc<AtomicUsize>, samples: Arc<AtomicUsize>, entered: Sender<()>, gate: Receiver<()>) -> Model {
    Model::closure(move |x: &Tensor| {
        calls.fetch_add(1, Ordering::SeqCst);
        samples.fetch_add(x.size()[0] as usize, Ordering::SeqCst);
        let _ = entered.send(());
        let _ = gate.recv(); // returns once the gate's sender is dropped
        x.f_add_scalar(1.0)
    })
}

fn row(v: f64) -> Tensor {
    Tensor::full([1, 4], v, (Kind::Float, Device::Cpu))
}

/// The requests behind a busy worker whose tickets are dropped never reach the model; the one
/// after them, kept, is served; the counters add up.
#[test]
fn dropped_tickets_are_skipped_before_the_model_runs_and_counted_as_cancelled() {
    watchdog(60, || {
        let (calls, samples) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (entered_tx, entered) = unbounded();
        let (gate, gate_rx) = unbounded::<()>();
        let model = gated_add_one(Arc::clone(&calls), Arc::clone(&samples), entered_tx, gate_rx);
        let engine = Engine::builder(model).devices(vec![Device::Cpu]).workers(1).batching(Batching::Off).warmup(false).build().unwrap();
        let first = engine.submit(row(0.0));
        entered.recv().unwrap(); // the only worker is inside the model, held at the gate
        for i in 1..=5 {
            drop(engine.submit(row(i as f64)));
        }
        let kept = engine.submit(row(100.0));
        drop(gate);
        assert_eq!(first.wait().unwrap().double_value(&[0, 0]), 1.0);
        assert_eq!(kept.wait().unwrap().double_value(&[0, 0]), 101.0);
        engine.shutdown();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the model ran for the first and the kept request only");
        let st = engine.stats();
        assert_eq!((st.submitted, st.completed, st.failed, st.cancelled), (7, 2, 0, 5), "{st:?}");
        accounted(&st);
    });
}

/// With dynamic batching, the requests of a batch whose tickets were dropped are left out before
/// the batch is joined: the model sees only the others, which get their own values.
#[test]
fn a_batch_leaves_out_the_requests_whose_tickets_were_dropped() {
    watchdog(60, || {
        let (calls, samples) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (entered_tx, entered) = unbounded();
        let (gate, gate_rx) = unbounded::<()>();
        let model = gated_add_one(Arc::clone(&calls), Arc::clone(&samples), entered_tx, gate_rx);
        let engine = Engine::builder(model)
            .devices(vec![Device::Cpu])
            .workers(1)
            .batching(Batching::Dynamic { max_batch: 16, max_wait: Duration::ZERO })
            .warmup(false)
            .build()
            .unwrap();
        let first = engine.submit(row(0.0));
        entered.recv().unwrap(); // a batch of one, held at the gate: the rest queue up behind it
        let mut kept = Vec::new();
        for i in 1..=8 {
            let t = engine.submit(row(i as f64));
            if i % 2 == 1 {
                kept.push((i, t));
            } // the even ones are dropped here
        }
        drop(gate);
        assert_eq!(first.wait().unwrap().double_value(&[0, 0]), 1.0);
        for (i, t) in kept {
            let y = t.wait().unwrap();
            assert_eq!(y.size(), vec![1, 4]);
            assert_eq!(y.double_value(&[0, 3]), i as f64 + 1.0, "request {i}");
        }
        engine.shutdown();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call for the first request, one for the batch of the kept four");
        assert_eq!(samples.load(Ordering::SeqCst), 1 + 4, "no dropped request (and no padding) reached the model");
        let st = engine.stats();
        assert_eq!((st.submitted, st.completed, st.failed, st.cancelled), (9, 5, 0, 4), "{st:?}");
        assert_eq!(st.batch_sizes, [(1, 1), (4, 1)].into_iter().collect(), "{st:?}");
        accounted(&st);
    });
}

/// Many tickets dropped at once, on two workers: whichever were begun before their ticket went
/// are completed, the rest cancelled; nothing fails and the counters add up.
#[test]
fn many_dropped_tickets_are_completed_or_cancelled_never_lost() {
    watchdog(120, || {
        let engine = Engine::builder(Model::closure(|x: &Tensor| x.f_add_scalar(1.0))).devices(vec![Device::Cpu]).workers(2).build().unwrap();
        for i in 0..2000 {
            drop(engine.submit(row(i as f64)));
        }
        engine.shutdown();
        let st = engine.stats();
        assert_eq!((st.submitted, st.failed), (2000, 0), "{st:?}");
        assert_eq!(st.completed + st.cancelled, 2000, "{st:?}");
        accounted(&st);
    });
}

#[test]
fn two_hundred_short_lived_threads_each_bind_a_stream_and_compute() {
    let device = Device::cuda_if_available();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let s = Stream::from_pool(device, Priority::Normal).unwrap();
                let y = with_stream(&s, || Tensor::full([256], i as f64, (Kind::Float, device)) * 2.0).unwrap();
                s.synchronize().unwrap();
                assert_eq!(Stream::current(device).unwrap(), Stream::default_for(device).unwrap(), "guard restored");
                (y.sum(Kind::Float).double_value(&[]), s.id())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (sum, _id) = h.join().unwrap();
        assert_eq!(sum, 512.0 * i as f64);
    }
}
