//! Short spins before parking, on the two hand-offs of a request: a worker waiting for the next
//! request, and a client waiting for its answer.
//!
//! Parking a thread and waking it costs a few microseconds on each side (a futex wait and wake,
//! then the scheduler), which is most of a request's fixed cost when the model is fast. A thread
//! that expects the other side within microseconds polls for a moment first and parks only if
//! nothing came. The spin is bounded ([`SPIN`]) and yields the processor between polls once it
//! has spun a little, so an idle engine costs nothing and an oversubscribed host is not starved.

use std::time::{Duration, Instant};

/// How long a hand-off polls before it parks.
pub(crate) const SPIN: Duration = Duration::from_micros(30);

/// Polls `poll` until it returns `Some` or `limit` has passed; `None` then (park).
pub(crate) fn spin<T>(limit: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut round = 0u32;
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        round += 1;
        if round < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        // Reading the clock every few polls keeps the common, short case cheap.
        if round % 16 == 0 && start.elapsed() >= limit {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_arrives_and_gives_up_after_the_limit() {
        let mut n = 0;
        assert_eq!(spin(Duration::from_secs(5), || { n += 1; (n == 100).then_some(n) }), Some(100));
        let t = Instant::now();
        assert_eq!(spin(Duration::from_millis(2), || None::<()>), None);
        assert!(t.elapsed() >= Duration::from_millis(2));
    }
}
