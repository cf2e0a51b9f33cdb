//! Upload tokens through HTTP: get-upload-token's parameter rules and
//! formats, redeem-upload-token creating new photos (slots, answers,
//! callbacks), update-upload-token before and after a redeem, read back
//! through `photo/list`.

use serde_json::Value;

use crate::common::*;
use upload_receiver::domain::Permission;

const LIST: &str = "/api/photo/list";

/// The JSON object of a `format=json&raw` answer.
async fn json_answer(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Value {
    let mut all = params.to_vec();
    all.extend([("format", "json"), ("raw", "1")]);
    serde_json::from_str(&app.call(path, &all).await).unwrap()
}

/// The query parameters of a redirect's `Location`.
fn location_params(response: &reqwest::Response) -> Vec<(String, String)> {
    let location = response.headers()["location"].to_str().unwrap();
    url::Url::parse(location).unwrap().query_pairs().into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Calls update-upload-token unsigned (its permission is `none`).
async fn update(app: &TestApp, params: &[(&str, &str)]) -> String {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let request = app.http.post(app.url(UPDATE_UPLOAD_TOKEN));
    let response = request.header("content-type", "application/x-www-form-urlencoded").body(body);
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_token_answer_has_every_field_of_the_page_in_xml_and_json() {
    let app = spawn_app().await;
    let params = [
        ("return_url", "http://www.example.com/upload/callback?theme=green"),
        ("title", "A title for the new upload"),
        ("description", "... and a preliminary description"),
        ("tags", "product:1234, testimonial"),
        ("publish", "1"),
        ("valid_minutes", "60"),
        ("max_uploads", "3"),
    ];
    let before = unix_now();
    let body = app.call(GET_UPLOAD_TOKEN, &params).await;
    assert_ok(&body);
    assert_eq!(xml_attribute(&body, "message").as_deref(), Some("The upload token is ready to use"));
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix('<'))
        .filter_map(|l| l.split(['>', ' ']).next())
        .filter(|n| !n.starts_with(['?', '/']) && *n != "response")
        .collect();
    assert_eq!(
        names,
        [
            "upload_token",
            "title",
            "description",
            "publish",
            "tags",
            "user_id",
            "album_id",
            "max_uploads",
            "valid_minutes",
            "valid_until",
            "return_url"
        ],
        "the page's fields, in its order: {body}"
    );
    let token = xml_field(&body, "upload_token").unwrap();
    assert!(token.len() == 40 && token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(xml_field(&body, "title").as_deref(), Some("A title for the new upload"));
    assert_eq!(xml_field(&body, "tags").as_deref(), Some("product:1234, testimonial"));
    assert_eq!(xml_field(&body, "max_uploads").as_deref(), Some("3"));
    assert_eq!(xml_field(&body, "valid_minutes").as_deref(), Some("60"));
    let valid_until: u64 = xml_field(&body, "valid_until").unwrap().parse().unwrap();
    assert!((before + 3600..=unix_now() + 3600).contains(&valid_until));
    assert_eq!(xml_field(&body, "user_id").as_deref(), Some(""));

    let json = json_answer(&app, GET_UPLOAD_TOKEN, &params).await;
    assert_eq!(json["status"], "ok");
    assert_eq!(json["endpoint"], "/api/photo/get-upload-token");
    let object = json["uploadtoken"].as_object().expect("the token under `uploadtoken`");
    for name in ["upload_token", "title", "description", "publish", "tags", "user_id", "album_id"] {
        assert!(object[name].is_string(), "{name} is a string: {json}");
    }
    for name in ["max_uploads", "valid_minutes", "valid_until", "return_url"] {
        assert!(object[name].is_string(), "{name} is a string: {json}");
    }
    assert_eq!(object["max_uploads"], "3");
    assert_eq!(object["publish"], "1");
}

#[tokio::test]
async fn each_parameter_follows_its_rule() {
    let app = spawn_app().await;
    let field = async |params: &[(&str, &str)], name: &str| {
        let body = app.call(GET_UPLOAD_TOKEN, params).await;
        assert_ok(&body);
        xml_field(&body, name).unwrap()
    };
    assert_eq!(field(&[], "valid_minutes").await, "180");
    assert_eq!(field(&[], "max_uploads").await, "1");
    assert_eq!(field(&[], "publish").await, "1");
    assert_eq!(field(&[("valid_minutes", "1")], "valid_minutes").await, "15");
    assert_eq!(field(&[("valid_minutes", "99999")], "valid_minutes").await, "1440");
    assert_eq!(field(&[("max_uploads", "0")], "max_uploads").await, "1");
    assert_eq!(field(&[("max_uploads", "5000")], "max_uploads").await, "100");
    assert_eq!(field(&[("publish", "0")], "publish").await, "0");
    assert_eq!(field(&[("album_id", "12,34")], "album_id").await, "12,34");
    for bad in [
        ("valid_minutes", "1.5"),
        ("max_uploads", "ten"),
        ("publish", "yes"),
        ("background_return_p", "2"),
        ("album_id", "<b>1</b>"),
        ("absolute_url", "/relative/path"),
        ("absolute_url", "ftp://example.com/x"),
        ("absolute_url", "http://user:pw@example.com/"),
        ("return_url", "javascript:alert(1)"),
    ] {
        let body = app.call(GET_UPLOAD_TOKEN, &[bad]).await;
        let message = assert_error(&body, "invalid_input");
        assert!(message.contains(bad.0), "{bad:?}: {message}");
    }
    assert_ok(&app.call(GET_UPLOAD_TOKEN, &[("absolute_url", "https://example.com/videos/7")]).await);
    // Every method needs `write`: a `read` caller is refused.
    let reader = credential("reader", Permission::Read);
    let body = app.call_as(&reader, GET_UPLOAD_TOKEN, &[], Placement::Header).await;
    assert!(assert_error(&body, "permission_denied").contains("write"), "{body}");
}

#[tokio::test]
async fn user_id_is_refused_to_a_write_caller_and_kept_for_super() {
    let app = spawn_app().await;
    let body = app.call(GET_UPLOAD_TOKEN, &[("user_id", "17488")]).await;
    let message = assert_error(&body, "permission_denied");
    assert!(message.contains("super"), "names the level: {message}");
    let superuser = credential("super", Permission::Super);
    let body = app.call_as(&superuser, GET_UPLOAD_TOKEN, &[("user_id", "17488")], Placement::Header).await;
    assert_ok(&body);
    assert_eq!(xml_field(&body, "user_id").as_deref(), Some("17488"));
    let token = xml_field(&body, "upload_token").unwrap();
    assert_eq!(app.redeem_upload(&token, b"by the user", &[]).await.status(), 200);
    let status = app.token_status(&token).await;
    assert_eq!(status.uploads_used, 1);
    let bad = app.call_as(&superuser, GET_UPLOAD_TOKEN, &[("user_id", "x")], Placement::Header).await;
    assert_error(&bad, "invalid_input");
}

#[tokio::test]
async fn a_redeem_creates_a_new_photo_with_the_tokens_metadata_and_tells_the_site() {
    let app = spawn_app().await;
    let token = app
        .upload_token(&[
            ("return_url", "http://www.example.com/done?theme=green"),
            ("title", "<b>Launch</b> video<script>alert(1)</script>"),
            ("description", "<p>Our <i>new</i> product</p>"),
            ("tags", "launch product"),
            ("publish", "0"),
            ("album_id", "42"),
            ("campaign", "spring"),
        ])
        .await;
    let content = b"the new video's bytes".to_vec();
    let response = app.redeem_upload(&token, &content, &[("note", "from the form")]).await;
    assert_eq!(response.status(), 303);
    let params = location_params(&response);
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["theme", "domain", "upload_token", "photo_id", "tree_id", "token", "campaign", "note"],
        "the URL's own query, then ours, the token's extras, the request's"
    );
    assert_eq!(param(&params, "upload_token"), Some(token.as_str()));
    assert_eq!(param(&params, "domain"), Some("videos.example.com"));
    let photo_id = param(&params, "photo_id").unwrap().to_owned();
    let photo = app.photo(&photo_id).await;
    assert_eq!(param(&params, "token"), Some(photo.token.as_str()));
    assert_eq!(param(&params, "tree_id"), Some(photo.tree_id.as_str()));
    assert_eq!(photo.versions.len(), 1, "a new photo, with its first version");
    assert_eq!(app.object_bytes(&photo.current_version().file.object_key).await, Some(content));
    let metadata = &photo.metadata;
    assert_eq!(metadata.title.as_deref(), Some("Launch video"));
    assert_eq!(metadata.description.as_deref(), Some("<p>Our <i>new</i> product</p>"));
    assert_eq!(metadata.tags.as_deref(), Some("launch product"));
    assert!(!metadata.publish);
    assert_eq!(metadata.album_id.as_deref(), Some("42"));
    assert_eq!(app.uploads_used(&token).await, 1);

    // The token had one upload.
    let again = app.redeem_upload(&token, b"another", &[]).await;
    assert_eq!(again.status(), 404);
    assert_eq!(again.text().await.unwrap(), "The upload token has no uploads left.\n");
}

#[tokio::test]
async fn the_tokens_extras_win_over_the_requests_and_neither_replaces_the_receivers() {
    let app = spawn_app().await;
    let token = app
        .upload_token(&[
            ("return_url", "http://www.example.com/done"),
            ("account", "site-set"),
            ("upload_token", "0000000000000000000000000000000000000000"),
        ])
        .await;
    let response = app.redeem_upload(&token, b"x", &[("account", "visitor-set"), ("photo_id", "999")]).await;
    assert_eq!(response.status(), 303);
    let params = location_params(&response);
    let values =
        |name: &str| params.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    assert_eq!(values("account"), ["site-set"], "the site's value, once");
    assert_eq!(values("upload_token"), [token], "the real token, once");
    assert_eq!(values("photo_id").len(), 1);
    assert_ne!(values("photo_id")[0], "999");
}

#[tokio::test]
async fn tokens_of_one_kind_are_unknown_to_the_other_kinds_methods() {
    let app = PhotoApp::new().await;
    let replace = app.token(&[]).await;
    let upload = app.upload_token(&[]).await;
    let response = app.redeem_upload(&replace, b"x", &[]).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.unwrap(), "The upload token is unknown or has expired.\n");
    let response = app.redeem(&upload, b"x", &[]).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.unwrap(), "The replace token is unknown or has expired.\n");
    assert_eq!((app.uploads_used(&replace).await, app.uploads_used(&upload).await), (0, 0));
    assert_error(&update(&app, &[("upload_token", &replace), ("title", "x")]).await, "invalid_input");
    let missing =
        app.http.post(app.url(REDEEM_UPLOAD)).multipart(reqwest::multipart::Form::new().text("x", "y"));
    let response = missing.send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.text().await.unwrap(), "No upload_token was given.\n");
}

