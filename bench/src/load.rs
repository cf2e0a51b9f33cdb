//! The client side's transport: one HTTP/1.1 connection for sequential
//! requests, and the request-rate load generator of cases 4 and 5.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::CONNECTIONS;

/// One HTTP/1.1 connection, for sequential requests.
pub struct Connection {
    sender:
        hyper::client::conn::http1::SendRequest<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>,
}

impl Connection {
    pub async fn open(address: &str) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { sender })
    }

    /// Sends a request and reads the whole answer; returns status and body.
    pub async fn send(
        &mut self,
        request: hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Runs `CONNECTIONS` connections for `seconds`, each sending the requests
/// `make` builds one after another; returns requests per second and the
/// latencies (s) of those answered `expect`.
pub async fn load<F>(address: &str, seconds: u64, expect: u16, make: F) -> anyhow::Result<(f64, Vec<f64>)>
where
    F: Fn() -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>
        + Send
        + Sync
        + 'static,
{
    let make = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (make, address) = (Arc::clone(&make), address.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut connection = Connection::open(&address).await?;
            while Instant::now() < deadline {
                let started = Instant::now();
                let (status, body) = connection.send(make()).await?;
                if status != expect {
                    bail!("answered {status}: {}", String::from_utf8_lossy(&body));
                }
                latencies.push(started.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}
