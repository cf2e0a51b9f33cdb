//! The real upload libraries in real Chromium, from a page on the site's
//! own origin, sending to the receiver on another: Resumable.js and flow.js
//! with their defaults on a file of several chunks (and Resumable.js through
//! nginx to two instances on Redis and S3), and Uppy's XHR upload.

use crate::browser::{browser_dir, run_library_in_browser};
use crate::common::*;
use crate::processes;
use crate::site::Site;

/// 5 MiB + 123 bytes that are not text: five 1 MiB chunks (the last one
/// 1 MiB + 123) with the libraries' defaults.
fn clip() -> (tempfile::NamedTempFile, Vec<u8>) {
    let bytes: Vec<u8> =
        (0..5 * 1024 * 1024 + 123u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let file = tempfile::Builder::new().prefix("clip-").suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    (file, bytes)
}

/// The source of `library`, a file under `tests/browser/node_modules`.
fn installed(library: &str) -> String {
    let path = browser_dir().join("node_modules").join(library);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{} ({e}): scripts/test.sh installs it (npm ci in tests/browser)", path.display())
    })
}

/// Uppy as a site ships it: `tests/browser/uppy-entry.mjs` bundled by
/// esbuild (installed with the libraries) into one script.
fn uppy_bundle() -> String {
    let esbuild = browser_dir().join("node_modules/.bin/esbuild");
    let output = std::process::Command::new(&esbuild)
        .current_dir(browser_dir())
        .args(["uppy-entry.mjs", "--bundle", "--format=iife", "--log-level=warning"])
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}): scripts/test.sh installs it", esbuild.display()));
    assert!(output.status.success(), "esbuild: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A page that loads `source` (a library) and runs `setup`, which calls
/// `done(ok, message)` when the library reports the file done or failed;
/// the page sets `window.uploadResult` to `{ok, message, successes,
/// errors}` a moment after the first report, so that a second one counts.
fn library_page(source: &str, setup: &str) -> String {
    format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><script>{source}</script></head><body>
<input type="file" id="pick">
<script>
  window.counts = {{ successes: 0, errors: 0 }};
  const done = (ok, message) => {{
    window.counts[ok ? 'successes' : 'errors'] += 1;
    setTimeout(() => {{ window.uploadResult = {{ ok, message, ...window.counts }}; }}, 500);
  }};
{setup}
</script></body></html>"#
    )
}

/// A receiver that lets the site's origin call it, an upload token that
/// returns to the site, and the site.
async fn scene(title: &str) -> (TestApp, Site, String) {
    let site = Site::start().await;
    let origin = site.url("");
    let app =
        spawn_app_with(|c| c.server.cors_allowed_origins = vec![origin.trim_end_matches('/').to_owned()])
            .await;
    let token = app.upload_token(&[("return_url", &site.url("/done?theme=green")), ("title", title)]).await;
    (app, site, token)
}

/// The library ended in exactly one success and no error, with the return
/// URL as its message; the photo it names holds exactly `bytes`.
async fn assert_one_success_byte_for_byte(
    app: &TestApp,
    site: &Site,
    outcome: &serde_json::Value,
    bytes: &[u8],
    title: &str,
) {
    let shown: String = outcome.to_string().chars().take(2000).collect();
    let result = &outcome["result"];
    assert_eq!(
        (result["ok"].as_bool(), result["successes"].as_u64(), result["errors"].as_u64()),
        (Some(true), Some(1), Some(0)),
        "{shown}"
    );
    let message = result["message"].as_str().unwrap_or_default();
    let url = url::Url::parse(message).unwrap_or_else(|_| panic!("the return URL for the page: {shown}"));
    assert!(url.as_str().starts_with(&site.url("/done?theme=green")), "{url}");
    let photo_id =
        url.query_pairs().find(|(n, _)| n == "photo_id").map(|(_, v)| v.into_owned()).expect("photo_id");
    let photo = app.photo(&photo_id).await;
    assert_eq!(photo.metadata.title.as_deref(), Some(title));
    assert_eq!(photo.versions.len(), 1);
    let stored = app.object_bytes(&photo.current_version().file.object_key).await;
    assert!(stored.as_deref() == Some(bytes), "stored byte for byte ({} bytes sent)", bytes.len());
}