#[tokio::test]
async fn a_hundred_concurrent_redeems_of_a_three_upload_token_make_exactly_three_photos() {
    // All hundred are received at once: none is turned away as busy.
    let app = spawn_app_with(|c| c.limits.max_concurrent_uploads = 128).await;
    let token = app.upload_token(&[("max_uploads", "3"), ("title", "one of three")]).await;
    let attempts = (0..100).map(|i| {
        let (app, token) = (TestApp::handle_of(&app), token.clone());
        tokio::spawn(async move {
            let response = app.redeem_upload(&token, format!("file {i}").as_bytes(), &[]).await;
            response.status().as_u16()
        })
    });
    let statuses: Vec<u16> =
        futures_util::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 404].contains(s)), "{statuses:?}");
    assert_eq!(app.uploads_used(&token).await, 3);
    // Photo ids are 1, 2, 3, … in both stores: exactly three exist.
    let body = app.call(LIST, &[("photo_id", "1,2,3,4,5")]).await;
    assert_eq!(body.matches("<photo>").count(), 3, "{body}");
    assert_eq!(body.matches("<title>one of three</title>").count(), 3, "{body}");
}

#[tokio::test]
async fn an_update_changes_photos_already_made_and_files_still_to_come() {
    let app = spawn_app().await;
    let token = app.upload_token(&[("max_uploads", "2"), ("title", "Draft"), ("tags", "a")]).await;
    assert_eq!(app.redeem_upload(&token, b"first", &[]).await.status(), 200);
    let body = update(&app, &[("upload_token", &token), ("title", "<i>Final</i>"), ("publish", "0")]).await;
    assert_ok(&body);
    assert_eq!(xml_attribute(&body, "message").as_deref(), Some("The token information was updated"));
    assert_eq!(app.redeem_upload(&token, b"second", &[]).await.status(), 200);

    let json = json_answer(&app, LIST, &[("photo_id", "1,2")]).await;
    let photos = json["photos"].as_array().unwrap();
    assert_eq!(photos.len(), 2, "{json}");
    for photo in photos {
        assert_eq!(photo["title"], "Final", "{photo}");
        assert_eq!(photo["publish"], "0", "{photo}");
        assert_eq!(photo["tags"], "a", "fields not given keep their value: {photo}");
    }
    let json = json_answer(&app, UPDATE_UPLOAD_TOKEN, &[("upload_token", &token)]).await;
    assert_eq!(json["photo"], serde_json::json!({}), "{json}");
}

