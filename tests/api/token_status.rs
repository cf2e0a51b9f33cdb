//! `/api/photo/get-token-status`: a token's terms and counts, its files in
//! progress, and each upload that ended with the delivery of its callback
//! and webhook, in XML and JSON.

use std::time::{Duration, Instant};

use upload_receiver::auth::credentials::Secret;
use upload_receiver::config::MediaTypes;

use crate::chunk_client::*;
use crate::common::*;
use crate::site::Site;

const STATUS: &str = "/api/photo/get-token-status";

async fn status_json(f: &TestApp, params: &[(&str, &str)]) -> serde_json::Value {
    let mut all = params.to_vec();
    all.extend([("format", "json"), ("raw", "1")]);
    let body = f.call(STATUS, &all).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(json["status"], "ok", "{json}");
    json["tokenstatus"].clone()
}

#[tokio::test]
async fn a_tokens_status_shows_its_counts_files_in_progress_and_each_outcome_with_its_deliveries() {
    let site = Site::start().await;
    let app = spawn_app_with(|c| {
        c.callback.allowed_hosts = vec!["127.0.0.1".into()];
        c.callback.retry_initial_delay_secs = 1;
        c.webhook.url = Some(site.url("/hook"));
        c.webhook.secret = Some(Secret::new("webhook-secret-0123456789"));
        c.limits.allowed_media_types = MediaTypes::parse(&["image/*".to_owned()]).unwrap();
    })
    .await;
    let f = PhotoApp::with_first_version(app, [JPEG_SIGNATURE, b"first"].concat()).await;
    let params = [
        ("return_url", site.url("/fail-twice")),
        ("background_return_p", "1".into()),
        ("max_uploads", "3".into()),
    ];
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let token = f.token(&params).await;

    // One upload stored (its callback fails twice, then succeeds), one
    // refused, one file in progress (1 of 3 chunks).
    assert!(
        f.redeem(&token, &[JPEG_SIGNATURE, b"second"].concat(), &[])
            .await
            .text()
            .await
            .unwrap()
            .starts_with("ok ")
    );
    assert!(f.redeem(&token, b"not a picture", &[]).await.text().await.unwrap().starts_with("error "));
    // Exactly 3 MiB: both sizings cut it in three, so its count is known.
    let bytes = [JPEG_SIGNATURE, &content(3 * MIB - JPEG_SIGNATURE.len())].concat();
    assert_eq!(send_chunk(&f, &token, &bytes, 1, MIB).await.status(), 200);

    let status = status_json(&f, &[("replace_token", &token)]).await;
    assert_eq!(status["replace_token"], token.as_str());
    assert_eq!(
        (
            &status["max_uploads"],
            &status["uploads_used"],
            &status["uploads_in_flight"],
            &status["uploads_left"]
        ),
        (&"3".into(), &"1".into(), &"1".into(), &"1".into())
    );
    assert_eq!(status["background_return_p"], "1");
    assert_eq!(status["return_url"], site.url("/fail-twice").as_str());
    let files = status["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{status}");
    assert_eq!(files[0]["identifier"], format!("{}-clipmp4", bytes.len()).as_str());
    assert_eq!(
        (&files[0]["chunks_received"], &files[0]["total_chunks"], &files[0]["bytes_received"]),
        (&"1".into(), &"3".into(), &MIB.to_string().into())
    );
    assert_eq!(files[0]["total_size"], bytes.len().to_string().as_str());
    let uploads = status["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 2, "{status}");
    let (stored, refused) = (&uploads[0], &uploads[1]);
    assert_eq!(
        (&stored["outcome"], &stored["photo_id"], &stored["version"]),
        (&"succeeded".into(), &f.photo_id.as_str().into(), &"2".into())
    );
    assert_eq!(refused["outcome"], "failed");
    assert!(refused["error_message"].as_str().unwrap().contains("not an accepted kind of file"), "{refused}");
    assert_eq!(stored["callback"], "pending", "its first attempt was answered 503: {stored}");
    assert_eq!(stored["callback_attempts"], "1");
    assert!(stored["callback_last_error"].as_str().unwrap().contains("503"), "{stored}");

    // Later: both callbacks (each answered 503 once, the site failing its
    // first two requests) delivered on their second attempt, and both
    // webhook events on their first.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = status_json(&f, &[("replace_token", &token)]).await;
        let uploads = status["uploads"].as_array().unwrap().clone();
        if uploads.iter().all(|u| u["callback"] == "delivered" && u["webhook"] == "delivered") {
            for upload in &uploads {
                assert_eq!(
                    (&upload["callback_attempts"], &upload["callback_last_error"]),
                    (&"2".into(), &"".into())
                );
                assert_eq!(upload["webhook_attempts"], "1");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // XML too; unknown or misnamed tokens are invalid_input.
    let xml = f.call(STATUS, &[("replace_token", &token)]).await;
    assert_ok(&xml);
    assert!(
        xml.contains("<uploads_used>1</uploads_used>") && xml.contains("<upload>") && xml.contains("<file>"),
        "{xml}"
    );
    let unknown = f.call(STATUS, &[("replace_token", &"0".repeat(40))]).await;
    assert!(assert_error(&unknown, "invalid_input").contains("unknown"));
    assert_error(&f.call(STATUS, &[("upload_token", &token)]).await, "invalid_input");
    assert_error(&f.call(STATUS, &[]).await, "invalid_input");
}
