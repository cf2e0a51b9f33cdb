//! Resumable.js and flow.js requests, as the libraries send them: files in
//! one chunk and in many, in any order, several at once, multipart and
//! octet; test GETs, replays, refusals, abandonment; on both backends.

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use upload_receiver::config::MediaTypes;

use crate::chunk_client::*;
use crate::common::*;

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
    assert!(
        !url.query_pairs().any(|(n, _)| n.starts_with("resumable")),
        "the library's own parameters stay out: {url}"
    );
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
async fn chunks_out_of_order_make_one_version_byte_for_byte_and_replays_change_nothing() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done?theme=green")]).await;
    // 3 MiB + 123 bytes in 1 MiB chunks: three, the last 1 MiB + 123.
    let bytes = content(3 * MIB + 123);
    for number in [2, 3] {
        assert_eq!(test_get(&f, &token, &bytes, number, MIB).await, 204, "not stored yet");
        let response = send_chunk(&f, &token, &bytes, number, MIB).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok", "chunk {number} does not complete the file");
        assert_eq!(test_get(&f, &token, &bytes, number, MIB).await, 200, "stored");
    }
    assert_eq!(f.token_status(&token).await.uploads_in_flight, 1, "one slot for the file");
    assert_eq!(test_get(&f, &token, &bytes, 1, MIB).await, 204, "the chunk that would complete it");
    let last = send_chunk(&f, &token, &bytes, 1, MIB).await;
    assert_eq!(last.status(), 200);
    let answer = last.text().await.unwrap();
    let url = url::Url::parse(&answer).expect("the would-be redirect URL");
    let param = |name: &str| url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned());
    assert_eq!(param("photo_id").as_deref(), Some(f.photo_id.as_str()));
    assert_eq!(param("theme").as_deref(), Some("green"));
    assert!(
        !url.query_pairs().any(|(n, _)| n.starts_with("resumable")),
        "the library's parameters stay out: {url}"
    );

    let photo = f.photo().await;
    assert_eq!(photo.versions.len(), 2);
    let version = &photo.current_version().file;
    assert_eq!(version.size, bytes.len() as u64);
    assert!(f.object_bytes(&version.object_key).await.as_deref() == Some(&bytes[..]), "byte for byte");
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &bytes);
    assert_eq!(version.crc64nvme.as_deref(), Some(format!("{crc:016x}").as_str()));
    assert_eq!(version.original_filename.as_deref(), Some("clip.mp4"));

    // Any chunk again, or its test GET: the same outcome, nothing new.
    for number in [1, 2, 3] {
        assert_eq!(send_chunk(&f, &token, &bytes, number, MIB).await.text().await.unwrap(), answer);
    }
    assert_eq!(test_get(&f, &token, &bytes, 2, MIB).await, 200);
    let status = f.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (1, 0));
    assert_eq!(f.photo().await.versions.len(), 2, "no second version");
    let mut objects = f.stored_objects().await;
    objects.sort();
    assert_eq!(objects.len(), 2, "the original and the new version, nothing staged: {objects:?}");
}

#[tokio::test]
async fn the_object_has_the_type_of_chunk_one_whichever_chunk_began_the_file() {
    let f = PhotoApp::new().await;
    // Declared a video (the first chunks to arrive begin the object so),
    // chunk 1 shows a JPEG.
    let bytes = [JPEG_SIGNATURE, &content(3 * MIB)].concat();
    for (token, order) in [(f.token(&[]).await, [3, 2, 1]), (f.token(&[]).await, [1, 3, 2])] {
        for number in order {
            assert_eq!(send_chunk(&f, &token, &bytes, number, MIB).await.status(), 200);
        }
        let version = f.photo().await.current_version().file.clone();
        assert_eq!(version.content_type, "image/jpeg");
        if f.config.storage.bucket.is_some() {
            let served = f.object_content_type(&version.object_key).await;
            assert_eq!(served.as_deref(), Some("image/jpeg"), "chunks {order:?}");
        }
        assert!(f.object_bytes(&version.object_key).await.as_deref() == Some(&bytes[..]), "byte for byte");
    }
}