#[tokio::test]
async fn an_update_for_one_file_changes_that_file_only() {
    let app = spawn_app().await;
    let token = app.upload_token(&[("max_uploads", "3"), ("title", "Everyone's")]).await;
    let body =
        update(&app, &[("upload_token", &token), ("resumableIdentifier", "123-a.mp4"), ("title", "Mine")])
            .await;
    assert_ok(&body);
    let mine = app.redeem_upload(&token, b"a", &[("resumableIdentifier", "123-a.mp4")]).await;
    assert_eq!(mine.status(), 200);
    assert_eq!(app.redeem_upload(&token, b"b", &[("resumableIdentifier", "456-b.mp4")]).await.status(), 200);
    let title = async |id: &str| app.photo(id).await.record.metadata.title;
    assert_eq!(title("1").await.as_deref(), Some("Mine"));
    assert_eq!(title("2").await.as_deref(), Some("Everyone's"));
    // After the upload, an update for that file changes its photo alone.
    let body =
        update(&app, &[("upload_token", &token), ("resumableIdentifier", "456-b.mp4"), ("tags", "b")]).await;
    assert_ok(&body);
    assert_eq!(app.photo("2").await.metadata.tags.as_deref(), Some("b"));
    assert_eq!(app.photo("1").await.metadata.tags, None);
}

