//! Reliability on CPU (run in CI): fuzzed request validation never panics and always explains;
//! dropped tickets; thread churn. (The CLI's parsing is fuzzed in the CLI crate's tests.)

use proptest::prelude::*;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Engine, EngineError};
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

#[test]
fn dropped_tickets_are_still_served_and_counted() {
    let engine = Engine::builder(Model::closure(|x: &Tensor| x.f_add_scalar(1.0))).devices(vec![Device::Cpu]).workers(2).build().unwrap();
    for i in 0..2000 {
        drop(engine.submit(Tensor::full([1, 4], i as f64, (Kind::Float, Device::Cpu))));
    }
    engine.shutdown();
    let st = engine.stats();
    assert_eq!((st.submitted, st.completed, st.failed), (2000, 2000, 0));
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
