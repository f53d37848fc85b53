//! Shape buckets and auto-configuration, on the CPU: padding is removed from every answer,
//! padded batches answer bit for bit what serial calls answer, every bucket runs before
//! `build()` returns and no other batch shape runs after it, and the defaults resolve to a
//! reported configuration.

mod common;

use common::{accounted, off_by_measurement, watchdog};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, InputSpec, AUTO_MAX_BATCH};
use tch_streams::models::{Builtin, Model};

/// Per-row deterministic work (each output row depends only on its input row): scale, then
/// add the row's own sum, then a non-linearity.
fn rowwise(x: &Tensor) -> Result<Tensor, tch::TchError> {
    x.f_mul_scalar(3.0)?.f_add(&x.f_sum_dim_intlist(1, true, Kind::Float)?)?.f_tanh()
}

fn row(i: i64) -> Tensor {
    Tensor::arange(4, (Kind::Float, Device::Cpu)).f_mul_scalar(0.1 * (i + 1) as f64).unwrap().f_add_scalar(i as f64).unwrap().reshape([1, 4])
}

#[test]
fn a_padded_batch_answers_bitwise_what_serial_calls_answer_without_the_padding() {
    watchdog(60, || {
        let engine = Engine::builder(Model::closure(rowwise))
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            // Three requests fill a batch; it runs as the bucket of 4 (one padding sample).
            .batching(Batching::Dynamic { max_batch: 3, max_wait: Duration::from_secs(20) })
            .buckets(vec![4, 8])
            .build()
            .unwrap();
        assert_eq!(engine.config().buckets, vec![4, 8]);
        let before = engine.stats().stages.padded_samples;
        let xs: Vec<Tensor> = (0..3).map(row).collect();
        let tickets: Vec<_> = xs.iter().map(|x| engine.submit(x.shallow_clone())).collect();
        for (x, t) in xs.iter().zip(tickets) {
            let y = t.wait().unwrap();
            assert_eq!(y.size(), vec![1, 4], "the padding is not part of any answer");
            let serial = rowwise(x).unwrap();
            assert!(y.equal(&serial), "padded batch {y:?} differs from the serial answer {serial:?}");
        }
        let st = engine.stats();
        assert_eq!(st.batch_sizes.get(&3), Some(&1), "{:?}", st.batch_sizes);
        assert_eq!(st.stages.padded_samples - before, 1, "3 samples padded to the bucket of 4");
        engine.shutdown();
        accounted(&engine.stats());
    });
}

#[test]
fn every_bucket_runs_before_build_returns_and_no_other_batch_shape_after() {
    watchdog(60, || {
        let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
        let log = Arc::clone(&seen);
        let model = Model::closure(move |x: &Tensor| {
            log.lock().push(x.size()[0]);
            x.f_mul_scalar(2.0)
        });
        let engine = Engine::builder(model)
            .devices(vec![Device::Cpu])
            .workers(2)
            .inputs(vec![InputSpec::new([3], Kind::Float)])
            .batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(2) })
            .build()
            .unwrap();
        assert_eq!(engine.config().buckets, vec![1, 2, 4, 8]);
        let at_build: Vec<i64> = std::mem::take(&mut *seen.lock());
        for b in [1, 2, 4, 8] {
            // Each of the two workers warms every bucket.
            assert!(at_build.iter().filter(|&&n| n == b).count() >= 2, "bucket {b} not warmed by both workers: {at_build:?}");
        }
        // Requests of 1, 2 and 3 samples from many threads: whatever batches form, each runs as a
        // bucket size.
        let engine = Arc::new(engine);
        let clients: Vec<_> = (0..6)
            .map(|c| {
                let e = Arc::clone(&engine);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let rows = 1 + (c + i) % 3;
                        let x = Tensor::ones([rows, 3], (Kind::Float, Device::Cpu)).f_mul_scalar((c * 100 + i) as f64).unwrap();
                        let y = e.infer(x.shallow_clone()).unwrap();
                        assert_eq!(y.size(), vec![rows, 3]);
                        assert!(y.equal(&x.f_mul_scalar(2.0).unwrap()), "client {c} request {i}: wrong rows back");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let served: Vec<i64> = seen.lock().clone();
        assert!(!served.is_empty());
        assert!(served.iter().all(|n| [1, 2, 4, 8].contains(n)), "a batch ran at a size that is not a bucket: {served:?}");
        let st = engine.stats();
        assert_eq!(st.completed, 120);
        accounted(&st);
    });
}

