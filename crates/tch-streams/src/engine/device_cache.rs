//! Giving the device allocator's unused cached blocks back to the driver, kept apart from CUDA
//! graph captures; and the turns graph-capturing warm-ups take, so that start-up holds every
//! worker's graphs but only one worker's eager blocks at a time.
//!
//! - Emptying the cache frees blocks with `cudaFree`, which waits for the whole device. Every
//!   capture of the engine ([`capturing`]) and every emptying ([`give_back`]) holds one
//!   process-wide lock, so no engine of this process empties the cache while one of its threads
//!   captures (captures made by other code in the process are not covered).
//! - A worker's eager warm-up runs leave their activations cached on the worker's own stream,
//!   where no other worker's allocations can reuse them; its graphs are captured into a private
//!   pool of their own. Warm-ups that capture graphs therefore take turns ([`WarmUpTurn`]), one
//!   at a time in the process, and each turn ends by giving the cache back: the peak of start-up
//!   is every worker's graphs plus one worker's eager blocks, where concurrent warm-ups held every
//!   worker's eager blocks as well (1.5–1.7× the serving figure on CNNs). Warm-ups without graphs
//!   keep their cached blocks: they are what the worker serves with.
//!
//! Any thread may call these. A thread must not hold a [`WarmUpTurn`] while it waits for
//! another thread's warm-up (the trial's threads and the workers each take their own turn).

use std::sync::{Mutex, MutexGuard};
use tch::Device;

/// Held by each capture and each emptying of the cache.
static CAPTURE: Mutex<()> = Mutex::new(());
/// Held by each graph-capturing warm-up, whole.
static WARM_UP: Mutex<()> = Mutex::new(());

/// Locks `m`; a panic while it was held poisons nothing here (the guarded state is `()`).
fn lock(m: &'static Mutex<()>) -> MutexGuard<'static, ()> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `capture` (one CUDA graph capture) while no cache is being emptied.
pub(crate) fn capturing<T>(capture: impl FnOnce() -> T) -> T {
    let _held = lock(&CAPTURE);
    capture()
}

/// Returns the allocator's unused cached blocks of `device`'s kind (every device of it) to the
/// driver, never during a capture; how many bytes `device` gave back, or `None` on the CPU or
/// when the allocator cannot say.
pub(crate) fn give_back(device: Device) -> Option<i64> {
    if device == Device::Cpu {
        return None;
    }
    let _held = lock(&CAPTURE);
    let before = crate::stream::memory_stats(device).ok()?.reserved;
    crate::stream::empty_cache(device).ok()?;
    let after = crate::stream::memory_stats(device).ok()?.reserved;
    Some((before - after).max(0))
}

/// One warm-up's turn (see the module docs): held from [`WarmUpTurn::take`] until dropped, which
/// gives the cache back first. Takes nothing when the warm-up captures no graphs.
pub(crate) struct WarmUpTurn {
    held: Option<(MutexGuard<'static, ()>, Device)>,
}

impl WarmUpTurn {
    /// Waits for the turn when `captures` (graphs on, on a GPU `device`); else returns at once.
    pub(crate) fn take(device: Device, captures: bool) -> WarmUpTurn {
        WarmUpTurn { held: (captures && device != Device::Cpu).then(|| (lock(&WARM_UP), device)) }
    }

    /// Whether this turn is exclusive (a capturing warm-up).
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for WarmUpTurn {
    fn drop(&mut self) {
        if let Some((guard, device)) = self.held.take() {
            give_back(device);
            drop(guard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn no_turn_is_taken_without_graphs_or_on_the_cpu() {
        // Neither blocks, even while a capturing turn is held elsewhere on this thread.
        let a = WarmUpTurn::take(Device::Cpu, true);
        let b = WarmUpTurn::take(Device::Cuda(0), false);
        assert!(!a.is_held() && !b.is_held());
        assert_eq!(give_back(Device::Cpu), None);
    }

    #[test]
    fn capturing_warm_ups_take_turns_one_at_a_time() {
        // Cuda(0) as a name only: with no GPU, giving back is refused quietly, as on a device
        // whose allocator cannot say.
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let turn = WarmUpTurn::take(Device::Cuda(0), true);
                        assert!(turn.is_held());
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(turn);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two warm-ups held the turn at once");
    }
}
