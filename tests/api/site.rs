//! A stand-in for the site that uses the receiver: a real HTTP server on
//! loopback that serves pages and records every request it gets (the
//! browser's return, the receiver's background callbacks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One request the site received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub body: String,
    /// Every header, names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// The parameters of the query (GET) or the form body (POST).
    pub fn params(&self) -> Vec<(String, String)> {
        let encoded = if self.method == "GET" {
            self.target.split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default()
        } else {
            self.body.clone()
        };
        url::form_urlencoded::parse(encoded.as_bytes()).into_owned().collect()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.params().into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What the site serves.
#[derive(Clone, Default)]
pub struct Pages {
    /// Served at `/form`.
    pub form_html: String,
}

pub struct Site {
    pub address: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    pages: Arc<Mutex<Pages>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Site {
    /// Starts the site on a free loopback port. `/form` serves the
    /// configured page; `/silent` accepts and never answers, `/silent-once`
    /// only the first time; `/fail-twice`
    /// answers its first two requests `503`; any other path answers `200`
    /// with a small page echoing the parameters.
    pub async fn start() -> Site {
        Site::start_on(0).await
    }

    /// [`Site::start`] on `port` (0: a free one).
    pub async fn start_on(port: u16) -> Site {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let pages = Arc::new(Mutex::new(Pages::default()));
        let (log, served) = (Arc::clone(&recorded), Arc::clone(&pages));
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (log, served) = (Arc::clone(&log), Arc::clone(&served));
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (log, served) = (Arc::clone(&log), Arc::clone(&served));
                        async move { Ok::<_, Infallible>(respond(request, &log, &served).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Site { address, recorded, pages, server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn set_form(&self, html: String) {
        self.pages.lock().unwrap().form_html = html;
    }

    /// Every request so far, except those for `/form`.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    log: &Mutex<Vec<Recorded>>,
    pages: &Mutex<Pages>,
) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let target = request.uri().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path == "/form" {
        let html = pages.lock().unwrap().form_html.clone();
        let mut response = Response::new(Full::new(Bytes::from(html)));
        response.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        return response;
    }
    let recorded = Recorded { method, target, body: String::from_utf8_lossy(&body).into_owned(), headers };
    let earlier = {
        let mut log = log.lock().unwrap();
        let earlier = log.iter().filter(|r| r.target.split('?').next() == Some(path.as_str())).count();
        log.push(recorded.clone());
        earlier
    };
    if path == "/silent" || (path == "/silent-once" && earlier == 0) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if path == "/fail-twice" && earlier < 2 {
        let mut response = Response::new(Full::new(Bytes::from_static(b"not now")));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    let mut page = String::from("<!DOCTYPE html><html><body><h1>Returned</h1><dl id=\"params\">");
    for (name, value) in recorded.params() {
        page.push_str(&format!("<dt>{}</dt><dd>{}</dd>", escape(&name), escape(&value)));
    }
    page.push_str("</dl></body></html>");
    let mut response = Response::new(Full::new(Bytes::from(page)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().unwrap());
    response
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
