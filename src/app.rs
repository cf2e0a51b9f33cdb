//! Assembling the application from its configuration: the stores, the
//! authenticator, the listener; and running it until told to stop.
//!
//! `main` and the integration tests build the very same [`App`], so the tests
//! exercise what production runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::auth::credentials::{self, Credential, Provenance};
use crate::auth::{Authenticator, Credentials};
use crate::callback::BackgroundCaller;
use crate::config::Config;
use crate::metrics::{MeasuredObjects, MeasuredState, Metrics};
use crate::storage::ObjectStore;
use crate::storage::fs::FsObjectStore;
use crate::storage::s3::S3ObjectStore;
use crate::store::StateStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::upload::MultipartLimits;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the state store: {0}")]
    State(crate::store::StoreError),
    #[error("cannot open the object store: {0}")]
    Objects(String),
    #[error("cannot read or create the generated credentials: {0}")]
    Credentials(std::io::Error),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
}

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub config: Config,
    pub auth: Authenticator,
    pub state: Arc<dyn StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub callbacks: BackgroundCaller,
    pub metrics: Arc<Metrics>,
    /// One permit per multipart upload being received.
    uploads: Arc<tokio::sync::Semaphore>,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn multipart_limits(&self) -> MultipartLimits {
        let limits = &self.config.limits;
        MultipartLimits {
            max_file_bytes: limits.max_upload_bytes,
            max_fields: limits.max_fields,
            max_field_bytes: limits.max_field_bytes,
            max_part_header_bytes: limits.max_part_header_bytes,
            idle_timeout: Duration::from_secs(self.config.server.body_idle_timeout_secs),
            allowed_media_types: limits.allowed_media_types.clone(),
        }
    }

    /// A permit to receive one multipart upload, or `None` when
    /// `limits.max_concurrent_uploads` are already in progress.
    pub fn try_begin_upload(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.uploads).try_acquire_owned().ok()
    }

    /// Where file parts wait when they arrive before the fields they need.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.config.data_dir.join("spool")
    }

    /// True from the moment a shutdown begins; `/readyz` then fails so the
    /// load balancer stops sending new requests.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// A built application, bound to its address but not yet serving.
pub struct App {
    state: Arc<AppState>,
    listener: TcpListener,
    generated: Option<(Credential, Provenance)>,
    state_backend: StateBackend,
    /// The S3 store, when in use, for its sweep of orphaned uploads.
    s3: Option<Arc<S3ObjectStore>>,
}

impl App {
    /// Opens the stores named by `config` and binds the listener.
    pub async fn build(config: Config) -> Result<App, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let state_backend = match &config.state.redis_url {
            Some(url) => {
                let timeout = Duration::from_secs(config.state.redis_timeout_secs);
                let store =
                    RedisStore::new(url, &config.state.key_prefix, timeout).map_err(StartError::State)?;
                StateBackend::Redis(Arc::new(store))
            }
            None => StateBackend::Embedded(Arc::new(
                EmbeddedStore::open(&config.data_dir).map_err(StartError::State)?,
            )),
        };
        let metrics = Arc::new(Metrics::new());
        let state: Arc<dyn StateStore> =
            Arc::new(MeasuredState::new(state_backend.store(), Arc::clone(&metrics)));
        let s3 = match config.storage.bucket {
            Some(_) => Some(Arc::new(
                S3ObjectStore::new(&config.storage).await.map_err(|e| StartError::Objects(e.to_string()))?,
            )),
            None => None,
        };
        let unmeasured: Arc<dyn ObjectStore> = match &s3 {
            Some(s3) => s3.clone(),
            None => Arc::new(
                FsObjectStore::open(&config.data_dir.join("objects"))
                    .map_err(|e| StartError::Objects(e.to_string()))?,
            ),
        };

        let objects: Arc<dyn ObjectStore> = Arc::new(MeasuredObjects::new(unmeasured, Arc::clone(&metrics)));

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
        let callbacks = BackgroundCaller::new(
            &config.callback.allowed_hosts,
            Duration::from_secs(config.callback.timeout_secs),
        );
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent_uploads));
        let state = Arc::new(AppState {
            config,
            auth,
            state,
            objects,
            callbacks,
            uploads,
            metrics,
            shutting_down: AtomicBool::new(false),
        });
        Ok(App { state, listener, generated, state_backend, s3 })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The credential set generated for the embedded default (`None` when
    /// credentials are configured), and whether it was created just now.
    pub fn generated_credential(&self) -> Option<&(Credential, Provenance)> {
        self.generated.as_ref()
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains (see [`crate::server`]).
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let mut upkeep = vec![tokio::spawn(self.state_backend.clone().maintain())];
        if let Some(s3) = self.s3.clone() {
            let storage = &self.state.config.storage;
            let every = Duration::from_secs(storage.sweep_interval_secs);
            let min_age = Duration::from_secs(storage.sweep_min_age_secs);
            upkeep.push(tokio::spawn(sweep_orphans(s3, every, min_age)));
        }
        let state = Arc::clone(&self.state);
        crate::server::serve(self.listener, Arc::clone(&self.state), async move {
            shutdown.await;
            state.shutting_down.store(true, Ordering::Relaxed);
        })
        .await;
        // Slots of cut uploads go back, their multipart uploads are aborted.
        // Each is one store call, bounded by that store's own timeout.
        let config = &self.state.config;
        let limit = config.storage.timeout_secs.max(config.state.redis_timeout_secs);
        let unfinished = crate::cleanup::finish(Duration::from_secs(limit)).await;
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "clean-up tasks still running at exit; leases and the sweep will finish them"
            );
        }
        for task in upkeep {
            task.abort();
            // Awaiting the aborted task drops its handle on the store now.
            let _ = task.await;
        }
    }

    /// Serves in a background task; for tests and embedding.
    pub fn spawn(self) -> RunningApp {
        let address = self.local_addr();
        let state = Arc::clone(&self.state);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.run_until(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        RunningApp { address, state, stop, task }
    }
}

/// An application serving in the background.
pub struct RunningApp {
    pub address: SocketAddr,
    pub state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningApp {
    /// Begins a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Aborts, every `every`, the multipart uploads older than `min_age` that a
/// crashed instance left open.
async fn sweep_orphans(s3: Arc<S3ObjectStore>, every: Duration, min_age: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match s3.sweep(min_age).await {
            Ok(0) => {}
            Ok(aborted) => tracing::warn!(aborted, "aborted orphaned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "sweeping orphaned multipart uploads failed"),
        }
    }
}

/// The state store in use, for its backend-specific upkeep.
#[derive(Clone)]
enum StateBackend {
    Embedded(Arc<EmbeddedStore>),
    Redis(Arc<RedisStore>),
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

/// How often the state store's upkeep runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

impl StateBackend {
    fn store(&self) -> Arc<dyn StateStore> {
        match self {
            StateBackend::Embedded(store) => store.clone(),
            StateBackend::Redis(store) => store.clone(),
        }
    }

    /// Runs forever: the embedded store drops expired nonces and tokens.
    /// (Redis expires its keys itself and needs no upkeep.)
    async fn maintain(self) {
        let StateBackend::Embedded(store) = self else { return };
        let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            ticks.tick().await;
            match store.purge_expired(crate::domain::unix_now()).await {
                Ok((0, 0)) => {}
                Ok((nonces, tokens)) => tracing::debug!(nonces, tokens, "purged expired state"),
                Err(e) => tracing::warn!(error = %e, "purging expired state failed"),
            }
        }
    }
}
