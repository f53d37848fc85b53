//! Helpers shared by the engine's integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::sync::mpsc;
use std::time::Duration;
use tch_streams::engine::{EngineConfig, EngineStats};

/// Runs `f` on another thread; fails the test if it takes longer than `secs` (a hang).
pub fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("watchdog: did not finish within {secs} s (a hang)"),
    }
}

/// Every request answered (or, its ticket dropped, cancelled) and counted exactly once.
pub fn accounted(st: &EngineStats) {
    assert_eq!(st.submitted, st.completed + st.failed + st.cancelled, "{st:?}");
}

/// Whether the defaults left batching off because the start-up measurement found it served less
/// (the trial, or a calibration whose best batch was one sample): timings of this machine, which
/// a busy test machine can sway. Never true for the independence check's refusal.
pub fn off_by_measurement(cfg: &EngineConfig) -> bool {
    cfg.reasons.iter().any(|r| r.starts_with("batching: off (measured with ") || r.starts_with("batching: off (one sample per forward pass"))
}
