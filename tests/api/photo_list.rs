//! `/api/photo/list`: what was stored, read back through the API.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;
use upload_receiver::domain::Permission;

const LIST: &str = "/api/photo/list";

/// The text of every `<name>…</name>` inside `body`, in order.
fn xml_fields(body: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    body.split(&open).skip(1).map(|rest| rest[..rest.find(&close).unwrap()].to_owned()).collect()
}

/// The `<photo>…</photo>` blocks of an XML answer.
fn photo_blocks(body: &str) -> Vec<String> {
    xml_fields(body, "photo")
}

#[tokio::test]
async fn a_photo_is_listed_with_every_version_oldest_first_as_stored() {
    let app = spawn_app().await;
    let mut first = JPEG_SIGNATURE.to_vec();
    first.extend(b"the first version");
    let photo_id = app.upload_photo(first.clone()).await;
    let token = app.replace_token(&photo_id, &[("return_url", "http://www.example.com/done")]).await;
    let second = b"the second version, by redeem".to_vec();
    assert_eq!(app.redeem(&token, &second, &[]).await.status(), 303);

    let body = app.call(LIST, &[("photo_id", &photo_id)]).await;
    assert_ok(&body);
    let photos = photo_blocks(&body);
    assert_eq!(photos.len(), 1, "{body}");
    let photo = &photos[0];
    for (name, expected) in [
        ("photo_id", photo_id.as_str()),
        ("tree_id", "1"),
        ("title", "A photo"),
        ("description", ""),
        ("tags", ""),
        ("publish", "1"),
        ("album_id", ""),
    ] {
        assert_eq!(xml_field(photo, name).as_deref(), Some(expected), "{name} in {photo}");
    }
    let stored = app.photo(&photo_id).await;
    let versions = xml_fields(photo, "version");
    assert_eq!(versions.len(), 2, "{photo}");
    for ((listed, content), kept) in versions.iter().zip([&first, &second]).zip(&stored.versions) {
        let field = |name: &str| xml_field(listed, name).unwrap_or_else(|| panic!("no {name} in {listed}"));
        assert_eq!(field("number"), kept.number.to_string());
        assert_eq!(field("object_key"), kept.file.object_key);
        assert_eq!(
            app.object_bytes(&field("object_key")).await.as_ref(),
            Some(content),
            "the key holds the bytes"
        );
        assert_eq!(field("size"), content.len().to_string());
        assert_eq!(field("checksum"), format!("sha256:{}", hex::encode(Sha256::digest(content))));
        assert_eq!(field("created_at"), kept.file.created_at.to_string());
    }
    assert_eq!(
        xml_field(&versions[0], "content_type").as_deref(),
        Some("image/jpeg"),
        "sniffed from the bytes"
    );
    assert_eq!(xml_field(&versions[0], "number").as_deref(), Some("1"));
    assert_eq!(xml_field(&versions[1], "number").as_deref(), Some("2"));
}

#[tokio::test]
async fn several_ids_are_listed_once_each_in_order_and_unknown_ones_are_left_out() {
    let app = spawn_app().await;
    let a = app.upload_photo(b"a".to_vec()).await;
    let b = app.upload_photo(b"b".to_vec()).await;
    let named = format!("{b}, 999999, abc, ,{a},{b},0");
    let body = app.call(LIST, &[("photo_id", &named)]).await;
    assert_ok(&body);
    let ids: Vec<String> = photo_blocks(&body).iter().map(|p| xml_field(p, "photo_id").unwrap()).collect();
    assert_eq!(ids, [b, a]);
    let none = app.call(LIST, &[("photo_id", "999999")]).await;
    assert_ok(&none);
    assert!(photo_blocks(&none).is_empty(), "{none}");
    assert_ok(&app.call(LIST, &[]).await);
}

#[tokio::test]
async fn more_than_a_hundred_ids_are_refused_naming_the_limit() {
    let app = spawn_app().await;
    let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let body = app.call(LIST, &[("photo_id", &many.join(","))]).await;
    let message = assert_error(&body, "invalid_input");
    assert!(message.contains("100"), "{message}");
    let hundred = many[..100].join(",");
    assert_ok(&app.call(LIST, &[("photo_id", &hundred)]).await);
}

#[tokio::test]
async fn json_lists_photos_with_their_versions_every_scalar_a_string() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"json".to_vec()).await;
    let body = app.call(LIST, &[("photo_id", &photo_id), ("format", "json"), ("raw", "1")]).await;
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(answer["status"], "ok");
    let photos = answer["photos"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(photos.len(), 1);
    assert_eq!(photos[0]["photo_id"], photo_id.as_str());
    assert_eq!(photos[0]["publish"], "1");
    let versions = photos[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["number"], "1");
    assert_eq!(versions[0]["size"], "4");
    for (name, value) in photos[0].as_object().unwrap().iter().chain(versions[0].as_object().unwrap()) {
        assert!(value.is_string() || name == "versions", "{name} is {value}");
    }
}

#[tokio::test]
async fn listing_needs_the_read_level() {
    let app = spawn_app().await;
    let photo_id = app.upload_photo(b"x".to_vec()).await;
    let anonymous = text(app.http.get(app.url(&format!("{LIST}?photo_id={photo_id}")))).await;
    let message = assert_error(&anonymous, "permission_denied");
    assert!(message.contains("read"), "{message}");
    let reader = credential("reader", Permission::Read);
    let body = app.call_as(&reader, LIST, &[("photo_id", &photo_id)], Placement::Query).await;
    assert_eq!(photo_blocks(&body).len(), 1, "{body}");
}
