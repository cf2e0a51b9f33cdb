//! A Resumable.js client, as the library sends its requests: the chunk
//! parameters of a file, multipart chunks with every parameter in the query
//! and the form, and test GETs. Shared by the HTTP and the cluster tests.

use reqwest::multipart::{Form, Part};

use crate::common::*;

pub const MIB: usize = 1 << 20;

/// Resumable.js's parameters for chunk `number` of a `total`-byte file in
/// chunks of `chunk` bytes, this chunk holding `current` bytes.
pub fn resumable(number: usize, current: usize, total: usize, chunk: usize) -> Vec<(String, String)> {
    [
        ("resumableChunkNumber", number.to_string()),
        ("resumableChunkSize", chunk.to_string()),
        ("resumableCurrentChunkSize", current.to_string()),
        ("resumableTotalSize", total.to_string()),
        ("resumableType", "video/mp4".to_owned()),
        ("resumableIdentifier", format!("{total}-clipmp4")),
        ("resumableFilename", "clip.mp4".to_owned()),
        ("resumableRelativePath", "clip.mp4".to_owned()),
        ("resumableTotalChunks", (total / chunk).max(1).to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect()
}

/// A Resumable.js multipart chunk: every parameter in the query and in the
/// form, the file part last. `field` names the token.
pub fn multipart_chunk_of(
    app: &TestApp,
    path: &str,
    field: &str,
    token: &str,
    params: &[(String, String)],
    bytes: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut all = vec![(field.to_owned(), token.to_owned())];
    all.extend(params.iter().cloned());
    let url = url::Url::parse_with_params(&app.url(path), &all).unwrap();
    let mut form = Form::new();
    for (name, value) in all {
        form = form.text(name, value);
    }
    app.http.post(url).multipart(form.part("file", Part::bytes(bytes).file_name("blob")))
}

/// A replace token's multipart chunk.
pub fn multipart_chunk(
    app: &TestApp,
    token: &str,
    params: &[(String, String)],
    bytes: Vec<u8>,
) -> reqwest::RequestBuilder {
    multipart_chunk_of(app, REDEEM, "replace_token", token, params, bytes)
}

/// `total` bytes of a pattern that differs from chunk to chunk.
pub fn content(total: usize) -> Vec<u8> {
    (0..total).map(|i| (i / 1000 + i * 7) as u8).collect()
}

/// Chunk `number` (from 1) of `bytes` in chunks of `chunk` (floor sizing).
pub fn piece(bytes: &[u8], number: usize, chunk: usize) -> Vec<u8> {
    let count = (bytes.len() / chunk).max(1);
    let start = (number - 1) * chunk;
    let end = if number == count { bytes.len() } else { start + chunk };
    bytes[start..end].to_vec()
}

/// Sends chunk `number` of `bytes` with a replace token, as Resumable.js does.
pub async fn send_chunk(
    app: &TestApp,
    token: &str,
    bytes: &[u8],
    number: usize,
    chunk: usize,
) -> reqwest::Response {
    let data = piece(bytes, number, chunk);
    let params = resumable(number, data.len(), bytes.len(), chunk);
    multipart_chunk(app, token, &params, data).send().await.unwrap()
}

/// The libraries' test GET of chunk `number`; its status.
pub async fn test_get(app: &TestApp, token: &str, bytes: &[u8], number: usize, chunk: usize) -> u16 {
    let data = piece(bytes, number, chunk);
    let mut query = vec![("replace_token".to_owned(), token.to_owned())];
    query.extend(resumable(number, data.len(), bytes.len(), chunk));
    let url = url::Url::parse_with_params(&app.url(REDEEM), &query).unwrap();
    app.http.get(url).send().await.unwrap().status().as_u16()
}
