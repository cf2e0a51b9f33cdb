//! Configuration: one TOML file, environment overrides, defaults, validation.
//!
//! Every key has a default, so an empty file (or none) is a valid
//! configuration: the embedded default. Environment variables named
//! `UPLOAD_RECEIVER__<SECTION>__<KEY>` (or `UPLOAD_RECEIVER__<KEY>` for
//! top-level keys) override the file; their values are read as TOML values
//! when they parse as one (`60`, `true`, `["10.0.0.0/8"]`) and as plain
//! strings otherwise. Errors always name the offending key.

mod env;

pub use env::ENV_PREFIX;

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::credentials::{Credential, Secret};
pub use crate::upload::media::MediaTypes;

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Key { key: key.to_owned(), message: message.into() }
    }
}

/// The whole configuration. See the README's configuration table and
/// `deploy/config.example.toml` for every key with its default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Embedded state, local files and generated credentials live here.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub site: SiteConfig,
    pub auth: AuthConfig,
    pub callback: CallbackConfig,
    pub webhook: WebhookConfig,
    pub state: StateConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub credentials: Vec<Credential>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            server: ServerConfig::default(),
            site: SiteConfig::default(),
            auth: AuthConfig::default(),
            callback: CallbackConfig::default(),
            webhook: WebhookConfig::default(),
            state: StateConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            credentials: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// Peers whose `X-Forwarded-Proto`/`X-Forwarded-Host`/`X-Forwarded-For`
    /// headers are believed: CIDRs, or bare addresses (one host).
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// A connection must deliver a complete request head within this time.
    pub header_read_timeout_secs: u64,
    /// A request body that delivers nothing for this long is abandoned.
    pub body_idle_timeout_secs: u64,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_drain_secs: u64,
    /// Open connections beyond this wait in the listen backlog.
    pub max_connections: usize,
    /// Origins (`https://www.example.com`, or `*` for any) whose pages may
    /// call the redeems and update-upload-token from a script.
    pub cors_allowed_origins: Vec<String>,
}

/// `*`, or an origin exactly as a browser sends it: `http` or `https`, a
/// host, a port only when it is not the scheme's default, no path.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let url = url::Url::parse(origin).map_err(|e| format!("{origin:?} is not an origin: {e}"))?;
    let serialized = url.origin().ascii_serialization();
    let usable = matches!(url.scheme(), "http" | "https")
        && serialized.eq_ignore_ascii_case(origin.trim_end_matches('/'));
    if usable {
        Ok(())
    } else {
        Err(format!(
            "{origin:?} is not an origin such as \"https://www.example.com\" (write it as the browser sends it: {serialized})"
        ))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".to_owned(),
            trusted_proxies: Vec::new(),
            header_read_timeout_secs: 10,
            body_idle_timeout_secs: 30,
            shutdown_drain_secs: 30,
            max_connections: 4096,
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// The site the receiver speaks for: the `domain` of callbacks and the JSON
/// `site` object.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    pub domain: String,
    #[serde(deserialize_with = "string_or_number")]
    pub site_id: String,
    pub site_name: String,
    pub product_key: String,
    /// The `tree_id` given to photos created here.
    #[serde(deserialize_with = "string_or_number")]
    pub tree_id: String,
    /// Domains granted by `/api/crossdomain.xml` to Flash clients
    /// (`*.example.com` style); empty grants nothing.
    pub crossdomain_allow: Vec<String>,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            domain: "localhost".to_owned(),
            site_id: "1".to_owned(),
            site_name: "upload-receiver".to_owned(),
            product_key: "tube".to_owned(),
            tree_id: "1".to_owned(),
            crossdomain_allow: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `oauth_timestamp` may differ from the server clock by this much.
    pub timestamp_window_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { timestamp_window_secs: 300 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    /// Empty: any host in `return_url`, background callbacks to public
    /// addresses only. Otherwise only these hosts, at any address.
    pub allowed_hosts: Vec<String>,
    /// Upper bound of one background callback, connect to last byte.
    pub timeout_secs: u64,
    /// Longest accepted `return_url`.
    pub max_return_url_bytes: usize,
    /// The first signs background callbacks (and webhooks); every one is
    /// accepted when verifying, for rotation. Empty: requests are unsigned.
    pub signing_secrets: Vec<Secret>,
    /// A background callback that fails for a passing reason is retried,
    /// with growing delays, for this long after its first attempt.
    pub retry_for_secs: u64,
    /// The delay after the first failed attempt, doubled after each one
    /// (up to an hour).
    pub retry_initial_delay_secs: u64,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            allowed_hosts: Vec::new(),
            timeout_secs: 10,
            max_return_url_bytes: 2048,
            signing_secrets: Vec::new(),
            retry_for_secs: 86_400,
            retry_initial_delay_secs: 10,
        }
    }
}

