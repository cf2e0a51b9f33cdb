//! The accept loop: HTTP/1.1 connections with a cap on their number, a
//! header-read timeout that is really enforced (hyper needs a timer for it),
//! and a graceful shutdown. It serves whatever handler it is given and knows
//! nothing of the API.
//!
//! # Shutdown
//! When `shutdown` completes, open connections finish the request they are
//! in and close, and the listener keeps accepting so that clients arriving
//! during the drain reach the handler once more (the API answers them 503
//! with `Connection: close`, and a load balancer retries them elsewhere)
//! instead of finding the port closed. Once every connection that was open has finished, or
//! `shutdown_drain_secs` have passed, the listener closes and whatever is
//! left is cut; the uploads of cut requests clean up as their tasks drop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The limits of the accept loop.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long open requests may run on once a shutdown began.
    pub shutdown_drain: Duration,
}

/// Accepts and serves connections until `shutdown` completes; then lets
/// open requests finish for up to `settings.shutdown_drain`, and cuts
/// whatever is left (their uploads are cleaned up as their tasks drop).
/// `handler` answers each request, given the peer's address.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    settings: &Settings,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout).keep_alive(true);
    let service_for = move |peer: SocketAddr| {
        let handler = handler.clone();
        service_fn(move |request| {
            let answer = handler(request, peer);
            async move { Ok::<_, Infallible>(answer.await) }
        })
    };
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
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service_for(peer)));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }

    let drain = settings.shutdown_drain;
    tracing::info!(
        open_connections = connections.len(),
        drain_secs = drain.as_secs(),
        "shutting down: draining"
    );
    let deadline = tokio::time::sleep(drain);
    let mut deadline = std::pin::pin!(deadline);
    let mut drained = std::pin::pin!(graceful.shutdown());
    // Late arrivals get one answer (the API's 503) and close.
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
                let connection = builder.serve_connection(TokioIo::new(stream), service_for(peer));
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
