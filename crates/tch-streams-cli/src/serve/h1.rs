//! HTTP/1.1 connections (the REST and metrics ports): hyper drives each one, and the answers
//! hyper writes on its own get the protocol's JSON error body too.
//!
//! hyper answers a request it cannot parse by itself, before any route sees it — 400 (not
//! HTTP), 414 (URI too long), 431 (headers too large) — with an empty body, then closes the
//! connection. [`JsonErrors`] sits between hyper and the socket and replaces exactly those
//! answers (a status line of one of these codes, `content-length: 0` and no `content-type`:
//! every answer of ours has one) with the same status and `{"error": "..."}`, so a client always
//! gets the message it would get from any other refusal.

use super::listen::{drive, Conn, Tracked};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower_service::Service;

/// Serves HTTP/1.1 on one connection with `router`, each request counted as in progress on
/// `conn` until its answer is written.
pub async fn serve(tcp: TcpStream, conn: Arc<Conn>, router: axum::Router, idle: Duration, stop: watch::Receiver<bool>) {
    let state = Arc::clone(&conn);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let active = state.enter();
        let mut router = router.clone();
        async move {
            let resp = router.call(req).await.unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, active)))
        }
    });
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // A client must send a request's headers within the idle timeout (hyper's own clock; the
    // connection's idle watch closes it too).
    h1.timer(TokioTimer::new()).header_read_timeout(idle);
    let c = h1.serve_connection(TokioIo::new(JsonErrors::new(tcp)), svc);
    tokio::pin!(c);
    drive(c.as_mut(), |c| c.graceful_shutdown(), conn, idle, stop).await
}

/// The message of one of hyper's own error answers, by status.
fn message(status: &[u8]) -> Option<&'static str> {
    Some(match status {
        b"400" => "the request is not valid HTTP/1.1",
        b"414" => "the request's URI is too long",
        b"431" => "the request's headers are too large",
        _ => return None,
    })
}

/// The answer to write instead of `head`, when `head` is one of hyper's own error answers.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let msg = message(&head[9..12])?;
    let text = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
    if text.contains("\r\ncontent-type:") || !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let status_line = &head[..head.windows(2).position(|w| w == b"\r\n")?];
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut out = status_line.to_vec();
    out.extend_from_slice(format!("\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes());
    Some(out)
}

/// A connection whose writes pass through, except hyper's own error answers, which are
/// replaced (see the module docs).
pub struct JsonErrors<T> {
    inner: T,
    /// A replacement being written: its bytes, how many are written, and the length of the
    /// answer it replaces (reported to hyper once all of it is written).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> JsonErrors<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> JsonErrors<T> {
        JsonErrors { inner, pending: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match rewrite(buf) {
                Some(out) => self.pending = Some((out, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        let this = &mut *self;
        let Some((out, written, replaced)) = this.pending.as_mut() else { return Poll::Ready(Ok(0)) };
        while *written < out.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &out[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *replaced;
        this.pending = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper then writes each answer's head from one buffer, which is what
    /// `rewrite` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_empty_error_answers_are_rewritten() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper_414).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n{\"error\":\"the request's URI is too long\"}"), "{out}");
        // Ours carry a content type; other statuses and bodies pass.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\nmore").is_none());
        assert!(rewrite(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n").is_some());
    }
}
