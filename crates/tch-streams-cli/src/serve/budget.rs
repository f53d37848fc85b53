//! The byte budget: one bound on the memory that request bodies being read, and the tensors
//! decoded from them, may hold at once over every connection and protocol
//! (`--max-buffered-bytes`).
//!
//! A request reserves bytes before it buffers them (the declared `Content-Length`, a gRPC
//! message's length prefix, or each chunk as it comes) and before it decodes tensors; a
//! reservation that does not fit is refused at once (503 / RESOURCE_EXHAUSTED), never waited
//! for. The reservation lives as long as the request is being served and is given back when it
//! is dropped, whichever way the request ends. Lock-free: one atomic.

use super::protocol::{ApiError, ErrorKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes that request bodies and their decoded tensors may hold at once.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes held from a [`Budget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit, used: AtomicUsize::new(0) })
    }

    /// The limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn empty(self: &Arc<Self>) -> Reservation {
        Reservation { budget: Arc::clone(self), bytes: 0 }
    }

    /// Reserves `n` more bytes, or says why not.
    fn take(&self, n: usize) -> Result<(), ApiError> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let next = used.checked_add(n).filter(|&x| x <= self.limit).ok_or_else(|| self.refusal(n, used))?;
            match self.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    fn refusal(&self, n: usize, used: usize) -> ApiError {
        ApiError::new(
            ErrorKind::Exhausted,
            format!(
                "the server cannot buffer {n} more byte(s): requests being read and decoded hold {used} of its {} (--max-buffered-bytes); retry later",
                self.limit
            ),
        )
    }
}

impl Reservation {
    /// Grows the reservation by `n` bytes, or refuses (the reservation is unchanged).
    pub fn grow(&mut self, n: usize) -> Result<(), ApiError> {
        self.budget.take(n)?;
        self.bytes += n;
        Ok(())
    }

    /// Grows the reservation to at least `n` bytes.
    pub fn grow_to(&mut self, n: usize) -> Result<(), ApiError> {
        match n.checked_sub(self.bytes) {
            Some(more) if more > 0 => self.grow(more),
            _ => Ok(()),
        }
    }

    /// Gives back up to `n` bytes (what was buffered and is freed now).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.budget.used.fetch_sub(n, Ordering::AcqRel);
        self.bytes -= n;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The default budget: a quarter of the memory this process may use (the host's memory, or the
/// cgroup's limit when lower), at least `floor` (one largest request), or 4 GiB when neither can
/// be read.
pub fn default_limit(floor: usize) -> usize {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib.saturating_mul(1024))
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let total = match (meminfo, cgroup) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 16 << 30,
    };
    usize::try_from(total / 4).unwrap_or(usize::MAX).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_limit_and_come_back_when_dropped() {
        let b = Budget::new(100);
        let mut a = b.empty();
        a.grow(60).unwrap();
        let mut c = b.empty();
        let e = c.grow(50).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exhausted);
        assert_eq!(e.message, "the server cannot buffer 50 more byte(s): requests being read and decoded hold 60 of its 100 (--max-buffered-bytes); retry later");
        assert_eq!(c.bytes(), 0);
        c.grow_to(40).unwrap();
        assert_eq!(b.used(), 100);
        c.grow_to(10).unwrap(); // already more
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.empty().grow(usize::MAX).is_err(), "no overflow");
    }

    #[test]
    fn the_default_is_at_least_the_floor() {
        assert!(default_limit(1 << 20) >= 1 << 20);
        assert_eq!(default_limit(usize::MAX), usize::MAX);
    }
}
