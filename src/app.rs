//! Assembling the application from its configuration — the only place that
//! names concrete backends — and running it until told to stop: the stores,
//! the authenticator, the listener, the upkeep of the stores.
//!
//! `main` and the integration tests build the very same [`App`], so the tests
//! exercise what production runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::auth::credentials::{self, Credential, Provenance};
use crate::auth::{Authenticator, Credentials};
use crate::config::Config;
use crate::context::{Backends, Context};
use crate::delivery::queue::DeliveryQueue;
use crate::domain::{PhotoId, ReplaceToken, unix_now};
use crate::metrics::{MeasuredObjects, MeasuredState, Metrics};
use crate::storage::chunked::{ChunkedObjects, LiveFiles};
use crate::storage::fs::FsObjectStore;
use crate::storage::s3::S3ObjectStore;
use crate::storage::{ObjectKey, ObjectStore, StorageError};
use crate::store::chunked::ChunkedFiles;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::{Photo, StateStore, StoreError, TokenGrant, TokenStatus};
use crate::tasks::Cleanup;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the state store: {0}")]
    State(StoreError),
    #[error("cannot open the object store: {0}")]
    Objects(crate::storage::StorageError),
    #[error("cannot read or create the generated credentials: {0}")]
    Credentials(std::io::Error),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
}

/// A built application, bound to its address but not yet serving.
pub struct App {
    ctx: Arc<Context>,
    listener: TcpListener,
    generated: Option<(Credential, Provenance)>,
}

impl App {
    /// Opens the stores named by `config` and binds the listener.
    pub async fn build(config: Config) -> Result<App, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let metrics = Arc::new(Metrics::new());
        let cleanup = Cleanup::default();
        type Stores = (Arc<dyn StateStore>, Arc<dyn ChunkedFiles>, Arc<dyn DeliveryQueue>);
        let (state, chunked, deliveries): Stores = match &config.state.redis_url {
            Some(url) => {
                let timeout = Duration::from_secs(config.state.redis_timeout_secs);
                let store = Arc::new(
                    RedisStore::new(url, &config.state.key_prefix, timeout).map_err(StartError::State)?,
                );
                (store.clone(), store.clone(), store)
            }
            None => {
                let store = Arc::new(EmbeddedStore::open(&config.data_dir).map_err(StartError::State)?);
                (store.clone(), store.clone(), store)
            }
        };
        let state: Arc<dyn StateStore> = Arc::new(MeasuredState::new(state, Arc::clone(&metrics)));
        let (objects, chunked_objects): (Arc<dyn ObjectStore>, Arc<dyn ChunkedObjects>) =
            match config.storage.bucket {
                Some(_) => {
                    let store = Arc::new(
                        S3ObjectStore::new(&config.storage, cleanup.clone())
                            .await
                            .map_err(StartError::Objects)?,
                    );
                    (store.clone(), store)
                }
                None => {
                    let store = Arc::new(
                        FsObjectStore::open(&config.data_dir.join("objects"))
                            .map_err(|e| StartError::Objects(crate::storage::StorageError::backend(e)))?,
                    );
                    (store.clone(), store)
                }
            };
        let objects: Arc<dyn ObjectStore> = Arc::new(MeasuredObjects::new(objects, Arc::clone(&metrics)));

        let mut configured = config.credentials.clone();
        let generated = if configured.is_empty() {
            let (credential, provenance) =
                credentials::load_or_generate(&config.data_dir).map_err(StartError::Credentials)?;
            configured.push(credential.clone());
            Some((credential, provenance))
        } else {
            None
        };
        let auth = Authenticator::new(
            Credentials::new(configured),
            config.auth.timestamp_window_secs,
            state.clone(),
        );

