//! Real-browser tests: Debian's Chromium, driven by playwright-core through
//! `tests/browser/submit_form.mjs`, uploads a file with a plain HTML form
//! served by the site, and follows the receiver's answer back to the site.
//!
//! Both tools are installed by `scripts/test.sh`; when either is missing the
//! tests fail (they never skip).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::site::Site;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the browser may take for the whole walk (start included). A
/// cold Chromium start on a busy 2-core machine takes a few seconds.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) with what to do when the browser tools are missing.
fn require_browser_tools() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/test.sh, which installs Debian's chromium package \
         (or: apt-get install chromium)"
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: run scripts/test.sh, which installs it \
         (or: cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)",
        playwright.display()
    );
}

/// What the browser ended on.
#[derive(Debug)]
struct BrowserVisit {
    final_url: url::Url,
    body_text: String,
    /// The main frame's navigation responses, in order: `(method, url, status)`.
    navigations: Vec<(String, String, u16)>,
}

impl BrowserVisit {
    fn query_param(&self, name: &str) -> Option<String> {
        self.final_url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
    }
}

/// Opens `form_url` in Chromium, chooses `file` in its file input, submits,
/// and waits until the browser is on a page whose URL starts with
/// `expect_url_prefix`.
async fn submit_form_in_browser(form_url: String, file: PathBuf, expect_url_prefix: String) -> BrowserVisit {
    let input = serde_json::json!({
        "form_url": form_url,
        "file_path": file,
        "expect_url_prefix": expect_url_prefix,
    });
    let result = browser_script("submit_form.mjs", input).await;
    let navigations = result["navigations"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|n| {
                    (
                        n["method"].as_str().unwrap_or_default().to_owned(),
                        n["url"].as_str().unwrap_or_default().to_owned(),
                        n["status"].as_u64().unwrap_or_default() as u16,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    BrowserVisit {
        final_url: url::Url::parse(result["final_url"].as_str().expect("final_url")).expect("a URL"),
        body_text: result["body_text"].as_str().expect("body_text").to_owned(),
        navigations,
    }
}

/// Runs `script` (in `tests/browser`) on `input`, with the browser timeout
/// added; fails the test unless it finished, and returns the JSON result
/// line it printed last.
async fn browser_script(script: &'static str, mut input: serde_json::Value) -> serde_json::Value {
    require_browser_tools();
    input["timeout_ms"] = serde_json::json!(BROWSER_TIMEOUT.as_millis() as u64);
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || run_node(script, &input.to_string()))
        .await
        .expect("the node runner");
    assert!(status, "the browser did not finish the upload ({script}):\n{stderr}\nstdout: {stdout}");
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no result line from {script}:\nstdout: {stdout}\nstderr: {stderr}"));
    serde_json::from_str(line).expect("a JSON result line")
}

/// Opens `page_url` (a page that runs an upload library and sets
/// `window.uploadResult`) in Chromium, chooses `file`, and returns what the
/// page reported and the cross-origin requests it made.
pub async fn run_library_in_browser(page_url: String, file: PathBuf) -> serde_json::Value {
    browser_script("run_library.mjs", serde_json::json!({ "page_url": page_url, "file_path": file })).await
}

/// Runs the node script with `input`; kills it if it outlives the timeout.
/// Returns whether it succeeded, its stdout and its stderr.
fn run_node(script: &str, input: &str) -> (bool, String, String) {
    let mut child = Command::new("node")
        .arg(browser_dir().join(script))
        .arg(input)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (it is needed for the browser tests; scripts/test.sh expects it)");
    // Read both pipes on their own threads so a chatty child never blocks.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // The script has its own watchdog; this one is the backstop.
    let deadline = Instant::now() + BROWSER_TIMEOUT + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, mut stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    if status.is_none() {
        stderr.push_str(&format!("\n(killed: {script} outlived its timeout)"));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// The upload form of the 23 documentation, for a replace token.
fn upload_form(action: &str, replace_token: &str, extra_hidden: &[(&str, &str)]) -> String {
    token_form(action, "replace_token", replace_token, extra_hidden)
}

/// The upload form of the 23 documentation, carrying `token` as `field`.
fn token_form(action: &str, field: &str, token: &str, extra_hidden: &[(&str, &str)]) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Replace the video</title></head><body>\n",
    );
    html.push_str(&format!(
        "<form action=\"{}\" method=\"post\" enctype=\"multipart/form-data\">\n",
        attribute(action)
    ));
    html.push_str(&format!(
        "  <input type=\"hidden\" name=\"{}\" value=\"{}\" />\n",
        attribute(field),
        attribute(token)
    ));
    for (name, value) in extra_hidden {
        html.push_str(&format!(
            "  <input type=\"hidden\" name=\"{}\" value=\"{}\" />\n",
            attribute(name),
            attribute(value)
        ));
    }
    html.push_str("  <input type=\"file\" name=\"file\" />\n");
    html.push_str("  <input type=\"submit\" value=\"Upload video\" />\n</form>\n</body></html>\n");
    html
}

fn attribute(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A receiver with a photo, a site, and a replace token for that photo that
/// returns to the site's `/done?theme=green`.
struct Scene {
    app: PhotoApp,
    site: Site,
    replace_token: String,
    /// The file the browser uploads, and its bytes.
    file: tempfile::NamedTempFile,
    file_bytes: Vec<u8>,
}

async fn scene() -> Scene {
    let app = PhotoApp::new().await;
    let site = Site::start().await;
    let replace_token = app.token(&[("return_url", &site.url("/done?theme=green"))]).await;
    // Bytes that are not text, so that any mangling would change the digest.
    let file_bytes: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let file = tempfile::Builder::new().prefix("replacement-").suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), &file_bytes).unwrap();
    Scene { app, site, replace_token, file, file_bytes }
}

impl Scene {
    async fn browser_submits(&self) -> BrowserVisit {
        submit_form_in_browser(self.site.url("/form"), self.file.path().to_owned(), self.site.url("/done"))
            .await
    }

    /// The photo has its second version, with exactly the uploaded bytes.
    async fn assert_replaced_by_the_file(&self) {
        let photo = self.app.photo().await;
        assert_eq!(photo.versions.len(), 2, "{photo:?}");
        let current = photo.current_version();
        assert_eq!(current.number, 2);
        assert_eq!(current.file.size, self.file_bytes.len() as u64);
        assert_eq!(current.file.sha256, hex::encode(Sha256::digest(&self.file_bytes)));
    }
}

#[tokio::test]
async fn a_browser_submitting_the_plain_html_form_is_redirected_back_to_the_site_with_the_result() {
    let scene = scene().await;
    let action = scene.app.url(REDEEM);
    scene.site.set_form(upload_form(&action, &scene.replace_token, &[]));

    let visit = scene.browser_submits().await;

    let url = &visit.final_url;
    assert_eq!(url.path(), "/done", "{visit:?}");
    assert_eq!(visit.query_param("theme").as_deref(), Some("green"), "the return URL's own query is kept");
    assert_eq!(visit.query_param("domain").as_deref(), Some("videos.example.com"));
    assert_eq!(visit.query_param("replace_token").as_deref(), Some(scene.replace_token.as_str()));
    assert_eq!(visit.query_param("photo_id").as_deref(), Some(scene.app.photo_id.as_str()));
    let photo = scene.app.photo().await;
    assert_eq!(visit.query_param("tree_id").as_deref(), Some(photo.tree_id.as_str()));
    assert_eq!(visit.query_param("token").as_deref(), Some(photo.token.as_str()));
    assert_eq!(visit.query_param("error_message"), None);

    // The browser went form → POST to the receiver → 303 → GET of /done.
    let methods: Vec<(&str, u16)> = visit.navigations.iter().map(|(m, _, s)| (m.as_str(), *s)).collect();
    assert_eq!(methods, [("GET", 200), ("POST", 303), ("GET", 200)], "{:?}", visit.navigations);
    let done = scene.site.requests().into_iter().rfind(|r| r.target.starts_with("/done")).expect("/done");
    assert_eq!(done.method, "GET");
    assert!(visit.body_text.contains(&scene.app.photo_id), "{}", visit.body_text);

    scene.assert_replaced_by_the_file().await;
}

#[tokio::test]
async fn a_browser_whose_return_url_would_be_too_long_is_sent_back_by_an_auto_submitting_post_form() {
    let scene = scene().await;
    let action = scene.app.url(REDEEM);
    let note = "x".repeat(2000);
    scene.site.set_form(upload_form(&action, &scene.replace_token, &[("note", &note)]));

    let visit = scene.browser_submits().await;

    // The browser ended on /done by POST: nothing in the URL but its own query.
    assert_eq!(visit.final_url.path(), "/done", "{visit:?}");
    assert_eq!(visit.final_url.query(), Some("theme=green"), "{visit:?}");
    let methods: Vec<(&str, u16)> = visit.navigations.iter().map(|(m, _, s)| (m.as_str(), *s)).collect();
    assert_eq!(
        methods,
        [("GET", 200), ("POST", 200), ("POST", 200)],
        "form, the receiver's POST-form page, then /done: {:?}",
        visit.navigations
    );

    let done = scene.site.requests().into_iter().rfind(|r| r.target.starts_with("/done")).expect("/done");
    assert_eq!(done.method, "POST", "{done:?}");
    assert_eq!(done.target, "/done?theme=green");
    let photo = scene.app.photo().await;
    assert_eq!(done.param("photo_id").as_deref(), Some(scene.app.photo_id.as_str()));
    assert_eq!(done.param("tree_id").as_deref(), Some(photo.tree_id.as_str()));
    assert_eq!(done.param("token").as_deref(), Some(photo.token.as_str()));
    assert_eq!(done.param("domain").as_deref(), Some("videos.example.com"));
    assert_eq!(done.param("replace_token").as_deref(), Some(scene.replace_token.as_str()));
    assert_eq!(done.param("note").as_deref(), Some(note.as_str()), "the extra field comes back whole");
    assert_eq!(done.param("error_message"), None);

    // The page the browser ends on shows what was posted to it.
    for shown in
        [scene.app.photo_id.as_str(), photo.token.as_str(), "videos.example.com", &scene.replace_token, &note]
    {
        assert!(visit.body_text.contains(shown), "{shown:.40} not on the page: {:.300}", visit.body_text);
    }

    scene.assert_replaced_by_the_file().await;
}

/// The new photo the browser's upload created: its one version holds
/// exactly the scene's file, and it carries the upload token's title.
async fn assert_created_from_the_file(scene: &Scene, photo_id: &str, title: &str) {
    let photo = scene.app.photo_of(photo_id).await;
    assert_ne!(photo_id, scene.app.photo_id, "a new photo, not the scene's");
    assert_eq!(photo.versions.len(), 1, "{photo:?}");
    assert_eq!(photo.current_version().file.sha256, hex::encode(Sha256::digest(&scene.file_bytes)));
    assert_eq!(photo.metadata.title.as_deref(), Some(title));
}

#[tokio::test]
async fn a_browser_uploading_with_an_upload_token_returns_to_the_site_with_its_new_photo() {
    let scene = scene().await;
    let token = scene
        .app
        .upload_token(&[("return_url", &scene.site.url("/done?theme=green")), ("title", "From the browser")])
        .await;
    scene.site.set_form(token_form(&scene.app.url(REDEEM_UPLOAD), "upload_token", &token, &[]));

    let visit = scene.browser_submits().await;

    assert_eq!(visit.final_url.path(), "/done", "{visit:?}");
    assert_eq!(visit.query_param("theme").as_deref(), Some("green"));
    assert_eq!(visit.query_param("upload_token").as_deref(), Some(token.as_str()));
    assert_eq!(visit.query_param("error_message"), None);
    let methods: Vec<(&str, u16)> = visit.navigations.iter().map(|(m, _, s)| (m.as_str(), *s)).collect();
    assert_eq!(methods, [("GET", 200), ("POST", 303), ("GET", 200)], "{:?}", visit.navigations);
    let photo_id = visit.query_param("photo_id").expect("the new photo's id");
    let photo = scene.app.photo_of(&photo_id).await;
    assert_eq!(visit.query_param("token").as_deref(), Some(photo.token.as_str()));
    assert_eq!(visit.query_param("tree_id").as_deref(), Some(photo.tree_id.as_str()));
    assert_created_from_the_file(&scene, &photo_id, "From the browser").await;
}

#[tokio::test]
async fn a_browser_uploading_with_an_upload_token_over_the_get_limit_returns_by_post_form() {
    let scene = scene().await;
    let note = "y".repeat(2000);
    let token = scene
        .app
        .upload_token(&[("return_url", &scene.site.url("/done?theme=green")), ("title", "Long return")])
        .await;
    scene.site.set_form(token_form(
        &scene.app.url(REDEEM_UPLOAD),
        "upload_token",
        &token,
        &[("note", &note)],
    ));

    let visit = scene.browser_submits().await;

    assert_eq!(visit.final_url.query(), Some("theme=green"), "{visit:?}");
    let methods: Vec<(&str, u16)> = visit.navigations.iter().map(|(m, _, s)| (m.as_str(), *s)).collect();
    assert_eq!(methods, [("GET", 200), ("POST", 200), ("POST", 200)], "{:?}", visit.navigations);
    let done = scene.site.requests().into_iter().rfind(|r| r.target.starts_with("/done")).expect("/done");
    assert_eq!(done.method, "POST", "{done:?}");
    assert_eq!(done.param("upload_token").as_deref(), Some(token.as_str()));
    assert_eq!(done.param("note").as_deref(), Some(note.as_str()));
    let photo_id = done.param("photo_id").expect("the new photo's id");
    assert_created_from_the_file(&scene, &photo_id, "Long return").await;
}

#[tokio::test]
async fn resumable_js_on_the_sites_own_origin_uploads_a_file_of_one_chunk_with_an_upload_token() {
    let site = Site::start().await;
    let origin = site.url("");
    let app = spawn_app_with(|c| c.server.cors_allowed_origins = vec![origin.clone()]).await;
    let token = app
        .upload_token(&[("return_url", &site.url("/done?theme=green")), ("title", "By Resumable.js")])
        .await;
    let library = std::fs::read_to_string(browser_dir().join("node_modules/resumablejs/resumable.js"))
        .expect("resumablejs is installed by scripts/test.sh (npm ci in tests/browser)");
    // The library as a site would use it: its defaults (1 MiB chunks, test
    // GETs, multipart, every parameter in query and form), three at once.
    let page = format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><script>{library}</script></head><body>
<input type="file" id="pick">
<script>
  const r = new Resumable({{ target: {target}, query: {{ upload_token: {token} }}, simultaneousUploads: 3 }});
  r.assignBrowse(document.getElementById('pick'));
  r.on('fileAdded', () => r.upload());
  r.on('fileSuccess', (file, message) => {{ window.uploadResult = {{ ok: true, message }}; }});
  r.on('fileError', (file, message) => {{ window.uploadResult = {{ ok: false, message }}; }});
</script></body></html>"#,
        target = serde_json::json!(app.url(REDEEM_UPLOAD)),
        token = serde_json::json!(token),
    );
    site.set_form(page);
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let file = tempfile::Builder::new().prefix("clip-").suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();

    let outcome = run_library_in_browser(site.url("/form"), file.path().to_owned()).await;

    // (Without CORS the browser reads status 0, and Resumable.js retries
    // the chunk a hundred times before its fileError.)
    let shown: String = outcome.to_string().chars().take(1500).collect();
    assert_eq!(outcome["result"]["ok"], true, "fileSuccess, not fileError: {shown}");
    let message = outcome["result"]["message"].as_str().unwrap();
    let url = url::Url::parse(message).unwrap_or_else(|_| panic!("the return URL for the page: {message}"));
    assert!(url.as_str().starts_with(&site.url("/done?theme=green")), "{url}");
    let photo_id =
        url.query_pairs().find(|(n, _)| n == "photo_id").map(|(_, v)| v.into_owned()).expect("photo_id");
    let photo = app.photo(&photo_id).await;
    assert_eq!(photo.metadata.title.as_deref(), Some("By Resumable.js"));
    let stored = app.object_bytes(&photo.current_version().file.object_key).await;
    assert!(stored.as_deref() == Some(&bytes[..]), "byte for byte");
    assert_eq!(app.uploads_used(&token).await, 1);
    // Its test GET (answered "not there yet"), then the chunk; the browser
    // could read both answers, so nothing was retried.
    let statuses: Vec<(String, u64)> = outcome["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["method"].as_str().unwrap().to_owned(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(statuses, [("GET".to_owned(), 204), ("POST".to_owned(), 200)], "{shown}");
}