/// The shortest signing secret accepted: a shorter one is a mistake.
pub const MIN_SIGNING_SECRET_BYTES: usize = 16;

/// `[webhook]`: every redeem's outcome POSTed as signed JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Absent: no webhook.
    pub url: Option<String>,
    /// Signs the webhook's requests; absent: the first of
    /// `callback.signing_secrets`.
    pub secret: Option<Secret>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Set: Redis holds the state. Absent: the embedded store in `data_dir`.
    pub redis_url: Option<String>,
    pub redis_timeout_secs: u64,
    pub key_prefix: String,
    /// An upload slot is leased for this long and renewed while the upload
    /// runs; a crashed instance's slots return to their tokens when it ends.
    pub slot_lease_secs: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            redis_url: None,
            redis_timeout_secs: 2,
            key_prefix: "ur:".to_owned(),
            slot_lease_secs: 120,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Set: S3 holds the files. Absent: files under `data_dir/objects`.
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    pub timeout_secs: u64,
    pub part_size: u64,
    /// Part buffers of one S3 upload: one filling while the others are sent,
    /// so memory per upload is about `part_size × parts_in_flight`.
    pub parts_in_flight: usize,
    pub sweep_interval_secs: u64,
    pub sweep_min_age_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            bucket: None,
            endpoint: None,
            region: "us-east-1".to_owned(),
            force_path_style: false,
            timeout_secs: 60,
            part_size: 8 * MIB,
            parts_in_flight: 4,
            sweep_interval_secs: 3600,
            sweep_min_age_secs: 86400,
        }
    }
}

const MIB: u64 = 1024 * 1024;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest file accepted by an upload, replace or redeem.
    pub max_upload_bytes: u64,
    /// Largest form-urlencoded request body.
    pub max_form_bytes: u64,
    /// Most non-file fields in one multipart body.
    pub max_fields: usize,
    /// Largest single non-file field in a multipart body.
    pub max_field_bytes: u64,
    /// Largest header block of one multipart part (and the preamble).
    pub max_part_header_bytes: u64,
    /// Multipart uploads received at once; more are answered 503 at once.
    /// Bounds memory: an S3 upload holds about part_size × (parts_in_flight + 1).
    pub max_concurrent_uploads: usize,
    /// What a file's first bytes must identify it as (`type/subtype`,
    /// `type/*`, or `*/*` for anything).
    pub allowed_media_types: MediaTypes,
    /// Failed redeems (unknown or expired tokens) one client address (an
    /// IPv6 client: its /64) may make per minute before its failures are
    /// answered slowly. A valid token is never refused. 0: no limit.
    pub redeem_rate_limit_per_minute: u32,
    /// How long a failed redeem past `redeem_rate_limit_per_minute` waits
    /// before its `404` (the status stays one Resumable.js does not retry).
    pub redeem_rate_limit_delay_ms: u64,
    /// Longest `title` a photo or upload token takes, before cleaning.
    pub max_title_bytes: usize,
    /// Longest `description`, before cleaning.
    pub max_description_bytes: usize,
    /// Most tags in `tags` (separated by spaces or commas).
    pub max_tags: usize,
    /// Most bytes an upload token keeps besides title and description:
    /// `tags`, `album_id`, `absolute_url`, `user_id` and the extra
    /// parameters (names and values) together.
    pub max_upload_token_bytes: usize,
    /// How long a file sent in chunks keeps its upload slot (and its
    /// staged bytes) without a new chunk before it is abandoned.
    pub chunked_idle_timeout_secs: u64,
    /// Smallest chunk size a file in several chunks may be cut into (its
    /// last chunk may be smaller): bounds the chunks of one file.
    pub min_chunk_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_upload_bytes: 8 * 1024 * MIB,
            max_form_bytes: 64 * 1024,
            max_fields: 100,
            max_field_bytes: 64 * 1024,
            max_part_header_bytes: 16 * 1024,
            max_concurrent_uploads: 64,
            allowed_media_types: MediaTypes::parse(&["image/*".to_owned(), "video/*".to_owned()])
                .expect("the default media types parse"),
            redeem_rate_limit_per_minute: 60,
            redeem_rate_limit_delay_ms: 1000,
            chunked_idle_timeout_secs: 3600,
            min_chunk_bytes: 256 * 1024,
            max_title_bytes: 1024,
            max_description_bytes: 64 * 1024,
            max_tags: 100,
            max_upload_token_bytes: 16 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `upload_receiver=debug`;
    /// `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, filter: "info".to_owned() }
    }
}