#[tokio::test]
async fn an_unknown_or_expired_token_cannot_be_updated() {
    let app = spawn_app().await;
    for token in ["", "nonsense", &"0".repeat(40)] {
        let body = update(&app, &[("upload_token", token), ("title", "x")]).await;
        assert!(assert_error(&body, "invalid_input").contains("upload_token"), "{body}");
    }
    let token = app.upload_token(&[("valid_minutes", "15")]).await;
    assert_ok(&update(&app, &[("upload_token", &token), ("title", "x")]).await);
    let body = update(&app, &[("upload_token", &token), ("publish", "maybe")]).await;
    assert!(assert_error(&body, "invalid_input").contains("publish"), "{body}");
}

#[tokio::test]
async fn oversized_metadata_is_refused_with_its_limit_and_stores_nothing() {
    // Under the form limit, so that this limit is the one met.
    let app = spawn_app_with(|c| c.limits.max_description_bytes = 30_000).await;
    let title = "t".repeat(2000);
    let message = assert_error(&app.call(GET_UPLOAD_TOKEN, &[("title", &title)]).await, "invalid_input");
    assert!(message.contains("limits.max_title_bytes"), "{message}");
    // Sent as a signed form body, as a site's backend would post them.
    let refused = async |name: &str, value: &str| {
        let signing = Signing::default();
        let request = app.signed_request(
            &app.writer.clone(),
            GET_UPLOAD_TOKEN,
            &[(name, value)],
            Placement::Form,
            &signing,
        );
        assert_error(&request.send().await.unwrap().text().await.unwrap(), "invalid_input")
    };
    for (name, value, limit) in [
        ("title", "t".repeat(1024 * 1024), "limits.max_form_bytes"),
        ("tags", "t ".repeat(10_000), "limits.max_tags"),
        ("note", "x".repeat(20_000), "limits.max_upload_token_bytes"),
        ("description", "d".repeat(70_000), "limits.max_form_bytes"),
        ("description", "d".repeat(40_000), "limits.max_description_bytes"),
    ] {
        let message = refused(name, &value).await;
        assert!(message.contains(limit), "{name} of {} bytes names {limit}: {message}", value.len());
    }
    assert_eq!(app.running.as_ref().unwrap().inspect().photo("1".parse().unwrap()).await.unwrap(), None);
}

