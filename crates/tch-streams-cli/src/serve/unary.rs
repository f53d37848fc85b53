//! One unary gRPC exchange on the wire, without a framework in between: the length-prefixed
//! message of a request, and an answer made of one message and its trailers.
//!
//! ModelInfer, the one method on the hot path, goes through here ([`super::grpc::Front`]): the
//! request's message is decoded straight from the bytes the front has already read (its tensors
//! stay slices of them), and the answer is framed once into one buffer. Everything else (the
//! other methods, a compressed message, a body that is not exactly one message) goes through
//! tonic as before.
//!
//! The framing, from the gRPC over HTTP/2 specification: each message is a 1-byte
//! compressed-flag, a 4-byte big-endian length, then that many bytes. A successful answer is a
//! HEADERS frame (`:status 200`, `content-type: application/grpc`), the framed message, and
//! trailers carrying `grpc-status: 0`.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Bytes before each message: the compressed flag and the length.
pub const PREFIX: usize = 5;

/// The message of a request body that holds exactly one uncompressed message; `None` for
/// anything else (too short, compressed, a length that does not match the body), which the
/// caller leaves to the general path.
///
/// ```
/// use bytes::Bytes;
/// use tch_streams_cli::serve::unary::only_message;
/// let body = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]);
/// assert_eq!(only_message(&body).unwrap().as_ref(), &[8, 1]);
/// assert!(only_message(&Bytes::from_static(&[1, 0, 0, 0, 2, 8, 1])).is_none()); // compressed
/// assert!(only_message(&Bytes::from_static(&[0, 0, 0, 0, 3, 8, 1])).is_none()); // short
/// assert!(only_message(&Bytes::from_static(&[0, 0, 0])).is_none());
/// ```
pub fn only_message(body: &Bytes) -> Option<Bytes> {
    let head = body.get(..PREFIX)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    (head[0] == 0 && body.len() - PREFIX == len).then(|| body.slice(PREFIX..))
}

/// `message` framed (uncompressed), in one buffer; `None` when it is longer than a frame's
/// 4-byte length can say (4 GiB).
pub fn framed<M: Message>(message: &M) -> Option<Bytes> {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).ok()?);
    message.encode(&mut out).expect("the buffer was sized by encoded_len");
    Some(out.freeze())
}

/// A successful answer: `message` (already [`framed`]), then `grpc-status: 0`.
pub fn ok(message: Bytes) -> hyper::Response<Answer> {
    let mut resp = hyper::Response::new(Answer { message: Some(message), trailers: true });
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

/// The body of a successful unary answer: one data frame, then the trailers.
#[derive(Debug)]
pub struct Answer {
    message: Option<Bytes>,
    trailers: bool,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(m) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(m))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut t = HeaderMap::with_capacity(1);
            t.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_framed_message_reads_back_and_the_answer_ends_with_status_zero() {
        let m = super::super::grpc::pb::ModelReadyRequest { name: "m".into(), version: "1".into() };
        let f = framed(&m).unwrap();
        assert_eq!(f[0], 0);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, m.encoded_len());
        let back = super::super::grpc::pb::ModelReadyRequest::decode(only_message(&f).unwrap()).unwrap();
        assert_eq!(back, m);
        let resp = ok(f.clone());
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let collected = rt.block_on(resp.into_body().collect()).unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), f);
    }
}
