//! Fewer, larger writes on a multiplexed (HTTP/2) connection.
//!
//! One HTTP/2 connection carries every gRPC request of a client, and one task writes all of its
//! frames. Left alone, that task runs as soon as any one stream has something to send (tokio
//! runs a task woken by the running one next, on the same thread) and writes it: one `writev`
//! per answer, however many answers are ready a moment later, all serialised on that task. With
//! many requests in flight those system calls (on loopback each one also delivers the segment
//! to the peer) bound what one connection can carry.
//!
//! [`Coalesced`] holds what the connection writes, up to [`HOLD`] bytes, and defers the first
//! flush of each batch by one turn of the scheduler: the connection's task yields, the tasks
//! already runnable (other streams finishing their answers, other requests being read) run, and
//! the next flush writes everything they added in one call. Nothing waits for data that is not
//! already on its way: the deferral is one yield, never a timer, and a write larger than
//! [`HOLD`] goes straight to the socket (after what is held). Back-pressure is the socket's: a
//! full buffer is written out before more is taken.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before they are written (per connection).
pub const HOLD: usize = 16 << 10;

/// An I/O object whose writes are held and written together on flush (see the module docs).
#[derive(Debug)]
pub struct Coalesced<T> {
    io: T,
    held: Vec<u8>,
    /// Whether this batch's flush was already deferred once.
    deferred: bool,
}

impl<T> Coalesced<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Coalesced<T> {
        Coalesced { io, held: Vec::new(), deferred: false }
    }

    /// Bytes held, not yet written.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        let result = loop {
            if done == self.held.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.held[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.held.drain(..done);
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if me.held.len() + total > HOLD {
            // No room: what is held goes first (nothing of `bufs` is taken until it has).
            std::task::ready!(me.poll_drain(cx))?;
            if total > HOLD {
                return Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
            }
        }
        if me.held.capacity() == 0 {
            me.held.reserve(HOLD);
        }
        for b in bufs {
            me.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if !me.held.is_empty() {
            if !me.deferred {
                // One turn of the scheduler for the tasks already runnable to add their frames.
                me.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(me.poll_drain(cx))?;
        }
        me.deferred = false;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        std::task::ready!(me.poll_drain(cx))?;
        me.deferred = false;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::task::{Wake, Waker};

    /// Records each write call; accepts at most `limit` bytes a call.
    #[derive(Default)]
    struct Log {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        limit: usize,
    }

    impl AsyncWrite for Log {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(if self.limit == 0 { usize::MAX } else { self.limit });
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Count(Mutex<usize>);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
        fn wake_by_ref(self: &Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    fn write(c: &mut Coalesced<Log>, cx: &mut Context<'_>, bytes: &[u8]) -> usize {
        match Pin::new(c).poll_write(cx, bytes) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_before_a_flush_go_out_in_one_call_after_one_yield() {
        let wakes = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Log::default());
        assert_eq!(write(&mut c, &mut cx, b"first "), 6);
        // The first flush yields (wakes its task, writes nothing).
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert_eq!((*wakes.0.lock().unwrap(), c.io.writes.len(), c.held()), (1, 0, 6));
        // Meanwhile another stream's frames arrive; the next flush writes both at once.
        assert_eq!(write(&mut c, &mut cx, b"second"), 6);
        assert!(matches!(Pin::new(&mut c).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.io.writes, vec![b"first second".to_vec()]);
        assert_eq!((c.io.flushes, c.held()), (1, 0));
        // With nothing held a flush is the socket's own.
        assert!(matches!(Pin::new(&mut c).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!((c.io.writes.len(), c.io.flushes, *wakes.0.lock().unwrap()), (1, 2, 1));
    }

    #[test]
    fn a_large_write_goes_straight_out_after_what_is_held() {
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Log { limit: 5000, ..Default::default() });
        write(&mut c, &mut cx, b"head");
        let big = vec![7u8; HOLD + 1];
        // What is held is written first (in pieces the socket takes), then the large write itself.
        assert_eq!(write(&mut c, &mut cx, &big), 5000);
        assert_eq!(c.io.writes[0], b"head".to_vec());
        assert_eq!(c.io.writes[1].len(), 5000);
        assert_eq!(c.held(), 0);
        // Small writes are held again, up to HOLD bytes.
        assert_eq!(write(&mut c, &mut cx, &[1u8; HOLD]), HOLD);
        assert_eq!((c.io.writes.len(), c.held()), (2, HOLD));
        assert_eq!(write(&mut c, &mut cx, b"x"), 1);
        assert_eq!(c.io.writes.len(), 2 + HOLD.div_ceil(5000), "the full buffer was written first");
        assert_eq!(c.held(), 1);
        assert!(matches!(Pin::new(&mut c).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.held(), 0);
    }
}