#[tokio::test]
async fn markup_in_metadata_is_never_reflected_unescaped() {
    let app = spawn_app().await;
    let hostile = r#"<img src=x onerror=alert(1)>"'&<b>"#;
    let token = app
        .upload_token(&[
            ("return_url", "http://www.example.com/done"),
            ("title", hostile),
            ("description", hostile),
            ("tags", hostile),
            ("extra", hostile),
        ])
        .await;
    // XML: the title is text; the description lost all HTML (an <img>).
    let body = app.call(GET_UPLOAD_TOKEN, &[("title", hostile), ("description", hostile)]).await;
    assert!(!body.contains("<img") && !body.contains("<b>"), "{body}");
    assert!(body.contains("<title>&quot;&apos;&amp;</title>"), "escaped text: {body}");
    // JSONP: nothing that could close a script or open a tag.
    let mut params = vec![("title", hostile), ("description", hostile)];
    params.extend([("format", "json"), ("callback", "done")]);
    let jsonp = app.call(GET_UPLOAD_TOKEN, &params).await;
    assert!(!jsonp.contains('<') && !jsonp.contains('>'), "{jsonp}");
    // The auto-POST form and the redirect escape what they repeat.
    let long = "l".repeat(1600);
    let response = app.redeem_upload(&token, b"x", &[("pad", &long), ("more", hostile)]).await;
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("upload_token"), "{page}");
    assert!(!page.contains("<img") && !page.contains("<b>"), "{page}");
    let photo = app.photo("1").await;
    assert_eq!(photo.metadata.title.as_deref(), Some(r#""'&"#));
    assert_eq!(photo.metadata.description.as_deref(), Some(r#""'&amp;"#));
}

#[tokio::test]
async fn a_background_return_reports_the_new_photo_in_the_ok_line() {
    let site = crate::site::Site::start().await;
    let app = spawn_app_with(|c| c.callback.allowed_hosts = vec!["127.0.0.1".into()]).await;
    let return_url = site.url("/cb");
    let token = app.upload_token(&[("return_url", &return_url), ("background_return_p", "1")]).await;
    let response = app.redeem_upload(&token, b"bytes", &[]).await;
    assert_eq!(response.status(), 200);
    let line = response.text().await.unwrap();
    let words: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(words[..2], ["ok", "videos.example.com"], "{line}");
    let photo = app.photo(words[3]).await;
    assert_eq!(words[2], photo.tree_id);
    assert_eq!(words[4], photo.token.as_str());
    let request = site.requests().pop().expect("the site was called");
    assert_eq!(request.param("upload_token").as_deref(), Some(token.as_str()), "{request:?}");
    assert_eq!(request.param("photo_id").as_deref(), Some(words[3]), "{request:?}");
}

#[tokio::test]
async fn a_file_identifier_breaking_its_rule_is_refused_and_gives_the_slot_back() {
    let app = spawn_app().await;
    let token = app.upload_token(&[("max_uploads", "1")]).await;
    let long = "i".repeat(256);
    let response = app.redeem_upload(&token, b"x", &[("resumableIdentifier", &long)]).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("resumableIdentifier"));
    let status = app.token_status(&token).await;
    assert_eq!((status.uploads_used, status.uploads_in_flight), (0, 0), "the slot is back");
    assert_eq!(app.stored_objects().await, Vec::<String>::new(), "nothing left behind");
    let body =
        update(&app, &[("upload_token", &token), ("resumableIdentifier", &long), ("title", "x")]).await;
    assert!(assert_error(&body, "invalid_input").contains("resumableIdentifier"), "{body}");
    assert_eq!(app.redeem_upload(&token, b"x", &[("resumableIdentifier", "123-ok.mp4")]).await.status(), 200);
}
