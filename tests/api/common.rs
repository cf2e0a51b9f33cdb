//! `spawn_app()`: the same `App` as `main`, on port 0, with its own data
//! directory; and an OAuth client built on an independent implementation
//! (the `oauth1-request` crate), never on the service's own signer.

use std::num::NonZeroU64;
use std::path::PathBuf;

use oauth1_request as oauth;
use upload_receiver::App;
use upload_receiver::RunningApp;
use upload_receiver::auth::{Credential, Secret};
use upload_receiver::config::Config;
use upload_receiver::config::MediaTypes;
use upload_receiver::domain::{Permission, PhotoId, ReplaceToken};
use upload_receiver::store::{Photo, TokenGrant, TokenPurpose, TokenStatus};

pub use crate::files::walk_files;
use crate::servers;

/// A running receiver with a temporary data directory.
pub struct TestApp {
    pub base_url: String,
    pub running: Option<RunningApp>,
    /// The `write` credential set the tests sign with.
    pub writer: Credential,
    pub config: Config,
    data_dir: std::sync::Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
}

pub fn credential(name: &str, permission: Permission) -> Credential {
    Credential {
        consumer_key: format!("ck-{name}"),
        consumer_secret: Secret::new(format!("cs-{name}-secret")),
        access_token: format!("at-{name}"),
        access_token_secret: Secret::new(format!("ts-{name}-secret")),
        permission,
    }
}

/// A configuration for tests: three credential sets (`read`, `write`,
/// `super`) and the backend `UPLOAD_RECEIVER_TEST_BACKEND` names.
/// [`spawn_app_from`] gives it a data directory and port 0.
/// The first bytes of a JPEG (JFIF) file.
pub const JPEG_SIGNATURE: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00";
/// The first bytes of a PNG file.
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";

pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".to_owned();
    config.site.domain = "videos.example.com".to_owned();
    config.credentials = vec![
        credential("reader", Permission::Read),
        credential("writer", Permission::Write),
        credential("super", Permission::Super),
    ];
    // Most tests upload arbitrary bytes and many failing redeems from one
    // address; the tests of media types and of the failure limit set these.
    config.limits.allowed_media_types = MediaTypes::parse(&["*/*".to_owned()]).unwrap();
    config.limits.redeem_rate_limit_per_minute = 0;
    use_test_backend(&mut config);
    config
}

/// The backends named by `UPLOAD_RECEIVER_TEST_BACKEND`: unset or
/// `embedded` for the embedded default; `redis-s3` for Redis state and S3
/// storage on the servers `scripts/test.sh` starts (each app gets its own
/// key prefix and bucket).
fn use_test_backend(config: &mut Config) {
    match std::env::var("UPLOAD_RECEIVER_TEST_BACKEND").as_deref() {
        Err(_) | Ok("embedded") => {}
        Ok("redis-s3") => use_redis_and_s3(config),
        Ok(other) => panic!("unknown UPLOAD_RECEIVER_TEST_BACKEND {other:?}"),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Redis state and S3 storage on the test servers, under a fresh key prefix
/// and in a fresh bucket.
pub fn use_redis_and_s3(config: &mut Config) {
    config.state.redis_url = Some(servers::redis_url());
    config.state.key_prefix = servers::unique_prefix();
    config.storage.endpoint = Some(servers::s3_endpoint());
    config.storage.force_path_style = true;
    config.storage.bucket = Some(servers::unique_bucket());
}

/// Spawns an app with `config`, given a data directory of its own; several
/// apps with the same Redis prefix and bucket form one cluster.
pub async fn spawn_app_from(mut config: Config) -> TestApp {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    config.data_dir = data_dir.path().to_owned();
    config.server.listen = "127.0.0.1:0".to_owned();
    start(config, std::sync::Arc::new(data_dir)).await
}

/// Spawns an app after `adjust` has changed the test configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    adjust(&mut config);
    spawn_app_from(config).await
}

async fn start(config: Config, data_dir: std::sync::Arc<tempfile::TempDir>) -> TestApp {
    if let Some(bucket) = &config.storage.bucket {
        servers::create_bucket(bucket).await;
    }
    let app = App::build(config.clone()).await.expect("the app builds");
    let writer = config
        .credentials
        .iter()
        .find(|c| c.permission == Permission::Write)
        .cloned()
        .or_else(|| app.generated_credential().map(|(c, _)| c.clone()))
        .expect("a write credential set");
    let running = app.spawn();
    TestApp {
        base_url: format!("http://{}", running.address),
        running: Some(running),
        writer,
        config,
        data_dir,
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
    }
}

/// Where the OAuth parameters travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `Authorization: OAuth ...`, API parameters in the query (GET).
    Header,
    /// Everything in the query string (GET).
    Query,
    /// Everything in a form-urlencoded POST body.
    Form,
    /// `Authorization` header, API parameters in a form-urlencoded POST body.
    HeaderWithForm,
}

