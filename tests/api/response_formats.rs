//! The 23 response envelope: XML by default, JSON as a script variable,
//! JSONP, raw JSON; errors in each; always HTTP 200.

use serde_json::Value;

use crate::common::GET_REPLACE_TOKEN as PATH;
use crate::common::*;

async fn get(app: &TestApp, params: &[(&str, &str)]) -> (String, String) {
    let writer = app.writer.clone();
    let response = app
        .signed_request(&writer, PATH, params, Placement::Header, &Signing::default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, response.text().await.unwrap())
}

fn json_between(body: &str, prefix: &str, suffix: &str) -> Value {
    let inner = body
        .trim_end()
        .strip_prefix(prefix)
        .and_then(|b| b.strip_suffix(suffix))
        .unwrap_or_else(|| panic!("{body}"));
    serde_json::from_str(inner).unwrap()
}

fn assert_every_scalar_is_a_string(value: &Value) {
    match value {
        Value::Object(map) => map.values().for_each(assert_every_scalar_is_a_string),
        Value::Array(items) => items.iter().for_each(assert_every_scalar_is_a_string),
        Value::String(_) => {}
        other => panic!("non-string scalar {other}"),
    }
}

#[tokio::test]
async fn xml_is_the_default_and_format_xml_is_the_same() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    for params in
        [vec![("photo_id", photo_id.as_str())], vec![("photo_id", photo_id.as_str()), ("format", "xml")]]
    {
        let (content_type, body) = get(&app, &params).await;
        assert!(content_type.starts_with("text/xml"), "{content_type}");
        assert!(
            body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response status=\"ok\""),
            "{body}"
        );
        assert_eq!(xml_attribute(&body, "cached").as_deref(), Some("0"));
        assert!(body.trim_end().ends_with("</response>"));
    }
}

#[tokio::test]
async fn json_is_a_visual_variable_with_the_full_envelope() {
    let app = spawn_app_with(|c| {
        c.site.site_id = "123456".into();
        c.site.site_name = "Example Video Site".into();
        c.site.product_key = "tube".into();
    })
    .await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let (content_type, body) = get(
        &app,
        &[
            ("photo_id", &photo_id),
            ("format", "json"),
            ("return_url", "http://www.example.com/cb?theme=green"),
        ],
    )
    .await;
    assert!(content_type.starts_with("text/javascript"), "{content_type}");
    let json = json_between(&body, "var visual = ", ";");
    assert_every_scalar_is_a_string(&json);
    assert_eq!(json["status"], "ok");
    assert_eq!(json["message"], "The replace token is ready to use");
    assert_eq!(json["permission_level"], "write");
    assert_eq!(json["cached"], "0");
    assert_eq!(json["p"], "1");
    assert_eq!(json["size"], "1");
    assert_eq!(json["endpoint"], PATH);
    assert_eq!(json["site"]["domain"], "videos.example.com");
    assert_eq!(json["site"]["site_id"], "123456");
    assert_eq!(json["site"]["site_name"], "Example Video Site");
    assert_eq!(json["site"]["product_key"], "tube");
    let token = &json["replacetoken"];
    assert_eq!(token["replace_token"].as_str().unwrap().len(), 40);
    assert_eq!(token["photo_id"], photo_id.as_str());
    assert_eq!(token["max_uploads"], "1");
    assert_eq!(token["valid_minutes"], "180");
    assert_eq!(token["return_url"], "http://www.example.com/cb?theme=green");
    assert!(token["valid_until"].as_str().unwrap().parse::<u64>().is_ok());
}

#[tokio::test]
async fn varname_callback_and_raw_change_the_wrapping() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let (_, body) = get(&app, &[("photo_id", &photo_id), ("format", "json"), ("varname", "tokens")]).await;
    assert_eq!(json_between(&body, "var tokens = ", ";")["status"], "ok");
    let (content_type, body) =
        get(&app, &[("photo_id", &photo_id), ("format", "json"), ("callback", "updateTokens")]).await;
    assert!(content_type.starts_with("text/javascript"));
    assert_eq!(json_between(&body, "updateTokens(", ");")["status"], "ok");
    let (content_type, body) = get(&app, &[("photo_id", &photo_id), ("format", "json"), ("raw", "")]).await;
    assert!(content_type.starts_with("application/json"), "{content_type}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "ok");
}

#[tokio::test]
async fn a_callback_that_is_not_an_identifier_is_refused_without_echoing_it() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    for evil in ["alert(1)//", "x;alert(1)", "</script><script>alert(1)</script>", "a b"] {
        let (_, body) = get(&app, &[("photo_id", &photo_id), ("format", "json"), ("callback", evil)]).await;
        assert!(!body.contains(evil), "{body}");
        let json = json_between(&body, "var visual = ", ";");
        assert_eq!(json["status"], "error");
        assert_eq!(json["code"], "invalid_input");
    }
}

#[tokio::test]
async fn errors_are_rendered_in_every_format() {
    let app = spawn_app().await;
    let (_, xml) = get(&app, &[("photo_id", "424242")]).await;
    assert!(xml.contains("<response status=\"error\" code=\"no_such_photo\""), "{xml}");
    assert_eq!(xml_attribute(&xml, "permission_level").as_deref(), Some("write"));
    assert!(xml.trim_end().ends_with("/>"));

    let (_, body) = get(&app, &[("photo_id", "424242"), ("format", "json")]).await;
    let json = json_between(&body, "var visual = ", ";");
    assert_every_scalar_is_a_string(&json);
    assert_eq!(json["status"], "error");
    assert_eq!(json["code"], "no_such_photo");
    assert_eq!(json["permission_level"], "write");
    assert_eq!(json["endpoint"], PATH);
    assert!(json["message"].as_str().unwrap().len() > 5);

    let (_, body) = get(&app, &[("photo_id", "424242"), ("format", "json"), ("callback", "cb")]).await;
    assert_eq!(json_between(&body, "cb(", ");")["code"], "no_such_photo");
    let (_, body) = get(&app, &[("photo_id", "424242"), ("format", "json"), ("raw", "1")]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "no_such_photo");
}

#[tokio::test]
async fn an_unknown_format_is_invalid_input() {
    let app = spawn_app().await;
    let (content_type, body) = get(&app, &[("photo_id", "1"), ("format", "yaml")]).await;
    assert!(content_type.starts_with("text/xml"));
    assert_error(&body, "invalid_input");
}

#[tokio::test]
async fn markup_in_values_is_escaped_in_xml_and_json() {
    let app = spawn_app().await;
    let writer = app.writer.clone();
    let evil = "<b>\"x\" & 'y'</b>";
    let body = app.call_as(&writer, "/api/echo", &[("note", evil)], Placement::Query).await;
    assert!(body.contains("<note>&lt;b&gt;&quot;x&quot; &amp; &apos;y&apos;&lt;/b&gt;</note>"), "{body}");
    assert_eq!(xml_field(&body, "note").as_deref(), Some(evil));
    let body =
        app.call_as(&writer, "/api/echo", &[("note", evil), ("format", "json")], Placement::Query).await;
    assert!(!body.contains("<b>"), "{body}");
    assert_eq!(json_between(&body, "var visual = ", ";")["echo"]["note"], evil);
}