/// The statuses of the requests the page sent to the receiver.
fn statuses(outcome: &serde_json::Value) -> Vec<u64> {
    outcome["requests"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect()
}

/// The library's page as a site writes it: `class` (Resumable or Flow)
/// with its defaults and three chunks at once, posting to `target` with
/// `token`, starting on `start` (the event of a chosen file), reporting
/// fileSuccess and fileError.
fn chunking_page(library: &str, class: &str, start: &str, target: &str, token: &str) -> String {
    let setup = format!(
        r#"  const u = new {class}({{ target: {target}, query: {{ upload_token: {token} }}, simultaneousUploads: 3 }});
  u.assignBrowse(document.getElementById('pick'));
  u.on('{start}', () => u.upload());
  u.on('fileSuccess', (file, message) => done(true, message));
  u.on('fileError', (file, message) => done(false, message));"#,
        target = serde_json::json!(target),
        token = serde_json::json!(token),
    );
    library_page(&installed(library), &setup)
}

/// Resumable.js as a site loads it.
fn resumable_page(target: &str, token: &str) -> String {
    chunking_page("resumablejs/resumable.js", "Resumable", "fileAdded", target, token)
}

#[tokio::test]
async fn resumable_js_with_its_defaults_uploads_five_chunks_three_at_once_cross_origin() {
    let (app, site, token) = scene("Five chunks").await;
    site.set_form(resumable_page(&app.url(REDEEM_UPLOAD), &token));
    let (file, bytes) = clip();
    let outcome = run_library_in_browser(site.url("/form"), file.path().to_owned()).await;
    assert_one_success_byte_for_byte(&app, &site, &outcome, &bytes, "Five chunks").await;
    assert_eq!(app.uploads_used(&token).await, 1);
    // Five test GETs (204) and five chunks (200), none retried.
    let mut seen = statuses(&outcome);
    seen.sort_unstable();
    assert_eq!(seen, [200, 200, 200, 200, 200, 204, 204, 204, 204, 204], "{outcome}");
}

#[tokio::test]
async fn flow_js_with_its_defaults_uploads_five_chunks_three_at_once_cross_origin() {
    let (app, site, token) = scene("Flowed").await;
    let target = app.url(REDEEM_UPLOAD);
    site.set_form(chunking_page("@flowjs/flow.js/dist/flow.js", "Flow", "filesSubmitted", &target, &token));
    let (file, bytes) = clip();
    let outcome = run_library_in_browser(site.url("/form"), file.path().to_owned()).await;
    assert_one_success_byte_for_byte(&app, &site, &outcome, &bytes, "Flowed").await;
    assert_eq!(app.uploads_used(&token).await, 1);
    assert!(statuses(&outcome).iter().all(|s| [200, 204].contains(s)), "{outcome}");
}

#[tokio::test]
async fn uppy_xhr_upload_sends_the_file_in_one_request_cross_origin() {
    let site = Site::start().await;
    let origin = site.url("");
    let app =
        spawn_app_with(|c| c.server.cors_allowed_origins = vec![origin.trim_end_matches('/').to_owned()])
            .await;
    // No return_url: the answer is a plain `200 OK` Uppy can read.
    let token = app.upload_token(&[("title", "By Uppy")]).await;
    let setup = format!(
        r#"  const uppy = new Uppy({{ autoProceed: true, meta: {{ upload_token: {token} }} }});
  uppy.use(XHRUpload, {{
    endpoint: {target}, fieldName: 'file', formData: true, allowedMetaFields: ['upload_token'],
    getResponseData: (xhr) => ({{ text: xhr.responseText }}),
  }});
  document.getElementById('pick').addEventListener('change', (event) => {{
    for (const file of event.target.files) uppy.addFile({{ name: file.name, type: file.type, data: file }});
  }});
  uppy.on('upload-success', (file, response) => done(true, response.body.text));
  uppy.on('upload-error', (file, error) => done(false, String(error)));"#,
        target = serde_json::json!(app.url(REDEEM_UPLOAD)),
        token = serde_json::json!(token),
    );
    site.set_form(library_page(&uppy_bundle(), &setup));
    let (file, bytes) = clip();
    let outcome = run_library_in_browser(site.url("/form"), file.path().to_owned()).await;
    let result = &outcome["result"];
    let shown: String = outcome.to_string().chars().take(2000).collect();
    assert_eq!((result["ok"].as_bool(), result["successes"].as_u64()), (Some(true), Some(1)), "{shown}");
    assert_eq!(result["message"], "OK\n");
    assert_eq!(statuses(&outcome), [200], "one request, read across origins: {shown}");
    assert_eq!(app.uploads_used(&token).await, 1);
    // The app's first photo (ids start at 1 on both backends).
    let photo = app.photo("1").await;
    assert_eq!(photo.metadata.title.as_deref(), Some("By Uppy"));
    let stored = app.object_bytes(&photo.current_version().file.object_key).await;
    assert!(stored.as_deref() == Some(&bytes[..]), "byte for byte");
}

#[tokio::test]
async fn resumable_js_through_nginx_to_two_instances_uploads_the_file_once() {
    let site = Site::start().await;
    let origin = site.url("");
    let mut config = test_config();
    use_redis_and_s3(&mut config);
    config.server.cors_allowed_origins = vec![origin.trim_end_matches('/').to_owned()];
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let lb = processes::nginx(&[a.running.as_ref().unwrap().address, b.running.as_ref().unwrap().address]);
    let target = format!("http://127.0.0.1:{}{REDEEM_UPLOAD}", lb.port);
    let token =
        a.upload_token(&[("return_url", &site.url("/done?theme=green")), ("title", "Balanced")]).await;
    site.set_form(resumable_page(&target, &token));
    let (file, bytes) = clip();
    let outcome = run_library_in_browser(site.url("/form"), file.path().to_owned()).await;
    assert_one_success_byte_for_byte(&a, &site, &outcome, &bytes, "Balanced").await;
    assert_eq!(b.uploads_used(&token).await, 1, "both instances see one upload");
    // Nginx spread the test GETs and chunks over both instances.
    async fn served(app: &TestApp) -> f64 {
        let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let prefix = r#"upload_receiver_requests_total{endpoint="redeem_upload""#;
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
    let (on_a, on_b) = (served(&a).await, served(&b).await);
    assert!(on_a > 0.0 && on_b > 0.0, "requests on a: {on_a}, on b: {on_b}");
}