pub const ALL_PLACEMENTS: [Placement; 4] =
    [Placement::Header, Placement::Query, Placement::Form, Placement::HeaderWithForm];

/// Options for signing a request differently from the default.
#[derive(Clone, Default)]
pub struct Signing {
    pub timestamp: Option<u64>,
    pub nonce: Option<String>,
}

pub fn token_of(c: &Credential) -> oauth::Token<String, String> {
    oauth::Token::from_parts(
        c.consumer_key.clone(),
        c.consumer_secret.expose().to_owned(),
        c.access_token.clone(),
        c.access_token_secret.expose().to_owned(),
    )
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

impl TestApp {
    /// A non-owning copy for use on another thread: the same address,
    /// credentials and client, no control over the running app.
    pub fn handle_of(app: &TestApp) -> TestApp {
        TestApp {
            base_url: app.base_url.clone(),
            running: None,
            writer: app.writer.clone(),
            config: app.config.clone(),
            data_dir: app.data_dir.clone(),
            http: app.http.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().to_owned()
    }

    /// A request signed with `credential` by the independent OAuth library.
    pub fn signed_request(
        &self,
        credential: &Credential,
        path: &str,
        params: &[(&str, &str)],
        placement: Placement,
        signing: &Signing,
    ) -> reqwest::RequestBuilder {
        self.signed_request_via(&self.base_url, credential, path, params, placement, signing)
    }

    /// As [`TestApp::signed_request`], but signed for the URL a client saw
    /// at `public_base` (a load balancer's address) while sent to the app.
    pub fn signed_request_via(
        &self,
        public_base: &str,
        credential: &Credential,
        path: &str,
        params: &[(&str, &str)],
        placement: Placement,
        signing: &Signing,
    ) -> reqwest::RequestBuilder {
        let signed_uri = format!("{public_base}{path}");
        let sent_uri = self.url(path);
        let list = oauth::ParameterList::new(params.to_vec());
        let mut builder = oauth::Builder::with_token(token_of(credential), oauth::HMAC_SHA1);
        if let Some(ts) = signing.timestamp {
            builder.timestamp(NonZeroU64::new(ts));
        }
        if let Some(nonce) = &signing.nonce {
            builder.nonce(nonce.as_str());
        }
        match placement {
            Placement::Header => {
                let authorization = builder.authorize("GET", &signed_uri, &list);
                self.http.get(oauth::to_query(sent_uri, &list)).header("authorization", authorization)
            }
            // The library computes the signature (in its header form); for
            // these placements its parameters then travel in the query or body.
            Placement::Query => {
                let oauth_params = header_to_pairs(&builder.authorize("GET", &signed_uri, &list));
                let url = oauth::to_query(sent_uri, &list);
                let separator = if url.contains('?') { '&' } else { '?' };
                self.http.get(format!("{url}{separator}{oauth_params}"))
            }
            Placement::Form => {
                let oauth_params = header_to_pairs(&builder.authorize("POST", &signed_uri, &list));
                let form = oauth::to_form(&list);
                let separator = if form.is_empty() { "" } else { "&" };
                self.http
                    .post(&sent_uri)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("{form}{separator}{oauth_params}"))
            }
            Placement::HeaderWithForm => {
                let authorization = builder.authorize("POST", &signed_uri, &list);
                self.http
                    .post(&sent_uri)
                    .header("authorization", authorization)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(oauth::to_form(&list))
            }
        }
    }

    /// Calls an API method signed by the `write` set, header placement.
    pub async fn call(&self, path: &str, params: &[(&str, &str)]) -> String {
        self.call_as(&self.writer.clone(), path, params, Placement::Header).await
    }

    pub async fn call_as(
        &self,
        credential: &Credential,
        path: &str,
        params: &[(&str, &str)],
        placement: Placement,
    ) -> String {
        let response = self
            .signed_request(credential, path, params, placement, &Signing::default())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "API answers are HTTP 200");
        response.text().await.unwrap()
    }

    /// A multipart POST signed in its `Authorization` header (multipart
    /// fields are not part of the signature).
    pub fn signed_multipart(
        &self,
        credential: &Credential,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::RequestBuilder {
        let uri = self.url(path);
        let builder = oauth::Builder::with_token(token_of(credential), oauth::HMAC_SHA1);
        let authorization = builder.authorize("POST", &uri, &());
        self.http.post(&uri).header("authorization", authorization).multipart(form)
    }

    /// Uploads `bytes` as a new photo and returns the `photo_id`.
    pub async fn upload_photo(&self, bytes: Vec<u8>) -> String {
        let part =
            reqwest::multipart::Part::bytes(bytes).file_name("photo.jpg").mime_str("image/jpeg").unwrap();
        let form = reqwest::multipart::Form::new().text("title", "A photo").part("file", part);
        let body = self
            .signed_multipart(&self.writer.clone(), "/api/photo/upload", form)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        xml_field(&body, "photo_id").unwrap_or_else(|| panic!("upload failed: {body}"))
    }

    /// Issues a replace token for `photo_id` (with the other
    /// get-replace-token parameters in `params`), signed by the `write` set;
    /// panics with the answer unless it is a token.
    pub async fn replace_token(&self, photo_id: &str, params: &[(&str, &str)]) -> String {
        let mut all = vec![("photo_id", photo_id)];
        all.extend_from_slice(params);
        let body = self.call(GET_REPLACE_TOKEN, &all).await;
        match xml_field(&body, "replace_token") {
            Some(token) if xml_attribute(&body, "status").as_deref() == Some("ok") => token,
            _ => panic!("no replace token for photo {photo_id} with {params:?}: {body}"),
        }
    }

    /// A redeem form for `token`, ready to send: `replace_token` first, then
    /// `extras`, then `file` (named `new.jpg` and declared a JPEG; the
    /// receiver goes by the bytes).
    pub fn redeem_request(
        &self,
        token: &str,
        file: &[u8],
        extras: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        self.redeem_form(REDEEM, "replace_token", token, file, extras)
    }

    /// The redeem form of [`TestApp::redeem_request`] for an upload token.
    pub fn redeem_upload_request(
        &self,
        token: &str,
        file: &[u8],
        extras: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        self.redeem_form(REDEEM_UPLOAD, "upload_token", token, file, extras)
    }

    /// Posts the redeem form of [`TestApp::redeem_upload_request`].
    pub async fn redeem_upload(
        &self,
        token: &str,
        file: &[u8],
        extras: &[(&str, &str)],
    ) -> reqwest::Response {
        self.redeem_upload_request(token, file, extras).send().await.expect("the redeem is answered")
    }

    /// Issues an upload token with `params`, signed by the `write` set;
    /// panics with the answer unless it is a token.
    pub async fn upload_token(&self, params: &[(&str, &str)]) -> String {
        let body = self.call(GET_UPLOAD_TOKEN, params).await;
        match xml_field(&body, "upload_token") {
            Some(token) if xml_attribute(&body, "status").as_deref() == Some("ok") => token,
            _ => panic!("no upload token with {params:?}: {body}"),
        }
    }

    fn redeem_form(
        &self,
        path: &str,
        field: &str,
        token: &str,
        file: &[u8],
        extras: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut form = reqwest::multipart::Form::new().text(field.to_owned(), token.to_owned());
        for (name, value) in extras {
            form = form.text(name.to_string(), value.to_string());
        }
        let file = reqwest::multipart::Part::bytes(file.to_vec())
            .file_name("new.jpg")
            .mime_str("image/jpeg")
            .unwrap();
        self.http.post(self.url(path)).multipart(form.part("file", file))
    }

    /// Posts the redeem form of [`TestApp::redeem_request`].
    pub async fn redeem(&self, token: &str, file: &[u8], extras: &[(&str, &str)]) -> reqwest::Response {
        self.redeem_request(token, file, extras).send().await.expect("the redeem is answered")
    }

    /// Posts `count` redeems of `token` at once, the `i`th with the file
    /// `file(i)`; returns their statuses.
    pub async fn redeem_at_once(
        &self,
        token: &str,
        count: usize,
        file: impl Fn(usize) -> Vec<u8>,
    ) -> Vec<u16> {
        let attempts = (0..count).map(|i| {
            let (app, token, file) = (TestApp::handle_of(self), token.to_owned(), file(i));
            tokio::spawn(async move { app.redeem(&token, &file, &[]).await.status().as_u16() })
        });
        futures_util::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect()
    }

    /// Posts `body` as it is to the redeem endpoint, with `content_type`.
    pub async fn redeem_raw(&self, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let request = self.http.post(self.url(REDEEM)).header("content-type", content_type).body(body);
        request.send().await.expect("the redeem is answered")
    }

    /// How `token` stands in the app's state store.
    pub async fn token_status(&self, token: &str) -> TokenStatus {
        let parsed: ReplaceToken = token.parse().unwrap_or_else(|_| panic!("{token:?} is not a token"));
        let inspection = self.running.as_ref().expect("running").inspect();
        let status = inspection.token_status(&parsed).await.expect("the state store answers");
        status.unwrap_or_else(|| panic!("token {token} is not in the state store"))
    }

    /// The committed uploads of `token`.
    pub async fn uploads_used(&self, token: &str) -> u32 {
        self.token_status(token).await.uploads_used
    }

    /// The photo `photo_id` as the app's state store holds it.
    pub async fn photo(&self, photo_id: &str) -> Photo {
        let id: PhotoId = photo_id.parse().unwrap_or_else(|_| panic!("{photo_id:?} is not a photo id"));
        let inspection = self.running.as_ref().expect("running").inspect();
        let photo = inspection.photo(id).await.expect("the state store answers");
        photo.unwrap_or_else(|| panic!("photo {photo_id} is not in the state store"))
    }

    /// Stops the app gracefully and starts it again on the same data
    /// directory (on a new port).
    pub async fn restart(mut self) -> TestApp {
        self.running.take().expect("running").shutdown().await;
        let mut config = self.config.clone();
        config.server.listen = "127.0.0.1:0".to_owned();
        start(config, self.data_dir).await
    }

    /// Every object the app's object store holds (files under the data
    /// directory, or keys in the bucket), and any S3 multipart upload left
    /// open, so tests can check that nothing partial remains.
    pub async fn stored_objects(&self) -> Vec<String> {
        match &self.config.storage.bucket {
            Some(bucket) => {
                let mut found = servers::s3_keys(bucket).await;
                found.extend(
                    servers::s3_open_uploads(bucket).await.into_iter().map(|k| format!("open upload {k}")),
                );
                found
            }
            None => {
                walk_files(&self.data_dir().join("objects")).iter().map(|p| p.display().to_string()).collect()
            }
        }
    }

    /// Waits (at most 10 s) until `count` objects are stored: a clean-up
    /// task removes a cancelled file's bytes just after its answer.
    pub async fn wait_for_stored_objects(&self, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.stored_objects().await.len() != count {
            assert!(std::time::Instant::now() < deadline, "{:?}", self.stored_objects().await);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The bytes stored under `key`, read from the backend itself (the file
    /// under the data directory, or the object in the bucket).
    pub async fn object_bytes(&self, key: &str) -> Option<Vec<u8>> {
        match &self.config.storage.bucket {
            Some(bucket) => servers::s3_object(bucket, key).await,
            None => std::fs::read(self.data_dir().join("objects").join(key)).ok(),
        }
    }

    /// The Content-Type the object store serves `key` with; local files
    /// have none (the version records the type).
    pub async fn object_content_type(&self, key: &str) -> Option<String> {
        let bucket = self.config.storage.bucket.as_ref()?;
        servers::s3_content_type(bucket, key).await
    }

    /// The value of the `/metrics` sample whose line starts with `sample`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.http.get(self.url("/metrics")).send().await.ok()?.text().await.ok()?;
        metric_in(&text, sample)
    }

    /// Waits (at most 10 s) until the `/metrics` sample reaches `at_least`:
    /// how a test learns that the app got as far as it should.
    pub async fn wait_for_metric(&self, sample: &str, at_least: f64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.metric(sample).await.unwrap_or(0.0) < at_least {
            assert!(std::time::Instant::now() < deadline, "{sample} never reached {at_least}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// The method that issues replace tokens.
pub const GET_REPLACE_TOKEN: &str = "/api/photo/get-replace-token";
/// Where a browser posts a replace token and its file.
pub const REDEEM: &str = "/api/photo/redeem-replace-token";
pub const GET_UPLOAD_TOKEN: &str = "/api/photo/get-upload-token";
pub const REDEEM_UPLOAD: &str = "/api/photo/redeem-upload-token";
pub const UPDATE_UPLOAD_TOKEN: &str = "/api/photo/update-upload-token";

/// An app with one uploaded photo: the fixture of the tests that issue
/// replace tokens for a photo and redeem them. It derefs to its
/// [`TestApp`], so `f.redeem(..)`, `f.uploads_used(..)` and `f.url(..)` work
/// on it directly.
pub struct PhotoApp {
    pub app: TestApp,
    pub photo_id: String,
}

impl PhotoApp {
    /// The bytes of the photo's first version (11 of them), unless given.
    pub const FIRST_VERSION: &'static [u8] = b"version one";

    /// A test app with a photo.
    pub async fn new() -> PhotoApp {
        PhotoApp::with(|_| {}).await
    }

    /// A test app, configured by `adjust`, with a photo.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> PhotoApp {
        PhotoApp::on(spawn_app_with(adjust).await).await
    }

    /// `app` with a photo of [`PhotoApp::FIRST_VERSION`] uploaded.
    pub async fn on(app: TestApp) -> PhotoApp {
        PhotoApp::with_first_version(app, PhotoApp::FIRST_VERSION.to_vec()).await
    }

    /// `app` with a photo of `bytes` uploaded.
    pub async fn with_first_version(app: TestApp, bytes: Vec<u8>) -> PhotoApp {
        let photo_id = app.upload_photo(bytes).await;
        PhotoApp { app, photo_id }
    }

    /// Issues a replace token for the photo, with the other
    /// get-replace-token parameters in `params`.
    pub async fn token(&self, params: &[(&str, &str)]) -> String {
        self.app.replace_token(&self.photo_id, params).await
    }

    /// Plants a token for the photo that expired a second ago (five uploads,
    /// returning to `http://www.example.com/done`), as the store keeps one.
    pub async fn expired_token(&self) -> String {
        let token = ReplaceToken::generate();
        let now = unix_now();
        let grant = TokenGrant {
            token: token.clone(),
            purpose: TokenPurpose::Replace { photo_id: self.photo_id.parse().unwrap() },
            max_uploads: 5,
            issued_at: now - 3600,
            valid_until: now - 1,
            return_url: Some("http://www.example.com/done".into()),
            background_return: false,
            issued_to: "test".into(),
        };
        let inspection = self.app.running.as_ref().expect("running").inspect();
        assert!(inspection.issue_token(grant).await.unwrap(), "the expired token is stored");
        token.to_string()
    }

    /// The photo, as the app's state store holds it.
    /// Any photo of this app, by id.
    pub async fn photo_of(&self, photo_id: &str) -> Photo {
        self.app.photo(photo_id).await
    }

    pub async fn photo(&self) -> Photo {
        self.app.photo(&self.photo_id).await
    }
}

impl std::ops::Deref for PhotoApp {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// The `error_message` a redeem's redirect carries, if it redirects with one.
pub fn redirect_error(response: &reqwest::Response) -> Option<String> {
    let location = url::Url::parse(response.headers().get("location")?.to_str().unwrap()).unwrap();
    location.query_pairs().find(|(n, _)| n == "error_message").map(|(_, v)| v.into_owned())
}

/// Sends `request`, checks the HTTP 200 every API answer has, returns the body.
pub async fn text(request: reqwest::RequestBuilder) -> String {
    let response = request.send().await.expect("the request is answered");
    assert_eq!(response.status(), 200, "API answers are HTTP 200");
    response.text().await.expect("a text body")
}

/// The value of the sample whose line starts with `prefix` in a `/metrics` text.
pub fn metric_in(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The `/metrics` sample of successful slot reservations.
pub const SLOTS_RESERVED: &str = r#"upload_receiver_slot_operations_total{operation="reserve",result="ok"}"#;

/// `OAuth a="1",b="2"` → `a=1&b=2` (values stay percent-encoded).
fn header_to_pairs(authorization: &str) -> String {
    authorization.trim_start_matches("OAuth ").replace('"', "").replace(',', "&")
}

/// The text of `<name>...</name>` in an XML answer, unescaped.
pub fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(xml_unescape(&body[start..end]))
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#10;", "\n")
        .replace("&#13;", "\r")
        .replace("&#9;", "\t")
        .replace("&amp;", "&")
}

/// The value of attribute `name` on the `<response>` element.
pub fn xml_attribute(body: &str, name: &str) -> Option<String> {
    let response = &body[body.find("<response")?..];
    let head = &response[..response.find('>')?];
    let key = format!(" {name}=\"");
    let start = head.find(&key)? + key.len();
    let end = head[start..].find('"')? + start;
    Some(xml_unescape(&head[start..end]))
}

/// Asserts an XML error answer with `code`, returning its message.
#[track_caller]
pub fn assert_error(body: &str, code: &str) -> String {
    assert_eq!(xml_attribute(body, "status").as_deref(), Some("error"), "{body}");
    assert_eq!(xml_attribute(body, "code").as_deref(), Some(code), "{body}");
    xml_attribute(body, "message").unwrap_or_default()
}

#[track_caller]
pub fn assert_ok(body: &str) {
    assert_eq!(xml_attribute(body, "status").as_deref(), Some("ok"), "{body}");
}