        let backlog = u32::try_from(config.server.max_connections).unwrap_or(u32::MAX);
        let listener = bind(&config.server.listen, backlog)
            .await
            .map_err(|source| StartError::Listen { address: config.server.listen.clone(), source })?;
        let backends =
            Backends { state, chunked, deliveries, objects, chunked_objects: Some(chunked_objects) };
        let ctx = Arc::new(Context::new(config, auth, backends, metrics, cleanup));
        Ok(App { ctx, listener, generated })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The credential set generated for the embedded default (`None` when
    /// credentials are configured), and whether it was created just now.
    pub fn generated_credential(&self) -> Option<&(Credential, Provenance)> {
        self.generated.as_ref()
    }

    /// Serves until `shutdown` completes, then drains (see [`crate::server`]).
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let upkeep = tokio::spawn(upkeep(Arc::clone(&self.ctx)));
        let deliveries = tokio::spawn(crate::delivery::worker::run(Arc::clone(&self.ctx)));
        let server = &self.ctx.config.server;
        let settings = crate::server::Settings {
            max_connections: server.max_connections,
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            shutdown_drain: Duration::from_secs(server.shutdown_drain_secs),
        };
        let ctx = Arc::clone(&self.ctx);
        let handler = move |request, peer| crate::api::handle(Arc::clone(&ctx), request, peer);
        let draining = Arc::clone(&self.ctx);
        crate::server::serve(self.listener, &settings, handler, async move {
            shutdown.await;
            draining.begin_shutdown();
        })
        .await;
        // Slots of cut uploads go back, their files are deleted, their
        // multipart uploads aborted. Each is one store call, bounded by that
        // store's own timeout.
        let config = &self.ctx.config;
        let limit = config.storage.timeout_secs.max(config.state.redis_timeout_secs);
        let unfinished = self.ctx.cleanup.finish(Duration::from_secs(limit)).await;
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "clean-up tasks still running at exit; leases and the sweep will finish them"
            );
        }
        // Deliveries cut here stay pending: another instance, or this one
        // started again, makes them when their lease runs out.
        upkeep.abort();
        deliveries.abort();
        // Awaiting the aborted tasks drops their handles on the stores now.
        let _ = upkeep.await;
        let _ = deliveries.await;
    }

    /// Serves in a background task; for tests and embedding.
    pub fn spawn(self) -> RunningApp {
        let address = self.local_addr();
        let inspection = Inspection { ctx: Arc::clone(&self.ctx) };
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.run_until(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        RunningApp { address, inspection, stop, task }
    }
}

/// What the configuration names as its backends, for the start-up banner:
/// the state store, then the object store. Credentials in a Redis URL are
/// left out.
pub fn backends(config: &Config) -> [String; 2] {
    let state = match &config.state.redis_url {
        Some(url) => {
            let shown = match url::Url::parse(url) {
                Ok(mut parsed) => {
                    let _ = parsed.set_password(None);
                    let _ = parsed.set_username("");
                    parsed.to_string()
                }
                Err(_) => "(an unparsable URL)".to_owned(),
            };
            format!("Redis at {shown} (key prefix {:?})", config.state.key_prefix)
        }
        None => format!("embedded store in {}", config.data_dir.join("state.redb").display()),
    };
    let storage = &config.storage;
    let files = match &storage.bucket {
        Some(bucket) => {
            let endpoint = storage.endpoint.as_deref().unwrap_or("the AWS endpoint of the region");
            format!("S3 bucket {bucket} at {endpoint} (region {})", storage.region)
        }
        None => format!("local files in {}", config.data_dir.join("objects").display()),
    };
    [state, files]
}

/// An application serving in the background.
pub struct RunningApp {
    pub address: SocketAddr,
    inspection: Inspection,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningApp {
    /// Begins a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// A read-mostly view of the running app's state, for tests and tools.
    pub fn inspect(&self) -> &Inspection {
        &self.inspection
    }
}

/// What a test or a tool may look at (and plant) in a running app's state,
/// through the same store the app uses.
#[derive(Clone)]
pub struct Inspection {
    ctx: Arc<Context>,
}

impl Inspection {
    pub async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.ctx.state.photo(id).await
    }

    pub async fn token_status(&self, token: &ReplaceToken) -> Result<Option<TokenStatus>, StoreError> {
        self.ctx.state.token_status(token, unix_now()).await
    }

