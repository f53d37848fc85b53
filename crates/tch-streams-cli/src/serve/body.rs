//! Reading a request body into memory under the three bounds every request has: its size
//! (`--max-request-bytes`), the byte budget shared by every request (`--max-buffered-bytes`,
//! reserved *before* the bytes are buffered), and the time it may take to arrive
//! (`--body-timeout-s`, from its headers to its last byte).
//!
//! HTTP bodies reserve their declared `Content-Length` up front (or each chunk as it comes when
//! none is declared); a gRPC body reserves its message's length as soon as the 5-byte prefix
//! that states it has arrived. Runs on the async runtime: it only moves bytes.

use super::budget::{Budget, Reservation};
use super::protocol::{ApiError, ErrorKind};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use std::sync::Arc;
use std::time::Duration;

/// How to read one body.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Largest body (HTTP) or message (gRPC), bytes.
    pub max_bytes: usize,
    /// Longest the body may take to arrive.
    pub timeout: Duration,
    /// Whether it is a gRPC body (one length-prefixed message).
    pub grpc: bool,
    /// The offset in the body that should lie on an [`ALIGN`]-byte boundary in memory: where an
    /// HTTP request's binary tensors begin, so that they can become tensors without a copy
    /// (see `protocol::tensor_from_request_bytes`). Kept when the body declared its length.
    pub align_at: usize,
}

/// The alignment [`Bounds::align_at`] asks for: a cache line, more than any element needs.
pub const ALIGN: usize = 64;

/// The gRPC length prefix: a compression flag byte and a big-endian u32 length.
const GRPC_PREFIX: usize = 5;

/// The refusal of a body over the size limit.
pub fn too_large(max: usize, grpc: bool) -> ApiError {
    if grpc {
        ApiError::new(ErrorKind::TooLarge, format!("the request message is larger than the limit of {max} bytes (--max-request-bytes)"))
    } else {
        ApiError::new(ErrorKind::TooLarge, format!("the request body is larger than {max} bytes (--max-request-bytes)"))
    }
}

/// Reads `body` whole, within `bounds`, reserving its bytes from `budget` first; `declared` is
/// its `Content-Length` when the client gave one. Returns the bytes with their reservation.
pub async fn read<B>(body: B, declared: Option<u64>, bounds: Bounds, budget: &Arc<Budget>) -> Result<(Bytes, Reservation), ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let framing = if bounds.grpc { GRPC_PREFIX } else { 0 };
    let limit = bounds.max_bytes.saturating_add(framing);
    let mut held = budget.empty();
    let mut buf = BytesMut::new();
    if let Some(n) = declared {
        if n > limit as u64 {
            return Err(too_large(bounds.max_bytes, bounds.grpc));
        }
        held.grow(n as usize)?;
        // Room for the body and a lead-in that puts `align_at` on a boundary; the lead-in is
        // skipped, so the body starts after it and is never moved (its length is known).
        buf.reserve(n as usize + ALIGN);
        let lead = (ALIGN - (buf.as_ptr() as usize).wrapping_add(bounds.align_at) % ALIGN) % ALIGN;
        buf.resize(lead, 0);
        bytes::Buf::advance(&mut buf, lead);
    }
    let mut body = body;
    let reading = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::bad(format!("cannot read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else { continue }; // trailers
            let len = buf.len() + data.len();
            if len > limit {
                return Err(too_large(bounds.max_bytes, bounds.grpc));
            }
            if bounds.grpc && buf.len() < GRPC_PREFIX && len >= GRPC_PREFIX {
                // The prefix is complete: reserve the whole message now.
                let mut prefix = [0u8; GRPC_PREFIX];
                let have = buf.len();
                prefix[..have].copy_from_slice(&buf[..]);
                prefix[have..].copy_from_slice(&data[..GRPC_PREFIX - have]);
                let message = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                if message > bounds.max_bytes {
                    return Err(too_large(bounds.max_bytes, true));
                }
                held.grow_to(GRPC_PREFIX + message)?;
                buf.reserve((GRPC_PREFIX + message).saturating_sub(buf.len()));
            }
            held.grow_to(len)?;
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(bounds.timeout, reading).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::new(
                ErrorKind::BodyTimeout,
                format!(
                    "the request body did not arrive within {} s (--body-timeout-s): {} byte(s) came",
                    bounds.timeout.as_secs_f64(),
                    buf.len()
                ),
            ))
        }
    }
    Ok((buf.freeze(), held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn bodies_are_reserved_before_they_are_buffered() {
        let rt = rt();
        let budget = Budget::new(1000);
        let b = |max_bytes| Bounds { max_bytes, timeout: Duration::from_secs(5), grpc: false, align_at: 0 };
        let (bytes, held) = rt.block_on(read(Full::new(Bytes::from(vec![1u8; 600])), Some(600), b(800), &budget)).unwrap();
        assert_eq!((bytes.len(), held.bytes(), budget.used()), (600, 600, 600));
        // A second declared 600 does not fit: refused before reading.
        let e = rt.block_on(read(Full::new(Bytes::from(vec![1u8; 600])), Some(600), b(800), &budget)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exhausted);
        drop(held);
        assert_eq!(budget.used(), 0);
        let e = rt.block_on(read(Full::new(Bytes::from(vec![1u8; 900])), None, b(800), &budget)).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::TooLarge, "the request body is larger than 800 bytes (--max-request-bytes)"));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_declared_body_puts_its_binary_part_on_a_boundary() {
        let rt = rt();
        let budget = Budget::new(1 << 20);
        for align_at in [0usize, 1, 37, 64, 100] {
            let bounds = Bounds { max_bytes: 1000, timeout: Duration::from_secs(5), grpc: false, align_at };
            let sent: Vec<u8> = (0..200u8).collect();
            // In two chunks, as a body often arrives.
            let body = Chunks(vec![Bytes::copy_from_slice(&sent[90..]), Bytes::copy_from_slice(&sent[..90])]);
            let (bytes, _held) = rt.block_on(read(body, Some(200), bounds, &budget)).unwrap();
            assert_eq!(&bytes[..], &sent[..], "align_at {align_at}");
            assert_eq!((bytes.as_ptr() as usize + align_at) % ALIGN, 0, "align_at {align_at}");
        }
    }

    #[test]
    fn a_grpc_prefix_reserves_its_message_and_a_stalled_body_times_out() {
        let rt = rt();
        let budget = Budget::new(1000);
        let g = Bounds { max_bytes: 5000, timeout: Duration::from_millis(200), grpc: true, align_at: 0 };
        // A prefix announcing 2000 bytes: over the budget as soon as it arrives.
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&2000u32.to_be_bytes());
        let e = rt.block_on(read(Full::new(Bytes::from(prefix)), None, g, &budget)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exhausted);
        // A body that never ends.
        let e = rt.block_on(read(Stalled(false), None, g, &budget)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BodyTimeout);
        assert!(e.message.starts_with("the request body did not arrive within 0.2 s (--body-timeout-s): 3 byte(s) came"), "{}", e.message);
        assert_eq!(budget.used(), 0);
    }

    /// Three bytes, then nothing, forever.
    struct Stalled(bool);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            if self.0 {
                std::task::Poll::Pending
            } else {
                self.0 = true;
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"abc")))))
            }
        }
    }

    /// Its chunks, last first.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
}
