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
//!   keep their cached blocks: they are what the worker serves with. So does the warm-up of a
//!   worker that replaces one that panicked ([`WarmUpTurn::keeping_cache`]): the others are
//!   serving from the cache then.
//!
//! Any thread may call these. A thread must not hold a [`WarmUpTurn`] while it waits for
//! another thread's warm-up (the trial's threads and the workers each take their own turn).
//!
//! No wait here is unbounded: a model stuck inside a warm-up or a capture (the trial leaves such
//! threads behind) must not stop every later build of the process. A turn not granted within
//! [`TURN_WAIT`] is taken without it (that warm-up then overlaps the stuck one: more memory, no
//! harm); a capture that cannot take the lock within [`TURN_WAIT`] runs without it; emptying the
//! cache that cannot take it within [`EMPTY_WAIT`] is skipped. Each is logged.

use parking_lot::{const_mutex, Mutex, MutexGuard};
use std::time::Duration;
use tch::Device;

/// Held by each capture and each emptying of the cache.
static CAPTURE: Mutex<()> = const_mutex(());
/// Held by each graph-capturing warm-up, whole.
static WARM_UP: Mutex<()> = const_mutex(());

/// Longest a warm-up waits for its turn, and a capture for the lock.
pub(crate) const TURN_WAIT: Duration = Duration::from_secs(60);
/// Longest giving the cache back waits for the captures in progress.
pub(crate) const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Runs `capture` (one CUDA graph capture) while no cache is being emptied.
pub(crate) fn capturing<T>(capture: impl FnOnce() -> T) -> T {
    let held = CAPTURE.try_lock_for(TURN_WAIT);
    if held.is_none() {
        tracing::warn!("a graph capture waited {} s for another capture or cache release; capturing without the lock", TURN_WAIT.as_secs());
    }
    capture()
}

/// Returns the allocator's unused cached blocks of `device`'s kind (every device of it) to the
/// driver, never during a capture of the engine's; how many bytes `device` gave back, or `None`
/// on the CPU, when the allocator cannot say, or when a capture held the lock too long.
pub(crate) fn give_back(device: Device) -> Option<i64> {
    if device == Device::Cpu {
        return None;
    }
    let Some(_held) = CAPTURE.try_lock_for(EMPTY_WAIT) else {
        tracing::warn!("cached device memory not given back: a graph capture has held the lock for {} s", EMPTY_WAIT.as_secs());
        return None;
    };
    let before = crate::stream::memory_stats(device).ok()?.reserved;
    crate::stream::empty_cache(device).ok()?;
    let after = crate::stream::memory_stats(device).ok()?.reserved;
    Some((before - after).max(0))
}

/// One warm-up's turn (see the module docs): held from [`WarmUpTurn::take`] until dropped, which
/// gives the cache back first (unless [`WarmUpTurn::keeping_cache`]). Takes nothing when the warm-up captures no graphs.
pub(crate) struct WarmUpTurn {
    held: Option<(Option<MutexGuard<'static, ()>>, Device)>,
    /// Whether the cache is given back as the turn ends (see [`WarmUpTurn::keeping_cache`]).
    gives_back: bool,
}

impl WarmUpTurn {
    /// Waits for the turn (at most [`TURN_WAIT`]) when `captures` (graphs on, on a GPU
    /// `device`); else returns at once.
    pub(crate) fn take(device: Device, captures: bool) -> WarmUpTurn {
        Self::take_within(device, captures, TURN_WAIT)
    }

    fn take_within(device: Device, captures: bool, wait: Duration) -> WarmUpTurn {
        if !captures || device == Device::Cpu {
            return WarmUpTurn { held: None, gives_back: false };
        }
        let guard = WARM_UP.try_lock_for(wait);
        if guard.is_none() {
            tracing::warn!("a warm-up waited {} ms for its turn (another is stuck or slow); warming up alongside it", wait.as_millis());
        }
        WarmUpTurn { held: Some((guard, device)), gives_back: true }
    }

    /// This turn, ending without giving the cache back: for a warm-up while other workers
    /// serve (a worker replacing one that panicked), whose cached blocks are theirs to reuse.
    /// Emptying the cache then would only free them, stall the device once and have them
    /// allocated again; the build's peak, which the give-back bounds, is long past.
    pub(crate) fn keeping_cache(mut self) -> WarmUpTurn {
        self.gives_back = false;
        self
    }

    /// Whether this turn is exclusive (a capturing warm-up that got the turn).
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        matches!(self.held, Some((Some(_), _)))
    }
}

impl Drop for WarmUpTurn {
    fn drop(&mut self) {
        if let Some((guard, device)) = self.held.take() {
            if self.gives_back {
                give_back(device);
            }
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
    fn a_turn_kept_for_a_replacement_is_still_exclusive_but_gives_nothing_back() {
        let turn = WarmUpTurn::take(Device::Cuda(0), true).keeping_cache();
        assert!(turn.is_held() && !turn.gives_back);
        assert!(!WarmUpTurn::take_within(Device::Cuda(0), true, Duration::from_millis(50)).is_held(), "granted while the replacement held it");
        drop(turn);
        let again = WarmUpTurn::take(Device::Cuda(0), true);
        assert!(again.is_held() && again.gives_back);
    }

    #[test]
    fn no_turn_is_taken_without_graphs_or_on_the_cpu() {
        // Neither waits for the lock the capturing turns share.
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

    #[test]
    fn a_turn_held_too_long_is_not_waited_for_beyond_the_limit() {
        // A warm-up stuck in its model keeps its turn; the next one goes ahead without it.
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let turn = WarmUpTurn::take(Device::Cuda(0), true);
            taken_tx.send(turn.is_held()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(30));
        });
        assert!(taken_rx.recv_timeout(Duration::from_secs(30)).expect("watchdog"), "the first warm-up got the turn");
        let t0 = std::time::Instant::now();
        let late = WarmUpTurn::take_within(Device::Cuda(0), true, Duration::from_millis(100));
        let waited = t0.elapsed();
        assert!(!late.is_held(), "granted while another held it");
        assert!(waited >= Duration::from_millis(100), "gave up before the limit: {waited:?}");
        drop(late);
        release_tx.send(()).unwrap();
        stuck.join().expect("no panic");
        // Released: the turn is granted again.
        assert!(WarmUpTurn::take_within(Device::Cuda(0), true, Duration::from_secs(30)).is_held());
    }
}