#[test]
fn the_defaults_calibrate_batching_for_a_model_with_known_inputs_and_report_it() {
    watchdog(120, || {
        let engine = Engine::builder(Model::Builtin(Builtin::SmallMlp)).devices(vec![Device::Cpu]).build().unwrap();
        let cfg = engine.config().clone();
        assert_eq!(cfg.workers, 2, "CPU default: {cfg:?}");
        assert_eq!(engine.workers().len(), 2);
        // Batching, unless the start-up measurement found it served less: its timings are this
        // machine's, and a busy test machine can sway them (the calibration is checked either way).
        let max_batch = match cfg.batching {
            Batching::Dynamic { max_batch, max_wait } => {
                assert_eq!(max_wait, Duration::ZERO);
                assert!(max_batch.is_power_of_two() && max_batch <= AUTO_MAX_BATCH, "{max_batch}");
                assert_eq!(cfg.buckets.last(), Some(&max_batch));
                assert_eq!(cfg.buckets.first(), Some(&1));
                assert!(cfg.reasons.iter().any(|r| r.starts_with("batching: dynamic") && r.contains("calibrated")), "{:?}", cfg.reasons);
                Some(max_batch)
            }
            Batching::Off => {
                assert!(off_by_measurement(&cfg), "batching off for a reason other than the measurement: {:?}", cfg.reasons);
                None
            }
            other => panic!("expected the defaults to resolve batching, got {other:?}: {:?}", cfg.reasons),
        };
        assert!(!cfg.cuda_graphs, "no CUDA device, no graphs");
        // The readings double from one sample up to at least the chosen size.
        let sizes: Vec<usize> = cfg.calibration.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes[0], 1);
        assert!(sizes.windows(2).all(|w| w[1] == 2 * w[0]), "{sizes:?}");
        assert!(max_batch.is_none_or(|m| sizes.contains(&m)), "{sizes:?}");
        assert!(cfg.calibration.iter().all(|(_, us)| *us > 0.0));
        assert!(cfg.reasons.iter().any(|r| r.starts_with("workers: 2")), "{:?}", cfg.reasons);
        assert_eq!(engine.stats().config, cfg, "stats() reports the same configuration");
        // And it serves: answers equal the model's own, from several threads at once.
        let direct = Model::Builtin(Builtin::SmallMlp).instantiate(Device::Cpu).unwrap();
        let xs: Vec<Tensor> = (0..16).map(|i| Tensor::randn([1, 512], (Kind::Float, Device::Cpu)).f_mul_scalar(1.0 + i as f64).unwrap()).collect();
        let ys = engine.infer_many(xs.iter().map(Tensor::shallow_clone).collect());
        for (x, y) in xs.iter().zip(ys) {
            let want = direct.run(std::slice::from_ref(x)).unwrap().into_tensor().unwrap();
            let y = y.unwrap();
            assert!(y.allclose(&want, 1e-4, 1e-5, false), "max diff {}", (&y - &want).abs().max().double_value(&[]));
        }
        let st = engine.stats();
        assert_eq!(st.completed, 16);
        accounted(&st);
    });
}

#[test]
fn the_defaults_leave_batching_off_when_it_is_unknown_or_unsafe() {
    watchdog(60, || {
        // No input shapes: nothing to calibrate or check.
        let e = Engine::builder(Model::closure(|x: &Tensor| x.f_add_scalar(1.0))).devices(vec![Device::Cpu]).build().unwrap();
        assert_eq!(e.config().batching, Batching::Off);
        assert!(e.config().buckets.is_empty());
        assert!(e.config().reasons.iter().any(|r| r.contains("shapes are unknown")), "{:?}", e.config().reasons);
        // A model that mixes samples (subtracts the batch mean): batching would change answers.
        let mixing = Model::closure(|x: &Tensor| x.f_sub(&x.f_mean_dim(Some([0i64].as_slice()), true, Kind::Float)?));
        let e = Engine::builder(mixing).devices(vec![Device::Cpu]).inputs(vec![InputSpec::new([4], Kind::Float)]).build().unwrap();
        assert_eq!(e.config().batching, Batching::Off);
        assert!(e.config().reasons.iter().any(|r| r.contains("mixes samples")), "{:?}", e.config().reasons);
        // Explicit choices are kept as given.
        let e = Engine::builder(Model::Builtin(Builtin::SmallMlp))
            .devices(vec![Device::Cpu])
            .workers(3)
            .batching(Batching::Off)
            .build()
            .unwrap();
        assert_eq!((e.config().workers, e.config().batching), (3, Batching::Off));
        assert!(e.config().calibration.is_empty(), "nothing calibrated when batching is given");
    });
}

#[test]
fn a_batch_that_would_be_mostly_padding_is_trimmed_to_a_full_bucket() {
    watchdog(60, || {
        let engine = Engine::builder(Model::closure(rowwise))
            .devices(vec![Device::Cpu])
            .workers(1)
            .inputs(vec![InputSpec::new([4], Kind::Float)])
            // Three 4-row requests (12 samples) would be padded to 16: trimmed to 8 instead.
            .batching(Batching::Dynamic { max_batch: 12, max_wait: Duration::from_millis(300) })
            .buckets(vec![8, 16])
            .build()
            .unwrap();
        let xs: Vec<Tensor> = (0..6).map(|i| Tensor::cat(&[row(i), row(i + 10), row(i + 20), row(i + 30)], 0)).collect();
        let tickets: Vec<_> = xs.iter().map(|x| engine.submit(x.shallow_clone())).collect();
        for (x, t) in xs.iter().zip(tickets) {
            let y = t.wait().unwrap();
            assert!(y.equal(&rowwise(x).unwrap()), "trimming must not change answers");
        }
        let st = engine.stats();
        assert_eq!(st.batch_sizes, [(2usize, 3u64)].into_iter().collect(), "every batch is two 4-row requests: {:?}", st.batch_sizes);
        assert_eq!(st.stages.padded_samples, 0, "full buckets need no padding");
        accounted(&st);
    });
}
