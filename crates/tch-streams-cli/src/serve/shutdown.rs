//! Listening, and the graceful drain on SIGTERM or Ctrl-C.
//!
//! Order on a signal: (1) readiness turns false; (2) every listener stops accepting; (3) every
//! connection stops taking requests and closes as soon as nothing is in progress on it (at once
//! for an idle one, or one still sending a request's headers), after answering the requests it
//! already has ([`super::listen::drive`]); (4) back on the main thread, the engines drain their
//! queues, all at once ([`super::serve`](fn@super::serve)). One deadline, `--drain-timeout-s` from the signal,
//! bounds all of it. A second signal during the drain exits at once (code 1).

use super::coalesce::Coalesced;
use crate::conn_threads::ConnThreads;
use super::listen::{accept_loop, drive, Conns};
use super::state::Server;
use super::{grpc, h1, http, listening_line};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// HTTP/2 flow-control window of each gRPC request: a request up to this size is sent without
/// waiting for the server.
const GRPC_STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of each gRPC connection (its requests in flight together).
const GRPC_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest header block a gRPC request may send (names, metadata).
const GRPC_MAX_HEADER_LIST: u32 = 64 << 10;

async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen for {what} on {host}:{port}; is another server there? (pick another port, or 0 for any free one)"))
}

/// Binds the three ports, prints where they are, serves until a signal, then stops accepting
/// and waits (at most `drain`) for the requests already read. gRPC connections run on
/// `grpc_threads` when given (see [`ConnThreads`]), else on this runtime like the others. Returns whether they all finished
/// in time, and when the signal came (the drain's deadline runs from it).
pub async fn serve_until_signal(
    server: Arc<Server>,
    host: &str,
    [http_port, grpc_port, metrics_port]: [u16; 3],
    drain: Duration,
    grpc_threads: Option<Arc<ConnThreads>>,
) -> anyhow::Result<(bool, std::time::Instant)> {
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
    let limits = server.limits;
    let conns = Conns::new(limits.max_connections, Some(server.metrics.connections.clone()));
    let metrics_conns = Conns::new(super::METRICS_CONNECTIONS, None);
    let router = http::router(Arc::clone(&server));
    let http_task = tokio::spawn(accept_loop(http_l, Arc::clone(&conns), rx.clone(), None, {
        let rx = rx.clone();
        move |tcp, conn| h1::serve(tcp, conn, router.clone(), limits.idle_timeout, rx.clone())
    }));
    let metrics_router = http::metrics_router(Arc::clone(&server));
    let metrics_task = tokio::spawn(accept_loop(metrics_l, Arc::clone(&metrics_conns), rx.clone(), None, {
        let rx = rx.clone();
        move |tcp, conn| h1::serve(tcp, conn, metrics_router.clone(), limits.idle_timeout, rx.clone())
    }));
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // HTTP/2's default flow-control window is 64 KiB: a larger request would wait a round
        // trip for the server's window update before its last bytes may be sent.
        .initial_stream_window_size(GRPC_STREAM_WINDOW)
        .initial_connection_window_size(GRPC_CONNECTION_WINDOW)
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(GRPC_MAX_HEADER_LIST);
    let grpc_service = grpc::service(Arc::clone(&server));
    let grpc_task = tokio::spawn(accept_loop(grpc_l, Arc::clone(&conns), rx.clone(), grpc_threads, {
        let (rx, server) = (rx.clone(), Arc::clone(&server));
        move |tcp, conn| {
            let front = grpc::Front::new(Arc::clone(&server), grpc_service.clone(), Arc::clone(&conn));
            // Answers ready together leave in one write (see `coalesce`).
            let c = h2.serve_connection(TokioIo::new(Coalesced::new(tcp)), front);
            let rx = rx.clone();
            async move {
                tokio::pin!(c);
                drive(c.as_mut(), |c| c.graceful_shutdown(), conn, limits.idle_timeout, rx).await
            }
        }
    }));
    signal().await;
    let signalled = std::time::Instant::now();
    eprintln!("signal received: draining (no new connections; answering the requests already received); a second signal exits at once");
    // Stays armed until the process exits (the runtime outlives the engines' drain).
    tokio::spawn(async {
        signal().await;
        eprintln!("second signal: exiting now, without finishing the drain");
        std::process::exit(1);
    });
    server.start_draining();
    let _ = tx.send(true);
    let all = async {
        // The accept loops end at once (their listeners close); then every connection finishes
        // what it has in progress and closes.
        let (h, g, m) = tokio::join!(http_task, grpc_task, metrics_task);
        for (what, r) in [("HTTP", h), ("gRPC", g), ("metrics", m)] {
            if let Err(e) = r {
                tracing::error!("{what} listener task failed: {e}");
            }
        }
        tokio::join!(conns.all_closed(), metrics_conns.all_closed());
    };
    match tokio::time::timeout(drain, all).await {
        Ok(()) => Ok((true, signalled)),
        Err(_) => {
            eprintln!("drain timed out after {} s (--drain-timeout-s): requests still open are dropped", drain.as_secs());
            Ok((false, signalled))
        }
    }
}