#[tokio::test]
async fn a_chunk_stored_while_the_last_one_arrives_answers_with_the_files_outcome() {
    let f = PhotoApp::new().await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;
    let bytes = content(3 * MIB);
    assert_eq!(send_chunk(&f, &token, &bytes, 1, MIB).await.text().await.unwrap(), "ok");

    // Chunk 3 arrives slowly: half of it, then the rest when released.
    let third = piece(&bytes, 3, MIB);
    let (head, tail) = (third[..MIB / 2].to_vec(), third[MIB / 2..].to_vec());
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(head)]).chain(futures_util::stream::once(
        async move {
            released.await.ok();
            Ok(tail)
        },
    ));
    let mut query = vec![("replace_token".to_owned(), token.clone())];
    query.extend(resumable(3, third.len(), bytes.len(), MIB));
    let url = url::Url::parse_with_params(&f.url(REDEEM), &query).unwrap();
    let slow = f
        .http
        .post(url)
        .header("content-type", "application/octet-stream")
        .header("content-length", third.len())
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let slow = tokio::spawn(async move { slow.await.unwrap().text().await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // Chunk 2 is stored while 3 is on its way: its answer waits for the file.
    let second = tokio::spawn({
        let (f, token, bytes) = (TestApp::handle_of(&f), token.clone(), bytes.clone());
        async move { send_chunk(&f, &token, &bytes, 2, MIB).await.text().await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "chunk 2 waits for the outcome rather than answer ok");
    release.send(()).unwrap();
    let (last, second) = (slow.await.unwrap(), second.await.unwrap());
    let url = url::Url::parse(&last).expect("the completing chunk answers the redirect URL");
    assert!(url.as_str().starts_with("http://www.example.com/done?"), "{url}");
    assert_eq!(second, last, "chunk 2 answers the same outcome");
    assert_eq!(f.photo().await.versions.len(), 2, "one version");
    assert!(
        f.object_bytes(&f.photo().await.current_version().file.object_key).await.as_deref()
            == Some(&bytes[..])
    );
}

#[tokio::test]
async fn flow_js_octet_chunks_at_once_with_forced_chunk_size_make_one_photo() {
    let f = PhotoApp::new().await;
    let token = f.upload_token(&[("title", "Chunked"), ("return_url", "http://www.example.com/new")]).await;
    // flow.js with forceChunkSize: ceil(2.5 MiB / 1 MiB) = 3 chunks, the last 0.5 MiB.
    let bytes = content(2 * MIB + MIB / 2);
    let sends = (1..=3).map(|number| {
        let start = (number - 1) * MIB;
        let data = bytes[start..(start + MIB).min(bytes.len())].to_vec();
        let query = [
            ("upload_token", token.clone()),
            ("flowChunkNumber", number.to_string()),
            ("flowChunkSize", MIB.to_string()),
            ("flowCurrentChunkSize", data.len().to_string()),
            ("flowTotalSize", bytes.len().to_string()),
            ("flowIdentifier", "flow-file".to_owned()),
            ("flowFilename", "flow.mp4".to_owned()),
        ];
        let url = url::Url::parse_with_params(&f.url(REDEEM_UPLOAD), &query).unwrap();
        let request = f.http.post(url).header("content-type", "application/octet-stream").body(data);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    // One chunk completes the file; one stored while the rest were on
    // their way waits for the outcome and answers it too.
    let completions: Vec<&String> = answers.iter().filter(|a| a.as_str() != "ok").collect();
    assert!(!completions.is_empty(), "{answers:?}");
    assert!(completions.iter().all(|a| a == &completions[0]), "one outcome: {answers:?}");
    let url = url::Url::parse(completions[0]).unwrap();
    let photo_id = url.query_pairs().find(|(n, _)| n == "photo_id").map(|(_, v)| v.into_owned()).unwrap();
    let photo = f.photo_of(&photo_id).await;
    assert_eq!(photo.metadata.title.as_deref(), Some("Chunked"));
    let version = &photo.current_version().file;
    assert!(f.object_bytes(&version.object_key).await.as_deref() == Some(&bytes[..]), "byte for byte");
    let status = f.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (1, 0));
}

#[tokio::test]
async fn chunks_of_five_mib_and_more_are_parts_of_their_own() {
    let f = PhotoApp::new().await;
    let token = f.token(&[]).await;
    // 11 MiB + 5 bytes in 5 MiB chunks (floor): 5 MiB, then 6 MiB + 5.
    let chunk = 5 * MIB;
    let bytes = content(11 * MIB + 5);
    assert_eq!(send_chunk(&f, &token, &bytes, 2, chunk).await.text().await.unwrap(), "ok");
    let done = send_chunk(&f, &token, &bytes, 1, chunk).await;
    assert_eq!((done.status().as_u16(), done.text().await.unwrap()), (200, "OK\n".to_owned()));
    let version = f.photo().await.current_version().file.clone();
    assert!(f.object_bytes(&version.object_key).await.as_deref() == Some(&bytes[..]), "byte for byte");
    assert_eq!(f.stored_objects().await.len(), 2, "nothing staged or open remains");
}

#[tokio::test]
async fn a_refused_type_cancels_the_file_and_every_later_chunk_is_told_the_same() {
    let app = spawn_app_with(|c| {
        c.limits.allowed_media_types = MediaTypes::parse(&["image/*".to_owned()]).unwrap()
    })
    .await;
    let f = PhotoApp::with_first_version(app, [JPEG_SIGNATURE, b"the first version"].concat()).await;
    let token = f.token(&[]).await;
    let bytes = content(3 * MIB);
    assert_eq!(send_chunk(&f, &token, &bytes, 3, MIB).await.status(), 200);
    let refused = send_chunk(&f, &token, &bytes, 1, MIB).await;
    assert_eq!(refused.status(), 415, "permanent for both libraries");
    let reason = refused.text().await.unwrap();
    assert!(reason.contains("not an accepted kind of file"), "{reason}");
    for number in [2, 3] {
        let later = send_chunk(&f, &token, &bytes, number, MIB).await;
        assert_eq!((later.status().as_u16(), later.text().await.unwrap()), (415, reason.clone()));
    }
    let status = f.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (0, 0), "the slot is back");
    // Its staged bytes go at once (on a clean-up task).
    f.wait_for_stored_objects(1).await;
}

#[tokio::test]
async fn a_chunk_that_disagrees_with_the_first_is_refused_and_cancels_nothing() {
    let f = PhotoApp::new().await;
    let token = f.token(&[]).await;
    let bytes = content(3 * MIB);
    assert_eq!(send_chunk(&f, &token, &bytes, 1, MIB).await.status(), 200);
    let mut params = resumable(2, MIB, 4 * MIB, MIB);
    params.retain(|(n, _)| n != "resumableIdentifier");
    params.push(("resumableIdentifier".into(), format!("{}-clipmp4", 3 * MIB)));
    let other_total = multipart_chunk(&f, &token, &params, piece(&bytes, 2, MIB)).send().await.unwrap();
    assert_eq!(other_total.status(), 500);
    assert!(other_total.text().await.unwrap().contains("total size"));
    params = resumable(2, MIB, 3 * MIB, MIB);
    params.retain(|(n, _)| n != "resumableFilename");
    params.push(("resumableFilename".into(), "other.mp4".into()));
    let other_name = multipart_chunk(&f, &token, &params, piece(&bytes, 2, MIB)).send().await.unwrap();
    assert_eq!(other_name.status(), 500);
    for number in [2, 3] {
        assert_eq!(send_chunk(&f, &token, &bytes, number, MIB).await.status(), 200);
    }
    let version = f.photo().await.current_version().file.clone();
    assert!(f.object_bytes(&version.object_key).await.as_deref() == Some(&bytes[..]), "byte for byte");
}

#[tokio::test]
async fn an_abandoned_file_gives_its_slot_back_and_the_sweep_removes_its_bytes() {
    let f = PhotoApp::with(|c| {
        c.limits.chunked_idle_timeout_secs = 2;
        c.state.slot_lease_secs = 3;
        c.storage.sweep_interval_secs = 1;
    })
    .await;
    let token = f.token(&[]).await;
    let bytes = content(3 * MIB);
    assert_eq!(send_chunk(&f, &token, &bytes, 2, MIB).await.status(), 200);
    let status = f.token_status(&token).await;
    assert_eq!(status.uploads_in_flight, 1, "{status:?} at {}", unix_now());
    assert!(f.stored_objects().await.len() > 1, "the original and the staged chunk");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while f.stored_objects().await.len() != 1 {
        assert!(std::time::Instant::now() < deadline, "left: {:?}", f.stored_objects().await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(f.token_status(&token).await.uploads_in_flight, 0, "the slot is back");
    f.wait_for_metric("upload_receiver_chunked_files_total{result=\"abandoned\"}", 1.0).await;
    // A chunk now begins the file anew; the whole file still arrives.
    for number in [1, 2, 3] {
        assert_eq!(send_chunk(&f, &token, &bytes, number, MIB).await.status(), 200);
    }
    assert_eq!(f.uploads_used(&token).await, 1);
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
    f.wait_for_stored_objects(1).await;
}
