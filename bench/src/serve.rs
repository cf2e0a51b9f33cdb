//! What the child processes run: the hidden `serve-*` subcommands. The
//! receiver itself, and the baselines, minimal hyper servers in this
//! process (a raw HTTP-to-disk sink and a hello world).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use upload_receiver::domain::{ALPHANUMERIC, random_string};

pub async fn serve_receiver() -> anyhow::Result<()> {
    let config = upload_receiver::Config::load(None)?;
    let app = upload_receiver::App::build(config).await?;
    println!("listening {}", app.local_addr());
    app.run_until(std::future::pending()).await;
    Ok(())
}

/// The baselines: HTTP/1.1 on hyper with no routing, parsing or auth. With
/// a directory, each request body is written to a file there as it arrives;
/// without, every request is answered "hello". `sha256` adds the one piece
/// of the receiver's per-byte work that no upload can skip, for evidence.
pub async fn serve_minimal(sink: Option<(PathBuf, bool)>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let sink = sink.map(Arc::new);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let sink = sink.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        if let Some((dir, sha256)) = sink.as_deref() {
                            use sha2::Digest;
                            use tokio::io::AsyncWriteExt;
                            let path = dir.join(random_string(ALPHANUMERIC, 16));
                            let mut file = tokio::fs::File::create(&path).await?;
                            let mut body = request.into_body();
                            let mut hasher = sha2::Sha256::new();
                            while let Some(frame) = body.frame().await {
                                if let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() {
                                    if *sha256 {
                                        hasher.update(&data);
                                    }
                                    file.write_all(&data).await?;
                                }
                            }
                            std::hint::black_box(hasher.finalize());
                            file.sync_all().await?;
                            let _ = tokio::fs::remove_file(&path).await;
                        }
                        Ok::<_, std::io::Error>(hyper::Response::new(Full::new(Bytes::from_static(b"hello"))))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
