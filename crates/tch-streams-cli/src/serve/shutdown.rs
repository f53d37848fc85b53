//! Listening, and the graceful drain on SIGTERM or Ctrl-C.
//!
//! Order on a signal: (1) readiness turns false; (2) every listener stops accepting; (3) the
//! HTTP and gRPC servers finish the requests they already read (hyper and tonic close idle
//! connections and let busy ones answer); (4) back on the main thread, each engine drains its
//! queue ([`super::run`]). Steps 2–3 are bounded by `--drain-timeout-s`.

use super::state::Server;
use super::{grpc, http, listening_line};
use anyhow::Context;
use std::future::IntoFuture;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Resolves when SIGTERM or Ctrl-C (SIGINT) arrives.
async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Resolves once `rx` says the drain has begun.
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// HTTP/2 flow-control window of each gRPC request: a request up to this size is sent without
/// waiting for the server.
const GRPC_STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of each gRPC connection (its requests in flight together).
const GRPC_CONNECTION_WINDOW: u32 = 64 << 20;

async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen for {what} on {host}:{port}; is another server there? (pick another port, or 0 for any free one)"))
}

/// Binds the three ports, prints where they are, serves until a signal, then stops accepting
/// and waits (at most `drain`) for the requests already read. Returns whether they all finished
/// in time.
pub async fn serve_until_signal(server: Arc<Server>, host: &str, [http_port, grpc_port, metrics_port]: [u16; 3], drain: Duration) -> anyhow::Result<bool> {
    let http_l = bind(host, http_port, "HTTP").await?;
    let grpc_l = bind(host, grpc_port, "gRPC").await?;
    let metrics_l = bind(host, metrics_port, "metrics").await?;
    let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let line = listening_line(addr(&http_l), addr(&grpc_l), addr(&metrics_l));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|_| out.flush()).context("cannot write to stdout")?;
    }
    let (tx, rx) = watch::channel(false);
    let http_task = tokio::spawn(
        // Answers go out at once: no Nagle delay between a response's head and its body.
        axum::serve(http_l.tap_io(|tcp| { let _ = tcp.set_nodelay(true); }), http::router(Arc::clone(&server)))
            .with_graceful_shutdown(stopped(rx.clone()))
            .into_future(),
    );
    let metrics_task = tokio::spawn(axum::serve(metrics_l, http::metrics_router(Arc::clone(&server))).with_graceful_shutdown(stopped(rx.clone())).into_future());
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_l).with_nodelay(Some(true));
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            // HTTP/2's default flow-control window is 64 KiB: a larger request would wait a round
            // trip for the server's window update before its last bytes may be sent.
            .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
            .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
            .add_service(grpc::service(Arc::clone(&server)))
            .serve_with_incoming_shutdown(incoming, stopped(rx.clone())),
    );
    signal().await;
    eprintln!("signal received: draining (no new connections; answering the requests already received)");
    server.start_draining();
    let _ = tx.send(true);
    let all = async {
        let (h, g, m) = tokio::join!(http_task, grpc_task, metrics_task);
        for (what, r) in [("HTTP", h.map(|r| r.map_err(anyhow::Error::from))), ("gRPC", g.map(|r| r.map_err(anyhow::Error::from))), ("metrics", m.map(|r| r.map_err(anyhow::Error::from)))] {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("{what} server ended with an error: {e}"),
                Err(e) => tracing::error!("{what} server task failed: {e}"),
            }
        }
    };
    match tokio::time::timeout(drain, all).await {
        Ok(()) => Ok(true),
        Err(_) => {
            eprintln!("drain timed out after {} s (--drain-timeout-s): requests still open are dropped", drain.as_secs());
            Ok(false)
        }
    }
}
