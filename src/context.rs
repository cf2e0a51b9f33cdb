//! The services every request shares — configuration, authenticator, the
//! two stores, the background caller, metrics, clean-up tasks — and the
//! policies derived from the configuration. Built once by [`crate::app`],
//! handed to the API as one value; it names no concrete backend.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Authenticator;
use crate::callback::BackgroundCaller;
use crate::config::Config;
use crate::cors::AllowedOrigins;
use crate::delivery::queue::DeliveryQueue;
use crate::delivery::signature::Signer;
use crate::metrics::Metrics;
use crate::storage::ObjectStore;
use crate::storage::chunked::ChunkedObjects;
use crate::store::StateStore;
use crate::store::chunked::ChunkedFiles;
use crate::tasks::Cleanup;
use crate::upload::MultipartLimits;

/// Everything a request handler needs, shared by all connections.
pub struct Context {
    pub config: Config,
    pub auth: Authenticator,
    pub state: Arc<dyn StateStore>,
    /// The state store's files sent in chunks (the same store).
    pub chunked: Arc<dyn ChunkedFiles>,
    /// The state store's queue of deliveries to sites (the same store).
    pub deliveries: Arc<dyn DeliveryQueue>,
    pub objects: Arc<dyn ObjectStore>,
    /// The object store's files sent in chunks, if it takes them.
    pub chunked_objects: Option<Arc<dyn ChunkedObjects>>,
    pub callbacks: BackgroundCaller,
    /// `server.cors_allowed_origins`, ready to answer with.
    pub cors: AllowedOrigins,
    pub metrics: Arc<Metrics>,
    /// Work started where nothing waits for it (see [`crate::tasks`]).
    pub cleanup: Cleanup,
    /// One permit per multipart upload being received.
    uploads: Arc<Semaphore>,
    shutting_down: AtomicBool,
}

/// The stores, as the app opened them.
pub struct Backends {
    pub state: Arc<dyn StateStore>,
    pub chunked: Arc<dyn ChunkedFiles>,
    pub deliveries: Arc<dyn DeliveryQueue>,
    pub objects: Arc<dyn ObjectStore>,
    pub chunked_objects: Option<Arc<dyn ChunkedObjects>>,
}

impl Context {
    pub fn new(
        config: Config,
        auth: Authenticator,
        backends: Backends,
        metrics: Arc<Metrics>,
        cleanup: Cleanup,
    ) -> Self {
        let Backends { state, chunked, deliveries, objects, chunked_objects } = backends;
        let cors = AllowedOrigins::new(&config.server.cors_allowed_origins);
        let secrets: Vec<String> =
            config.callback.signing_secrets.iter().map(|s| s.expose().to_owned()).collect();
        let webhook_secret: Vec<String> =
            config.webhook_secret().map(|s| s.expose().to_owned()).into_iter().collect();
        let callbacks = BackgroundCaller::new(
            &config.callback.allowed_hosts,
            Duration::from_secs(config.callback.timeout_secs),
            Signer::new(&secrets),
            Signer::new(&webhook_secret),
        );
        let uploads = Arc::new(Semaphore::new(config.limits.max_concurrent_uploads));
        Context {
            config,
            auth,
            state,
            chunked,
            deliveries,
            objects,
            chunked_objects,
            callbacks,
            cors,
            metrics,
            cleanup,
            uploads,
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn multipart_limits(&self) -> MultipartLimits {
        let limits = &self.config.limits;
        MultipartLimits {
            max_file_bytes: limits.max_upload_bytes,
            max_fields: limits.max_fields,
            max_field_bytes: limits.max_field_bytes,
            max_part_header_bytes: limits.max_part_header_bytes,
        }
    }

    /// How long a request body may send nothing before it is given up.
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.server.body_idle_timeout_secs)
    }

    /// A permit to receive one multipart upload, or `None` when
    /// `limits.max_concurrent_uploads` are already in progress.
    pub fn try_begin_upload(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.uploads).try_acquire_owned().ok()
    }

    /// Where file parts wait when they arrive before the fields they need.
    pub fn spool_dir(&self) -> PathBuf {
        self.config.data_dir.join("spool")
    }

    /// True from the moment a shutdown begins; `/readyz` then fails so the
    /// load balancer stops sending new requests.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