/// Accepts `site_id = 123` as well as `site_id = "123"`: ids look numeric,
/// and environment overrides turn digits into TOML integers.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(i64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

/// `["10.0.0.0/8", "192.0.2.7"]`: a bare address is a one-host network.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is neither a CIDR nor an IP address")))
        })
        .collect()
}

impl Config {
    /// Reads `path` (if given), applies the process environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?,
            None => String::new(),
        };
        let display_path = path.map(Path::to_owned).unwrap_or_default();
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: display_path,
            message: e.to_string(),
        })?;
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize");
        env::apply_overrides(&mut table, &defaults, env)
            .map_err(|bad| ConfigError::key(&bad.key, bad.message))?;
        Config::from_table(table)
    }

    /// Deserializes and validates a TOML table.
    pub fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key { key, message: e.into_inner().to_string() }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: ranges, formats, uniqueness.
    /// The secret that signs webhook requests: `webhook.secret`, else the
    /// first of `callback.signing_secrets`.
    pub fn webhook_secret(&self) -> Option<&Secret> {
        self.webhook.secret.as_ref().or(self.callback.signing_secrets.first())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::key("data_dir", "must not be empty"));
        }
        let listen = &self.server.listen;
        match listen.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(ConfigError::key("server.listen", "must be HOST:PORT")),
        }
        for (key, value) in [
            ("server.header_read_timeout_secs", self.server.header_read_timeout_secs),
            ("server.body_idle_timeout_secs", self.server.body_idle_timeout_secs),
            ("auth.timestamp_window_secs", self.auth.timestamp_window_secs),
            ("callback.timeout_secs", self.callback.timeout_secs),
            ("callback.retry_initial_delay_secs", self.callback.retry_initial_delay_secs),
            ("state.redis_timeout_secs", self.state.redis_timeout_secs),
            ("storage.timeout_secs", self.storage.timeout_secs),
            ("limits.max_upload_bytes", self.limits.max_upload_bytes),
            ("limits.max_form_bytes", self.limits.max_form_bytes),
            ("limits.max_field_bytes", self.limits.max_field_bytes),
            ("limits.max_part_header_bytes", self.limits.max_part_header_bytes),
            ("limits.chunked_idle_timeout_secs", self.limits.chunked_idle_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        for (index, origin) in self.server.cors_allowed_origins.iter().enumerate() {
            check_origin(origin)
                .map_err(|why| ConfigError::key(&format!("server.cors_allowed_origins[{index}]"), why))?;
        }
        if self.state.slot_lease_secs < 3 {
            return Err(ConfigError::key("state.slot_lease_secs", "must be at least 3"));
        }
        if self.limits.max_concurrent_uploads == 0 {
            return Err(ConfigError::key("limits.max_concurrent_uploads", "must be at least 1"));
        }
        if self.limits.max_fields == 0 {
            return Err(ConfigError::key("limits.max_fields", "must be at least 1"));
        }
        if self.callback.max_return_url_bytes < 16 {
            return Err(ConfigError::key("callback.max_return_url_bytes", "must be at least 16"));
        }
        if self.storage.parts_in_flight < 2 {
            return Err(ConfigError::key(
                "storage.parts_in_flight",
                "must be at least 2 (one part filling, one sent)",
            ));
        }
        if self.storage.sweep_interval_secs == 0 {
            return Err(ConfigError::key("storage.sweep_interval_secs", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::key("server.max_connections", "must be at least 1"));
        }
        if self.auth.timestamp_window_secs > 86_400 {
            return Err(ConfigError::key("auth.timestamp_window_secs", "must be at most 86400"));
        }
        if self.site.domain.trim().is_empty() {
            return Err(ConfigError::key("site.domain", "must not be empty"));
        }
        if !(5 * MIB..=5 * 1024 * MIB).contains(&self.storage.part_size) {
            return Err(ConfigError::key(
                "storage.part_size",
                "must be between 5 MiB (5242880) and 5 GiB, as S3 requires",
            ));
        }
        for (i, domain) in self.site.crossdomain_allow.iter().enumerate() {
            let valid = !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*' | b':'));
            if !valid {
                return Err(ConfigError::key(
                    &format!("site.crossdomain_allow[{i}]"),
                    format!("{domain:?} is not a domain pattern"),
                ));
            }
        }
        for (i, host) in self.callback.allowed_hosts.iter().enumerate() {
            if host.is_empty() || url::Host::parse(host).is_err() {
                return Err(ConfigError::key(
                    &format!("callback.allowed_hosts[{i}]"),
                    format!("{host:?} is not a host name or address"),
                ));
            }
        }
        for (i, secret) in self.callback.signing_secrets.iter().enumerate() {
            let secret = secret.expose();
            if secret.len() < MIN_SIGNING_SECRET_BYTES || secret.chars().any(char::is_control) {
                return Err(ConfigError::key(
                    &format!("callback.signing_secrets[{i}]"),
                    format!("must be at least {MIN_SIGNING_SECRET_BYTES} bytes, without control characters"),
                ));
            }
        }
        if let Some(url) = &self.webhook.url {
            let parsed = url::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
            if parsed.is_none_or(|u| u.host().is_none()) {
                return Err(ConfigError::key("webhook.url", "must be an absolute http or https URL"));
            }
            if self.webhook_secret().is_none() {
                return Err(ConfigError::key(
                    "webhook.url",
                    "needs webhook.secret or callback.signing_secrets: webhooks are always signed",
                ));
            }
        }
        if let Some(secret) = &self.webhook.secret
            && secret.expose().len() < MIN_SIGNING_SECRET_BYTES
        {
            return Err(ConfigError::key(
                "webhook.secret",
                format!("must be at least {MIN_SIGNING_SECRET_BYTES} bytes"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let key = |field: &str| format!("credentials[{i}].{field}");
            for (field, value) in [
                ("consumer_key", c.consumer_key.as_str()),
                ("consumer_secret", c.consumer_secret.expose()),
                ("access_token", c.access_token.as_str()),
                ("access_token_secret", c.access_token_secret.expose()),
            ] {
                if value.is_empty() {
                    return Err(ConfigError::key(&key(field), "must not be empty"));
                }
            }
            if !seen.insert((&c.consumer_key, &c.access_token)) {
                return Err(ConfigError::key(
                    &key("access_token"),
                    "the same consumer_key and access_token appear twice",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
