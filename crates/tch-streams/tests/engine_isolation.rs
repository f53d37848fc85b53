//! Requests stay apart (CPU): a model that mixes samples is never batched, so no answer depends on
//! or holds another request's input, and the model never sees (nor answers with) the caller's own
//! tensor memory. Each test reproduces one way this used to go wrong (issue #24) and fails if it
//! comes back. Every test runs under a watchdog and checks submitted = completed + failed.

mod common;

use common::{accounted, off_by_measurement, watchdog};
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, EngineBuilder, EngineError, InputSpec, Output};
use tch_streams::models::{Model, Outputs};

/// One sample of four values `v, v+1, v+2, v+3`.
fn x(v: f64) -> Tensor {
    Tensor::arange(4, (Kind::Float, Device::Cpu)).f_add_scalar(v).unwrap().reshape([1, 4])
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

fn on_cpu(model: Model) -> EngineBuilder {
    Engine::builder(model).devices(vec![Device::Cpu]).workers(1).inputs(vec![InputSpec::new([4], Kind::Float)])
}

/// Dynamic batching asked for explicitly.
fn explicit(model: Model) -> Result<Engine, EngineError> {
    on_cpu(model).batching(Batching::Dynamic { max_batch: 8, max_wait: Duration::from_millis(1) }).build()
}

fn build_err(r: Result<Engine, EngineError>) -> String {
    match r {
        Err(EngineError::Build(m)) => m,
        Err(other) => panic!("expected a Build error, got {other:?}"),
        Ok(e) => panic!("expected a Build error, got an engine batching with {:?}", e.config().batching),
    }
}

/// The defaults: batching off, with a reason that contains `why`.
fn auto_refuses(model: Model, why: &str) {
    let e = on_cpu(model).build().unwrap();
    assert_eq!(e.config().batching, Batching::Off, "{:?}", e.config().reasons);
    assert!(e.config().reasons.iter().any(|r| r.starts_with("batching: off") && r.contains(why)), "{:?}", e.config().reasons);
    e.shutdown();
    accounted(&e.stats());
}

/// The defaults passed `e`'s model through the independence check: it batches, or batching is
/// off only because the start-up measurement (calibration, trial: timings of this machine, which
/// a busy test machine can sway) found it served less, never because the check refused.
fn check_passed(e: &Engine) {
    let reasons = &e.config().reasons;
    assert!(matches!(e.config().batching, Batching::Dynamic { .. }) || off_by_measurement(e.config()), "{reasons:?}");
    assert!(!reasons.iter().any(|r| r.contains("mixes samples") || r.contains("could not decide")), "{reasons:?}");
}

fn pair(f: fn(&Tensor) -> Result<(Tensor, Tensor), tch::TchError>) -> Model {
    Model::closure_many(move |xs: &[Tensor]| f(&xs[0]).map(|(a, b)| Outputs::Tuple(vec![a, b])))
}

fn dim0() -> Option<&'static [i64]> {
    Some([0i64].as_slice())
}

// ---- 1. Batch-mixing models get past the independence check --------------------------------

/// `x @ x.T`: [1, 1] for one sample, [2, 2] for two. Batched, a request's answer was a row of
/// dot products with the other requests' inputs (under `serve`: [1, 1] up to [1, 32]).
#[test]
fn an_output_whose_shape_changes_with_company_is_mixing() {
    watchdog(60, || {
        let gram = || Model::closure(|x: &Tensor| x.f_matmul(&x.f_transpose(0, 1)?));
        let m = build_err(explicit(gram()));
        assert!(m.contains("mixes samples across the batch") && m.contains("output 0 has shape [1, 1] for one sample alone"), "{m}");
        assert!(m.contains("[2, 2] for two samples together") && m.contains("Batching::Off"), "{m}");
        auto_refuses(gram(), "mixes samples across the batch");
        // Unbatched, each answer comes from the request's own input only.
        let e = on_cpu(gram()).batching(Batching::Off).build().unwrap();
        assert_eq!(values(&e.infer(x(1.0)).unwrap()), [30.0]);
        e.shutdown();
        accounted(&e.stats());
    });
}

/// NaN in one output used to end the check as passed: `(x.log(), x.flip(0))` was batched (its
/// second output hands each request another request's input) while the reverse order was
/// refused. Every output is checked now; NaN where the alone answer has NaN is no difference.
#[test]
fn every_output_is_checked_whatever_nan_comes_first() {
    watchdog(60, || {
        let log_flip = || pair(|x| Ok((x.f_log()?, x.f_flip([0])?)));
        let flip_log = || pair(|x| Ok((x.f_flip([0])?, x.f_log()?)));
        let m = build_err(explicit(log_flip()));
        assert!(m.contains("mixes samples across the batch") && m.contains("output 1 for sample 0 changes"), "{m}");
        let m = build_err(explicit(flip_log()));
        assert!(m.contains("mixes samples across the batch") && m.contains("output 0 for sample 0 changes"), "{m}");
        auto_refuses(log_flip(), "output 1");
        // Row-wise with NaN (log of the check's negative samples) is independent: batched.
        let row_wise = || pair(|x| Ok((x.f_log()?, x.f_mul_scalar(2.0)?)));
        let e = explicit(row_wise()).unwrap();
        let outs: Vec<_> = [x(1.0), x(-3.0)].iter().map(|x| e.submit(x.shallow_clone())).collect();
        for (v, t) in [1.0, -3.0].into_iter().zip(outs) {
            let out = t.wait_outputs().unwrap();
            assert_eq!(values(out.tensors()[1]), values(&(x(v) * 2.0)));
        }
        e.shutdown();
        accounted(&e.stats());
        let e = on_cpu(row_wise()).build().unwrap();
        check_passed(&e);
        e.shutdown();
        accounted(&e.stats());
    });
}