    /// Stores a token with any terms (an expired one, say), as
    /// get-replace-token would; `false` when its photo does not exist.
    pub async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError> {
        self.ctx.state.issue_token(grant).await
    }

    /// True once a graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.ctx.is_shutting_down()
    }
}

/// Listens on `address` with room for `backlog` connections waiting to be
/// accepted (the kernel caps it at `net.core.somaxconn`): a burst of
/// connections, or many slow ones, then waits in the queue instead of
/// having its handshakes dropped and retried seconds later.
async fn bind(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host(address).await? {
        let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the address resolved to nothing")))
}

/// How often the state store forgets what has expired.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Runs forever: the state store's purge every [`PURGE_INTERVAL`], the
/// object store's sweep every `storage.sweep_interval_secs`.
async fn upkeep(ctx: Arc<Context>) {
    let storage = &ctx.config.storage;
    let min_age = Duration::from_secs(storage.sweep_min_age_secs);
    let mut purges = tokio::time::interval(PURGE_INTERVAL);
    let mut sweeps = tokio::time::interval(Duration::from_secs(storage.sweep_interval_secs));
    loop {
        tokio::select! {
            _ = purges.tick() => match ctx.state.purge_expired(unix_now()).await {
                Ok(purged) if purged == Default::default() => {}
                Ok(purged) => tracing::debug!(?purged, "purged expired state"),
                Err(e) => tracing::warn!(error = %crate::causes::chain(&e), "purging expired state failed"),
            },
            _ = sweeps.tick() => sweep(&ctx, min_age).await,
        }
    }
}

/// The object store's sweep: what crashed uploads left (older than
/// `min_age`), and the staged bytes of chunked files the state store no
/// longer knows (abandoned, cancelled or completed; past a slot lease, so a
/// file being begun right now is not taken for one).
async fn sweep(ctx: &Context, min_age: Duration) {
    match ctx.objects.sweep(min_age).await {
        Ok(0) => {}
        Ok(removed) => tracing::warn!(removed, "removed what crashed uploads left in the object store"),
        Err(e) => tracing::warn!(error = %crate::causes::chain(&e), "sweeping the object store failed"),
    }
    let Some(chunked) = &ctx.chunked_objects else { return };
    let grace = Duration::from_secs(ctx.config.state.slot_lease_secs);
    match chunked.sweep_chunked(grace, &StateKnows(&*ctx.chunked)).await {
        Ok(0) => {}
        Ok(files) => {
            ctx.metrics.chunked_files.with_label_values(&["abandoned"]).inc_by(files as u64);
            tracing::info!(files, "removed the staged bytes of abandoned chunked files");
        }
        Err(e) => tracing::warn!(error = %crate::causes::chain(&e), "sweeping chunked files failed"),
    }
}

/// Whether a chunked file is live, as the state store knows.
struct StateKnows<'a>(&'a dyn ChunkedFiles);

#[async_trait::async_trait]
impl LiveFiles for StateKnows<'_> {
    async fn is_live(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        self.0.is_live(key.as_str(), unix_now()).await.map_err(StorageError::backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_names_the_backends_configured_without_credentials() {
        let mut config = Config { data_dir: "/var/lib/upload-receiver".into(), ..Config::default() };
        let [state, files] = backends(&config);
        assert_eq!(state, "embedded store in /var/lib/upload-receiver/state.redb");
        assert_eq!(files, "local files in /var/lib/upload-receiver/objects");
        config.state.redis_url = Some("redis://user:hunter2@redis.internal:6379/2".into());
        config.state.key_prefix = "ur:".into();
        config.storage.bucket = Some("videos".into());
        config.storage.endpoint = Some("http://minio:9000".into());
        let [state, files] = backends(&config);
        assert_eq!(state, "Redis at redis://redis.internal:6379/2 (key prefix \"ur:\")");
        assert!(!state.contains("hunter2"));
        assert_eq!(
            files,
            format!("S3 bucket videos at http://minio:9000 (region {})", config.storage.region)
        );
    }
}
