//! CORS on the methods pages call from scripts on their own origin: the
//! redeems and update-upload-token, refusals and errors included, and the
//! preflight; nothing for origins not listed or for the other methods.

use crate::common::*;

const SITE: &str = "https://www.example.com";

fn allow_origin(response: &reqwest::Response) -> Option<String> {
    response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn listed_origins_can_read_every_answer_of_the_redeems_and_the_update() {
    let f = PhotoApp::with(|c| c.server.cors_allowed_origins = vec![SITE.to_owned()]).await;
    let token = f.token(&[("return_url", "http://www.example.com/done")]).await;

    // The preflight Resumable.js's octet mode (and any custom header) causes.
    let preflight = f
        .http
        .request(reqwest::Method::OPTIONS, f.url(REDEEM))
        .header("origin", SITE)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-requested-with")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(allow_origin(&preflight).as_deref(), Some(SITE));
    let methods = preflight.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
    for method in ["GET", "POST", "PUT", "PATCH"] {
        assert!(methods.contains(method), "{methods}");
    }
    assert_eq!(preflight.headers()["access-control-allow-headers"], "content-type, x-requested-with");

    // A success, a plain-text refusal and an enveloped error all carry it.
    let ok = f.redeem_request(&token, b"x", &[]).header("origin", SITE).send().await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(allow_origin(&ok).as_deref(), Some(SITE));
    let refused = f.redeem_request(&"0".repeat(40), b"x", &[]).header("origin", SITE).send().await.unwrap();
    assert_eq!(refused.status(), 404);
    assert_eq!(allow_origin(&refused).as_deref(), Some(SITE));
    assert!(refused.headers()["vary"].to_str().unwrap().contains("Origin"));
    let upload =
        f.redeem_upload_request(&"0".repeat(40), b"x", &[]).header("origin", SITE).send().await.unwrap();
    assert_eq!(allow_origin(&upload).as_deref(), Some(SITE));
    let update = f.http.get(f.url(UPDATE_UPLOAD_TOKEN)).header("origin", SITE).send().await.unwrap();
    assert_eq!(allow_origin(&update).as_deref(), Some(SITE));
    assert_error(&update.text().await.unwrap(), "invalid_input");

    // Another origin, or another method, gets nothing.
    let elsewhere =
        f.redeem_request(&token, b"x", &[]).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(allow_origin(&elsewhere), None);
    let api = f.http.get(f.url(GET_REPLACE_TOKEN)).header("origin", SITE).send().await.unwrap();
    assert_eq!(allow_origin(&api), None, "the signed API is for servers");
}

#[tokio::test]
async fn without_origins_configured_no_cors_header_is_sent() {
    let f = PhotoApp::new().await;
    let response = f.redeem_request(&"0".repeat(40), b"x", &[]).header("origin", SITE).send().await.unwrap();
    assert_eq!(allow_origin(&response), None);
    let preflight =
        f.http.request(reqwest::Method::OPTIONS, f.url(REDEEM)).header("origin", SITE).send().await.unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(allow_origin(&preflight), None);
    assert!(preflight.headers().get("access-control-allow-methods").is_none());
}

#[tokio::test]
async fn an_origin_that_is_not_one_is_a_configuration_error_naming_the_key() {
    for bad in
        ["www.example.com", "https://www.example.com/path", "ftp://example.com", "https://example.com:443"]
    {
        let mut config = test_config();
        config.server.cors_allowed_origins = vec![bad.to_owned()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("server.cors_allowed_origins[0]"), "{bad}: {error}");
    }
    let mut config = test_config();
    config.server.cors_allowed_origins =
        vec!["*".to_owned(), "http://localhost:3000".to_owned(), "https://Site.Example/".to_owned()];
    config.validate().unwrap();
}