/// Batch statistics: `(x - x.mean(0)) / x.std(0)` is NaN for one sample alone and finite for
/// two. Non-finite alone and finite together is mixing, not "undecided, go ahead".
#[test]
fn batch_statistics_that_are_nan_alone_are_mixing() {
    watchdog(60, || {
        let standardise = || Model::closure(|x: &Tensor| x.f_sub(&x.f_mean_dim(dim0(), true, Kind::Float)?)?.f_div(&x.f_std_dim(dim0(), true, true)?));
        let m = build_err(explicit(standardise()));
        assert!(m.contains("mixes samples across the batch") && m.contains("NaN or infinite alone but finite"), "{m}");
        auto_refuses(standardise(), "NaN or infinite alone but finite");
    });
}

/// A model that fails on the check's inputs used to count as passing. The check cannot decide
/// then: explicit batching is refused and the defaults turn batching off, saying why.
#[test]
fn a_model_that_fails_on_the_check_inputs_is_not_batched() {
    watchdog(60, || {
        let picky = || {
            Model::closure(|x: &Tensor| -> Result<Tensor, String> {
                if x.f_min().and_then(|m| m.f_double_value(&[])).map_err(|e| e.to_string())? < 0.0 {
                    return Err("this model takes non-negative inputs".into());
                }
                x.f_sqrt().map_err(|e| e.to_string())
            })
        };
        let m = build_err(explicit(picky()));
        assert!(m.contains("could not decide") && m.contains("the model failed on the second sample alone (this model takes non-negative inputs)"), "{m}");
        assert!(m.contains("Batching::Off"), "{m}");
        auto_refuses(picky(), "could not decide");
    });
}

// ---- 2. An empty output panicked inside the check -------------------------------------------

/// An output with no elements ([N, 0]) has nothing to compare: it passes (it used to panic in
/// `abs().max()` and the message blamed the model), and batched answers are [1, 0].
#[test]
fn an_empty_output_passes_the_check_and_is_served_batched() {
    watchdog(60, || {
        let empty = || Model::closure(|x: &Tensor| x.f_narrow(1, 0, 0));
        let e = explicit(empty()).unwrap();
        let tickets: Vec<_> = (0..4).map(|i| e.submit(x(i as f64))).collect();
        for t in tickets {
            assert_eq!(t.wait().unwrap().size(), vec![1, 0]);
        }
        e.shutdown();
        let st = e.stats();
        accounted(&st);
        assert_eq!((st.completed, st.failed), (4, 0));
        let e = on_cpu(empty()).build().unwrap();
        check_passed(&e);
        assert_eq!(e.infer(x(0.0)).unwrap().size(), vec![1, 0]);
        e.shutdown();
        accounted(&e.stats());
    });
}

// ---- 9. The model never sees the caller's tensor, and no answer aliases it ------------------

/// An in-place model (`x.add_(1)`) used to change the caller's input when its request ran alone
/// and unpadded (the model got the caller's tensor itself), and an identity model answered with
/// the caller's own memory. The model gets the engine's copy in every mode.
#[test]
fn the_model_never_sees_the_callers_tensor_and_no_answer_aliases_it() {
    watchdog(60, || {
        let in_place = || Model::closure(|x: &Tensor| x.shallow_clone().f_add_scalar_(1.0));
        let identity = || Model::closure(|x: &Tensor| Ok::<_, tch::TchError>(x.shallow_clone()));
        let modes = [
            ("batching off", Batching::Off, Output::OnDevice),
            ("batching off, output on the host", Batching::Off, Output::Cpu),
            ("dynamic batching", Batching::Dynamic { max_batch: 4, max_wait: Duration::ZERO }, Output::OnDevice),
        ];
        for (what, batching, output) in modes {
            let e = on_cpu(in_place()).batching(batching).output(output).build().unwrap();
            let input = x(0.0);
            let y = e.infer(input.shallow_clone()).unwrap();
            assert_eq!(values(&y), [1.0, 2.0, 3.0, 4.0], "{what}");
            assert_eq!(values(&input), [0.0, 1.0, 2.0, 3.0], "{what}: the in-place model changed the caller's input");
            e.shutdown();
            accounted(&e.stats());

            let e = on_cpu(identity()).batching(batching).output(output).build().unwrap();
            let input = x(0.0);
            let mut y = e.infer(input.shallow_clone()).unwrap();
            assert_ne!(y.data_ptr(), input.data_ptr(), "{what}: the answer is the caller's own memory");
            let _ = y.f_add_scalar_(5.0).unwrap();
            assert_eq!(values(&input), [0.0, 1.0, 2.0, 3.0], "{what}: changing the answer changed the input");
            e.shutdown();
            accounted(&e.stats());
        }
    });
}
