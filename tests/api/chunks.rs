//! Resumable.js and flow.js requests, as the libraries send them. A file
//! that fits in one chunk is taken, and answered as a script needs; a file
//! in several chunks is refused with a status both libraries treat as
//! permanent, and nothing of it is stored (never a fragment as a version).

use reqwest::multipart::{Form, Part};

use crate::common::*;

const MIB: usize = 1 << 20;

/// Resumable.js's parameters for chunk `number` of a `total`-byte file in
/// chunks of `chunk` bytes, this chunk holding `current` bytes.
fn resumable(number: usize, current: usize, total: usize, chunk: usize) -> Vec<(String, String)> {
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
/// form, the file part last.
fn multipart_chunk(
    app: &TestApp,
    token: &str,
    params: &[(String, String)],
    bytes: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut all = vec![("replace_token".to_owned(), token.to_owned())];
    all.extend(params.iter().cloned());
    let url = url::Url::parse_with_params(&app.url(REDEEM), &all).unwrap();
    let mut form = Form::new();
    for (name, value) in all {
        form = form.text(name, value);
    }
    app.http.post(url).multipart(form.part("file", Part::bytes(bytes).file_name("blob")))
}

#[tokio::test]
async fn a_file_in_one_chunk_is_stored_and_the_script_is_given_the_return_url() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done?theme=green")]).await;
    let bytes = b"a small clip, one chunk".to_vec();
    let params = resumable(1, bytes.len(), bytes.len(), MIB);
    let response = multipart_chunk(&f, &token, &params, bytes.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200, "a script cannot follow a redirect");
    let url = url::Url::parse(&response.text().await.unwrap()).expect("the would-be redirect URL");
    let param = |name: &str| url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned());
    assert_eq!(param("theme").as_deref(), Some("green"));
    assert_eq!(param("photo_id").as_deref(), Some(f.photo_id.as_str()));
    assert_eq!(param("replace_token").as_deref(), Some(token.as_str()));
    assert_eq!(url.query_pairs().filter(|(n, _)| n == "resumableChunkNumber").count(), 1, "{url}");
    let photo = f.photo().await;
    assert_eq!(photo.versions.len(), 2);
    assert_eq!(photo.current_version().file.size, bytes.len() as u64);
    assert_eq!(f.uploads_used(&token).await, 1);
}

#[tokio::test]
async fn flow_js_names_in_the_form_only_are_a_chunk_too() {
    let f = PhotoApp::new().await;
    let token = f.upload_token(&[]).await;
    let bytes = b"flow".to_vec();
    let form = Form::new()
        .text("upload_token", token.clone())
        .text("flowChunkNumber", "1")
        .text("flowChunkSize", MIB.to_string())
        .text("flowCurrentChunkSize", "4")
        .text("flowTotalSize", "4")
        .text("flowIdentifier", "4-flowmp4")
        .part("file", Part::bytes(bytes).file_name("blob"));
    let response = f.http.post(f.url(REDEEM_UPLOAD)).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "OK\n", "no return_url: a plain OK");
    assert_eq!(f.uploads_used(&token).await, 1);
}

#[tokio::test]
async fn a_file_in_several_chunks_is_refused_permanently_and_nothing_of_it_is_stored() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    for number in [1, 2, 3] {
        let params = resumable(number, MIB, 3 * MIB, MIB);
        let response = multipart_chunk(&f, &token, &params, vec![7; MIB]).send().await.unwrap();
        assert_eq!(response.status(), 501, "permanent for Resumable.js and flow.js");
    }
    // The libraries' octet mode: raw bytes, parameters in the query.
    let mut query = vec![("replace_token".to_owned(), token.clone())];
    query.extend(resumable(1, MIB, 3 * MIB, MIB));
    let url = url::Url::parse_with_params(&f.url(REDEEM), &query).unwrap();
    let octet = f.http.post(url).header("content-type", "application/octet-stream").body(vec![7; MIB]);
    assert_eq!(octet.send().await.unwrap().status(), 501);
    let status = f.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (0, 0), "no slot used");
    assert_eq!(f.photo().await.versions.len(), 1, "no fragment became a version");
    assert_eq!(f.stored_objects().await.len(), 1, "only the original is stored");
}

#[tokio::test]
async fn chunks_that_cannot_be_are_refused_with_the_reason_and_give_the_slot_back() {
    let f = PhotoApp::with(|c| c.limits.max_upload_bytes = 1000).await;
    let token = f.token(&[]).await;
    // (the chunk's parameters, the bytes it carries, the reason given)
    let cases = [
        (resumable(1, 2000, 2000, MIB), 2000, "limits.max_upload_bytes"),
        (resumable(5, 10, 30, 10), 10, "does not fit"),
        (resumable(1, 20, 20, MIB), 19, "holds 19 bytes"),
    ];
    for (params, length, reason) in cases {
        let bytes = vec![1; length];
        let response = multipart_chunk(&f, &token, &params, bytes).send().await.unwrap();
        assert_eq!(response.status(), 500, "{reason}");
        let text = response.text().await.unwrap();
        assert!(text.contains(reason), "{text}");
    }
    let status = f.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (0, 0));
    assert_eq!(f.stored_objects().await.len(), 1);
}
