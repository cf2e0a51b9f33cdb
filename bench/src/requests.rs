//! The requests the cases send: request bodies, multipart redeems, signed
//! API calls (with the receiver's generated credentials), and the photo and
//! tokens a redeem needs.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use upload_receiver::auth::signature;
use upload_receiver::domain::{ALPHANUMERIC, random_string, unix_now};

use crate::load::Connection;

pub fn full(bytes: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// `total` bytes of a cheap pattern, in 256 KiB chunks, as a request body.
pub fn generated_body(
    prefix: Bytes,
    total: u64,
    suffix: Bytes,
) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    let chunk = Bytes::from(vec![0x5a; 256 * 1024]);
    let full_chunks = total / chunk.len() as u64;
    let rest = (total % chunk.len() as u64) as usize;
    let parts = std::iter::once(prefix)
        .chain(std::iter::repeat_n(chunk.clone(), full_chunks as usize))
        .chain(std::iter::once(chunk.slice(..rest)))
        .chain(std::iter::once(suffix))
        .map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
    StreamBody::new(futures_util::stream::iter(parts)).boxed()
}

const BOUNDARY: &str = "bench-boundary-7d1c";

/// Every benchmark file begins with an MP4 `ftyp` box, so that it passes
/// the receiver's default media types (`image/*`, `video/*`) like a video.
const MP4_SIGNATURE: &[u8] = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom";

/// A multipart redeem request for `token` with a `size`-byte file.
pub fn redeem_request(
    address: &str,
    token: &str,
    size: u64,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    let prefix = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"replace_token\"\r\n\r\n{token}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let prefix = [prefix.as_bytes(), MP4_SIGNATURE].concat();
    let suffix = format!("\r\n--{BOUNDARY}--\r\n");
    let generated = size.checked_sub(MP4_SIGNATURE.len() as u64).expect("files larger than their signature");
    let length = prefix.len() as u64 + generated + suffix.len() as u64;
    hyper::Request::post("/api/photo/redeem-replace-token")
        .header("host", address)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", length)
        .body(generated_body(Bytes::from(prefix), generated, Bytes::from(suffix)))
        .expect("a valid request")
}

/// Chunk `number` of a `total`-byte file in chunks of `chunk` bytes (the
/// libraries' default cutting: the last chunk takes the rest), as
/// Resumable.js sends it: every parameter in the query and the form, the
/// file part last. Chunk 1 begins with the file's signature.
pub fn chunk_request(
    address: &str,
    token: &str,
    number: u64,
    chunk: u64,
    total: u64,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    let count = (total / chunk).max(1);
    let size = if number == count { total - (number - 1) * chunk } else { chunk };
    let params = [
        ("replace_token", token.to_owned()),
        ("resumableChunkNumber", number.to_string()),
        ("resumableChunkSize", chunk.to_string()),
        ("resumableCurrentChunkSize", size.to_string()),
        ("resumableTotalSize", total.to_string()),
        ("resumableType", "video/mp4".to_owned()),
        ("resumableIdentifier", format!("{total}-bench")),
        ("resumableFilename", "bench.mp4".to_owned()),
    ];
    let fields: String = params
        .iter()
        .map(|(name, value)| {
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        })
        .collect();
    let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
    let head = format!(
        "{fields}--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let signature = if number == 1 { MP4_SIGNATURE } else { &[] };
    let prefix = [head.as_bytes(), signature].concat();
    let suffix = format!("\r\n--{BOUNDARY}--\r\n");
    let generated = size - signature.len() as u64;
    let length = prefix.len() as u64 + generated + suffix.len() as u64;
    hyper::Request::post(format!("/api/photo/redeem-replace-token?{query}"))
        .header("host", address)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", length)
        .body(generated_body(Bytes::from(prefix), generated, Bytes::from(suffix)))
        .expect("a valid request")
}

/// The receiver's generated `write` credentials, from its data directory.
pub fn credentials(dir: &Path) -> anyhow::Result<upload_receiver::auth::Credential> {
    Ok(upload_receiver::auth::credentials::load_or_generate(dir)?.0)
}

/// A signed GET of `path_and_query` on `address`.
pub fn signed_get(
    address: &str,
    credential: &upload_receiver::auth::Credential,
    path_and_query: &str,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    get(address, &signed_target("GET", address, credential, path_and_query))
}

/// A plain GET of `target` (path and query) on `address`.
pub fn get(
    address: &str,
    target: &str,
) -> hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    hyper::Request::get(target).header("host", address).body(full(Bytes::new())).expect("a valid request")
}

/// The signed path and query of a `method` request of `path_and_query` on
/// `address` (parameters in the query), with a fresh nonce.
pub fn signed_target(
    method: &str,
    address: &str,
    credential: &upload_receiver::auth::Credential,
    path_and_query: &str,
) -> String {
    let url = url::Url::parse(&format!("http://{address}{path_and_query}")).expect("a valid URL");
    let signed = signature::signed_url(
        method,
        &url,
        (&credential.consumer_key, &credential.access_token),
        (credential.consumer_secret.expose(), credential.access_token_secret.expose()),
        unix_now(),
        &random_string(ALPHANUMERIC, 24),
    );
    let signed = url::Url::parse(&signed).expect("a signed URL");
    format!("{}?{}", signed.path(), signed.query().unwrap_or_default())
}

/// Uploads a photo through the signed API; returns its id.
pub async fn upload_photo(address: &str, dir: &Path) -> anyhow::Result<String> {
    let credential = credentials(dir)?;
    let mut connection = Connection::open(address).await?;
    let body = [
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n")
            .as_bytes(),
        MP4_SIGNATURE,
        format!("\r\n--{BOUNDARY}--\r\n").as_bytes(),
    ]
    .concat();
    let request = hyper::Request::post(signed_target("POST", address, &credential, "/api/photo/upload"))
        .header("host", address)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(full(body))?;
    let (_, answer) = connection.send(request).await?;
    between(&answer, "<photo_id>", "</photo_id>").context("upload failed")
}

/// Issues `count` tokens of `max_uploads` each for `photo_id`.
pub async fn issue_tokens(
    address: &str,
    dir: &Path,
    photo_id: &str,
    max_uploads: u32,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let credential = credentials(dir)?;
    let mut connection = Connection::open(address).await?;
    let query = format!(
        "/api/photo/get-replace-token?photo_id={photo_id}&max_uploads={max_uploads}&valid_minutes=1440"
    );
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        let (_, answer) = connection.send(signed_get(address, &credential, &query)).await?;
        tokens.push(between(&answer, "<replace_token>", "</replace_token>").context("no token issued")?);
    }
    Ok(tokens)
}

/// Uploads a photo and issues one token for it.
pub async fn photo_and_token(address: &str, dir: &Path, max_uploads: u32) -> anyhow::Result<String> {
    let photo_id = upload_photo(address, dir).await?;
    let mut tokens = issue_tokens(address, dir, &photo_id, max_uploads, 1).await?;
    Ok(tokens.remove(0))
}

fn between(bytes: &[u8], start: &str, end: &str) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}
