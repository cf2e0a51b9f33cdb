//! The accept loop: HTTP/1.1 connections with a cap on their number, a
//! header-read timeout that is really enforced (hyper needs a timer for it),
//! and a graceful shutdown.
//!
//! # Shutdown
//! When `shutdown` completes, the state is marked as shutting down (so
//! `/readyz` fails and every new request is answered 503 with `Connection:
//! close`), open connections finish the request they are in and close, and
//! the listener keeps accepting so that clients arriving during the drain get
//! that 503 (a load balancer retries them elsewhere) instead of a refused
//! connection. Once every connection that was open has finished, or
//! `shutdown_drain_secs` have passed, the listener closes and whatever is
//! left is cut; the uploads of cut requests clean up as their tasks drop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::app::AppState;

/// Accepts and serves connections until `shutdown` completes; then stops
/// accepting, lets open requests finish for up to `shutdown_drain_secs`, and
/// cuts whatever is left (their uploads are cleaned up as their tasks drop).
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()> + Send) {
    let server = &state.config.server;
    let slots = Arc::new(Semaphore::new(server.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(server.header_read_timeout_secs))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        // Waiting for a free slot before accepting leaves excess connections
        // in the kernel's backlog instead of serving them badly.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = service_fn(move |request| crate::api::handle(Arc::clone(&state), request, peer));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }

    let drain = Duration::from_secs(state.config.server.shutdown_drain_secs);
    tracing::info!(
        open_connections = connections.len(),
        drain_secs = drain.as_secs(),
        "shutting down: draining"
    );
    let deadline = tokio::time::sleep(drain);
    let mut deadline = std::pin::pin!(deadline);
    let mut drained = std::pin::pin!(graceful.shutdown());
    // Late arrivals get one answer (503, see `crate::api::handle`) and close.
    builder.keep_alive(false);
    loop {
        tokio::select! {
            () = &mut drained => {
                tracing::info!("every open connection finished");
                break;
            }
            () = &mut deadline => {
                tracing::warn!(cut = connections.len(), "drain deadline passed; cutting the remaining connections");
                break;
            }
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let state = Arc::clone(&state);
                let service = service_fn(move |request| crate::api::handle(Arc::clone(&state), request, peer));
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                connections.spawn(async move {
                    let _ = connection.await;
                });
            }
        }
    }
    drop(listener);
    // Late arrivals were answered at once; give the last of them a moment
    // (within the deadline) to read their 503.
    let grace = deadline.deadline().min(tokio::time::Instant::now() + Duration::from_secs(1));
    let _ = tokio::time::timeout_at(grace, async { while connections.join_next().await.is_some() {} }).await;
    connections.shutdown().await;
}
