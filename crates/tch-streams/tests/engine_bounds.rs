//! The engine's start-up on inputs it must not assume (CPU): warm-up, calibration and the
//! batch-independence check on the builder's sample inputs instead of zeros. Every test runs
//! under a watchdog and checks submitted = completed + failed where an engine served.

mod common;

use common::{accounted, watchdog};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineError, InputSpec};
use tch_streams::models::Model;

/// A model of int64 ids that refuses id 0 (as an embedding whose row 0 is reserved might), and
/// counts the zeros it was shown.
fn refuses_zero(zeros_seen: Arc<AtomicUsize>) -> Model {
    Model::closure(move |x: &Tensor| -> Result<Tensor, String> {
        let zeros = x.f_eq(0).and_then(|z| z.f_sum(Kind::Int64)).and_then(|n| n.f_int64_value(&[])).map_err(|e| e.to_string())?;
        if zeros > 0 {
            zeros_seen.fetch_add(1, Ordering::SeqCst);
            return Err(format!("id 0 is reserved ({zeros} found)"));
        }
        x.f_to_kind(Kind::Float).and_then(|f| f.f_mul_scalar(2.0)).map_err(|e| e.to_string())
    })
}

/// Ids 1..=9, different per row, `[rows, 4]`.
fn ids(rows: usize, device: Device) -> Result<Vec<Tensor>, String> {
    let t = Tensor::f_arange((rows * 4) as i64, (Kind::Int64, device))
        .and_then(|t| t.f_remainder(9))
        .and_then(|t| t.f_add_scalar(1))
        .and_then(|t| t.f_reshape([rows as i64, 4]))
        .map_err(|e| e.to_string())?;
    Ok(vec![t])
}

#[test]
fn a_model_that_refuses_zeros_starts_on_the_sample_inputs_and_is_calibrated_on_them() {
    watchdog(120, || {
        // Without sample inputs: warm-up on zeros is all the engine can do, and it fails.
        let seen = Arc::new(AtomicUsize::new(0));
        let err = Engine::builder(refuses_zero(Arc::clone(&seen)))
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([4], Kind::Int64)])
            .batching(Batching::Off)
            .build()
            .err()
            .expect("zeros are refused");
        match err {
            EngineError::Build(m) => assert!(m.contains("warm-up with zero inputs") && m.contains("id 0 is reserved"), "{m}"),
            other => panic!("expected a build error, got {other:?}"),
        }

        // With them: the defaults check, calibrate and warm up on ids the model accepts.
        let seen = Arc::new(AtomicUsize::new(0));
        let engine = Engine::builder(refuses_zero(Arc::clone(&seen)))
            .devices(vec![Device::Cpu])
            .workers(2)
            .inputs(vec![InputSpec::new([4], Kind::Int64)])
            .sample_inputs(ids)
            .build()
            .expect("starts on the sample inputs");
        assert_eq!(seen.load(Ordering::SeqCst), 0, "the model was shown zeros at start");
        let config = engine.config().clone();
        assert!(matches!(config.batching, Batching::Dynamic { .. }), "calibrated and batched: {config:?}");
        assert!(!config.calibration.is_empty(), "{config:?}");
        let x = Tensor::from_slice(&[3i64, 1, 4, 1]).reshape([1, 4]);
        let y = engine.infer(x).expect("served");
        assert_eq!(Vec::<f32>::try_from(y.reshape([-1])).unwrap(), vec![6.0, 2.0, 8.0, 2.0]);
        let refused = engine.infer(Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu)));
        assert!(refused.is_err_and(|e| e.to_string().contains("id 0 is reserved")));
        engine.shutdown();
        let st = engine.stats();
        assert_eq!((st.completed, st.failed), (1, 1), "{st:?}");
        accounted(&st);
    });
}

#[test]
fn sample_inputs_of_the_wrong_shape_are_a_build_error_that_says_what_was_asked_for() {
    watchdog(60, || {
        let model = Model::closure(|x: &Tensor| x.f_add_scalar(1.0));
        let err = Engine::builder(model)
            .devices(vec![Device::Cpu])
            .workers(1)
            .batching(Batching::Off)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            .sample_inputs(|rows, device| Ok(vec![Tensor::zeros([rows as i64, 5], (Kind::Float, device))]))
            .build()
            .err()
            .expect("refused");
        let m = err.to_string();
        assert!(m.contains("sample input 0 is [1, 5] Float on Cpu where [1, 4] Float on Cpu was asked for"), "{m}");
    });
}

/// A float model that doubles its input, except at batch sizes `when` says, where it first
/// runs `slow` (given the count of calls at that size so far).
fn doubles_but(when: impl Fn(i64) -> bool + Send + Sync + 'static, slow: impl Fn(usize) + Send + Sync + 'static) -> Model {
    let calls = AtomicUsize::new(0);
    Model::closure(move |x: &Tensor| {
        if when(x.size()[0]) {
            slow(calls.fetch_add(1, Ordering::SeqCst));
        }
        x.f_mul_scalar(2.0)
    })
}

