//! The defaults against batching off (CPU): `Batching::Auto` keeps the calibrated batching only
//! where a trial on the engine's own workers serves more requests per second batched than
//! unbatched, and reports both rates. The models' costs are sleeps, so the answers hold by wide
//! margins on a loaded machine. Every test runs under a watchdog and checks submitted =
//! completed + failed.

mod common;

use common::{accounted, watchdog};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use tch_streams::engine::{Batching, Engine, InputSpec};
use tch_streams::models::Model;

/// A simulated device of `slots` lanes, as a GPU is to small batches: a call of `rows` takes
/// `min(rows, slots)` lanes for 1 ms + 1 ms per row. Alone (as the calibration times it), a
/// bigger batch serves more rows per ms (up to 1 per ms); one request per call leaves lanes
/// free, and `slots` workers calling at once serve up to `slots` per 2 ms. Answers `2 x`.
fn lanes_device(slots: usize) -> Model {
    let free = Arc::new((Mutex::new(slots), Condvar::new()));
    Model::closure(move |x: &Tensor| {
        let rows = x.size()[0] as usize;
        let need = rows.min(slots);
        let (lock, cv) = &*free;
        {
            let mut f = lock.lock();
            while *f < need {
                cv.wait(&mut f);
            }
            *f -= need;
        }
        std::thread::sleep(Duration::from_millis(1 + rows as u64));
        *lock.lock() += need;
        cv.notify_all();
        x.f_mul_scalar(2.0)
    })
}

/// 2 ms a call, whatever the rows: batches serve up to max_batch times more. Answers `2 x`.
fn fixed_cost() -> Model {
    Model::closure(|x: &Tensor| {
        std::thread::sleep(Duration::from_millis(2));
        x.f_mul_scalar(2.0)
    })
}

/// Serves 12 requests from 3 threads at once and checks every answer is `2 x`.
fn serves_doubles(engine: &Arc<Engine>) {
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let e = Arc::clone(engine);
            std::thread::spawn(move || {
                for i in 0..4 {
                    let v = (c * 10 + i) as f64;
                    let x = Tensor::full([1, 4], v, (Kind::Float, Device::Cpu));
                    let y = e.infer(x).expect("served");
                    assert_eq!(Vec::<f32>::try_from(y.reshape([-1])).unwrap(), vec![2.0 * v as f32; 4]);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn the_defaults_turn_batching_off_where_the_workers_serve_more_unbatched() {
    watchdog(120, || {
        let engine = Arc::new(
            Engine::builder(lanes_device(8))
                .devices(vec![Device::Cpu])
                .workers(8)
                .inputs(vec![InputSpec::new([4], Kind::Float)])
                .build()
                .expect("starts"),
        );
        let cfg = engine.config().clone();
        assert_eq!(cfg.batching, Batching::Off, "{:?}", cfg.reasons);
        assert!(cfg.buckets.is_empty(), "{cfg:?}");
        // The calibration, alone on one thread, would have batched.
        assert!(cfg.reasons.iter().any(|r| r.starts_with("calibration: best batch")), "{:?}", cfg.reasons);
        let trial = cfg.trial.expect("the trial ran");
        assert_eq!(trial.workers, 8, "{trial:?}");
        assert!(trial.max_batch >= 2, "{trial:?}");
        assert!(trial.off_per_s > 2.0 * trial.batched_per_s, "{trial:?}");
        let line = cfg.reasons.iter().find(|r| r.starts_with("batching: off (measured with 8 workers")).expect("says why");
        assert!(
            line.contains(&format!("unbatched {:.0}/s >= batched at max {} {:.0}/s", trial.off_per_s, trial.max_batch, trial.batched_per_s)),
            "{line}"
        );
        serves_then_shuts_down(&engine);
    });
}

/// Serves the 12 requests of `serves_doubles`, shuts down, and checks every request is counted.
fn serves_then_shuts_down(engine: &Arc<Engine>) {
    serves_doubles(engine);
    engine.shutdown();
    let st = engine.stats();
    assert_eq!((st.completed, st.failed), (12, 0), "{st:?}");
    accounted(&st);
}

#[test]
fn the_defaults_keep_batching_where_batches_serve_more() {
    watchdog(120, || {
        let engine = Arc::new(
            Engine::builder(fixed_cost()).devices(vec![Device::Cpu]).inputs(vec![InputSpec::new([4], Kind::Float)]).build().expect("starts"),
        );
        let cfg = engine.config().clone();
        let Batching::Dynamic { max_batch, .. } = cfg.batching else { panic!("expected dynamic batching: {:?}", cfg.reasons) };
        let trial = cfg.trial.expect("the trial ran");
        assert_eq!((trial.workers, trial.max_batch), (2, max_batch), "{trial:?}");
        assert!(trial.batched_per_s > 2.0 * trial.off_per_s, "{trial:?}");
        let line = cfg.reasons.iter().find(|r| r.starts_with("batching trial:")).expect("says why");
        assert!(
            line.contains(&format!("batched at max {max_batch} {:.0}/s > unbatched {:.0}/s (measured with 2 workers)", trial.batched_per_s, trial.off_per_s)),
            "{line}"
        );
        assert!(cfg.reasons.iter().any(|r| r.starts_with("batching: dynamic")), "{:?}", cfg.reasons);
        serves_then_shuts_down(&engine);
    });
}

/// Batching given explicitly, or off, runs no trial.
#[test]
fn batching_given_runs_no_trial() {
    watchdog(60, || {
        for batching in [Batching::Off, Batching::Dynamic { max_batch: 4, max_wait: Duration::ZERO }] {
            let e = Engine::builder(fixed_cost())
                .devices(vec![Device::Cpu])
                .workers(1)
                .inputs(vec![InputSpec::new([4], Kind::Float)])
                .batching(batching)
                .build()
                .expect("starts");
            assert_eq!(e.config().batching, batching);
            assert!(e.config().trial.is_none(), "{:?}", e.config());
            e.shutdown();
        }
    });
}