#[test]
fn a_model_stuck_at_batch_4_cannot_hold_calibration_forever() {
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = Arc::clone(&release);
    let result = std::panic::catch_unwind(move || {
        watchdog(120, move || {
            let stuck = doubles_but(
                |rows| rows > 2,
                move |_| {
                    while !r.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                },
            );
            let engine = Engine::builder(stuck)
                .devices(vec![Device::Cpu])
                .workers(1)
                .inputs(vec![InputSpec::new([4], Kind::Float)])
                .calibration_step_limit(std::time::Duration::from_secs(1))
                .build()
                .expect("starts with what calibration measured before the stuck size");
            let config = engine.config().clone();
            // A best batch of 1 is batching off; at 2 the trial against batching off decides (a
            // near tie for a model this cheap).
            assert!(matches!(config.batching, Batching::Dynamic { max_batch: 2, .. } | Batching::Off), "{config:?}");
            assert_eq!(config.calibration.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2], "{config:?}");
            let stopped = config.calibration_stopped.clone().expect("says why it stopped");
            assert!(stopped.contains("calibration stopped at 4 samples: that step took longer than 1000 ms"), "{stopped}");
            assert!(config.reasons.iter().any(|r| r == &stopped), "{config:?}");
            let y = engine.infer(Tensor::ones([1, 4], (Kind::Float, Device::Cpu))).expect("served");
            assert_eq!(Vec::<f32>::try_from(y.reshape([-1])).unwrap(), vec![2.0; 4]);
            engine.shutdown();
            accounted(&engine.stats());
        })
    });
    release.store(true, Ordering::SeqCst); // lets the calibration's stuck thread go
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn two_slow_runs_of_one_size_do_not_stop_the_calibration_and_the_noise_is_reported() {
    watchdog(120, || {
        // At 4 samples: the first run (first sight of the shape) is quick, then two of the three
        // timed runs take 40 ms (other work on the machine, say): past the 25 ms latency cap.
        let noisy = doubles_but(|rows| rows == 4, |n| if n == 1 || n == 2 { std::thread::sleep(std::time::Duration::from_millis(40)) });
        let engine = Engine::builder(noisy)
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            .build()
            .expect("starts");
        let config = engine.config().clone();
        let sizes: Vec<usize> = config.calibration.iter().map(|r| r.0).collect();
        assert_eq!(sizes, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], "the search went on past 4: {config:?}");
        assert_eq!(config.calibration_spread.len(), sizes.len(), "{config:?}");
        assert!(config.calibration_spread[2] > 1.0, "the runs at 4 samples differed by over 100 %: {config:?}");
        assert!(config.calibration[2].1 < 25_000.0, "the reading is the fastest run, not a slow one: {config:?}");
        assert!(config.reasons.iter().any(|r| r.contains("runs of one size differed by up to")), "{config:?}");
        assert!(config.calibration_stopped.is_none(), "{config:?}");
        engine.shutdown();
        accounted(&engine.stats());
    });
}

#[test]
fn buckets_larger_than_any_batch_are_refused_or_dropped_with_the_reason() {
    watchdog(120, || {
        let doubles = || Model::closure(|x: &Tensor| x.f_mul_scalar(2.0));
        let err = Engine::builder(doubles())
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            .batching(Batching::Dynamic { max_batch: 8, max_wait: std::time::Duration::ZERO })
            .buckets(vec![1, 8, 65_536])
            .build()
            .err()
            .expect("refused");
        let m = err.to_string();
        assert!(m.contains("buckets [65536] are over 8 x max_batch 8: batches would be padded up to them; give bucket sizes of at most 64"), "{m}");

        // Calibrated: the sizes over the chosen max_batch are dropped, and the reason says so.
        let engine = Engine::builder(doubles())
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            .buckets(vec![1, 65_536])
            .build()
            .expect("starts");
        let config = engine.config().clone();
        let Batching::Dynamic { max_batch, .. } = config.batching else { panic!("{config:?}") };
        assert!(config.buckets.iter().all(|&b| b <= 8 * max_batch), "{config:?}");
        assert!(config.reasons.iter().any(|r| r.contains(&format!("buckets: [65536] dropped, over 8 x the calibrated max_batch {max_batch}"))), "{config:?}");
        let y = engine.infer(Tensor::ones([1, 4], (Kind::Float, Device::Cpu))).expect("served");
        assert_eq!(y.size(), vec![1, 4]);
        engine.shutdown();
        let st = engine.stats();
        assert_eq!(st.stages.padded_samples, 0, "{st:?}");
        accounted(&st);

        // Warm-up would make the largest bucket's inputs on every worker: bounded.
        let err = Engine::builder(doubles())
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([1 << 20], Kind::Float)])
            .batching(Batching::Dynamic { max_batch: 1024, max_wait: std::time::Duration::ZERO })
            .build()
            .err()
            .expect("refused");
        let m = err.to_string();
        assert!(m.contains("input 0: the largest bucket, 1024 samples of [1048576], is over 268435456 elements"), "{m}");
    });
}
