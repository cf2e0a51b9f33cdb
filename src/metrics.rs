//! Prometheus metrics, served at `/metrics`, and decorators that measure the
//! two stores without either store knowing.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::StreamExt;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::domain::{PhotoId, ReplaceToken};
use crate::storage::{ByteStream, ObjectKey, ObjectStore, StorageError, StoredObject};
use crate::store::deliveries::Outbox;
use crate::store::{
    CommitError, MetadataUpdate, NewPhoto, NonceKey, Photo, Purged, RecordedVersion, Reservation,
    ReserveError, StateStore, StoreError, TokenGrant, TokenKind, TokenStatus, TokenUpdate, VersionFile,
};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint and outcome (`ok`, a 23 error code, or an HTTP status).
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// File bytes read from clients and passed to the object store.
    pub bytes_received: IntCounter,
    /// Files being written to the object store now.
    pub uploads_in_flight: IntGauge,
    /// Upload slot operations by operation and result.
    pub slots: IntCounterVec,
    /// Background callbacks by result.
    pub callbacks: IntCounterVec,
    /// Failed backend calls by backend and operation.
    pub backend_errors: IntCounterVec,
    pub backend_seconds: HistogramVec,
    /// Chunks of files sent in chunks, by result (`stored`, `duplicate`).
    pub chunks: IntCounterVec,
    /// Bytes of chunks stored before their file was complete.
    pub chunk_bytes: IntCounter,
    /// Files sent in chunks by how they ended (`completed`, `cancelled`,
    /// `abandoned`: found by the sweep).
    pub chunked_files: IntCounterVec,
    /// Attempts at deliveries to sites, by channel and result (`delivered`,
    /// `retry`, `dead`).
    pub deliveries: IntCounterVec,
    /// The delivery queue, as the state store holds it (all instances').
    pub deliveries_pending: IntGauge,
    pub deliveries_oldest_pending_seconds: IntGauge,
    pub deliveries_dead: IntGauge,
}

const NAMESPACE: &str = "upload_receiver";

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
                .expect("metric definitions are valid");
            registry.register(Box::new(metric.clone())).expect("metric names are unique");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(buckets),
                labels,
            )
            .expect("metric definitions are valid");
            registry.register(Box::new(metric.clone())).expect("metric names are unique");
            metric
        };
        let requests =
            counter("requests_total", "HTTP requests by endpoint and outcome.", &["endpoint", "outcome"]);
        let request_seconds = histogram(
            "request_duration_seconds",
            "Time to answer a request, by endpoint.",
            &["endpoint"],
            prometheus::exponential_buckets(0.001, 4.0, 10).expect("valid buckets"),
        );
        let slots = counter(
            "slot_operations_total",
            "Upload slot operations by operation and result.",
            &["operation", "result"],
        );
        let callbacks = counter("callbacks_total", "Background callbacks by result.", &["result"]);
        let backend_errors = counter(
            "backend_errors_total",
            "Failed backend calls by backend and operation.",
            &["backend", "operation"],
        );
        let backend_seconds = histogram(
            "backend_duration_seconds",
            "Backend call durations by backend and operation.",
            &["backend", "operation"],
            prometheus::exponential_buckets(0.0005, 4.0, 10).expect("valid buckets"),
        );
        let chunks = counter("chunks_total", "Chunks of chunked files received, by result.", &["result"]);
        let chunked_files =
            counter("chunked_files_total", "Files sent in chunks, by how they ended.", &["result"]);
        let single = |name: &str, help: &str| {
            let metric = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
                .expect("metric definitions are valid");
            registry.register(Box::new(metric.clone())).expect("metric names are unique");
            metric
        };
        let bytes_received =
            single("bytes_received_total", "File bytes received and passed to the object store.");
        let chunk_bytes =
            single("chunk_bytes_staged_total", "Bytes of chunks stored before their file was complete.");
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE))
                .expect("metric definitions are valid");
            registry.register(Box::new(metric.clone())).expect("metric names are unique");
            metric
        };
        let uploads_in_flight = gauge("uploads_in_flight", "Files being written to the object store.");
        let deliveries = counter(
            "deliveries_total",
            "Attempts at deliveries to sites (background callbacks), by channel and result.",
            &["channel", "result"],
        );
        let deliveries_pending =
            gauge("deliveries_pending", "Deliveries to sites waiting to be made or retried.");
        let deliveries_oldest_pending_seconds =
            gauge("deliveries_oldest_pending_seconds", "Age of the oldest pending delivery to a site.");
        let deliveries_dead =
            gauge("deliveries_dead", "Deliveries to sites given up (kept as long as expired tokens).");
        Metrics {
            registry,
            requests,
            request_seconds,
            bytes_received,
            uploads_in_flight,
            slots,
            callbacks,
            backend_errors,
            backend_seconds,
            chunks,
            chunk_bytes,
            chunked_files,
            deliveries,
            deliveries_pending,
            deliveries_oldest_pending_seconds,
            deliveries_dead,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Times one backend call and counts it as failed when `failed`.
    fn observe(&self, backend: &str, operation: &str, started: Instant, failed: bool) {
        self.backend_seconds
            .with_label_values(&[backend, operation])
            .observe(started.elapsed().as_secs_f64());
        if failed {
            self.backend_errors.with_label_values(&[backend, operation]).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A [`StateStore`] that measures the one inside it.
pub struct MeasuredState {
    inner: Arc<dyn StateStore>,
    metrics: Arc<Metrics>,
}

impl MeasuredState {
    pub fn new(inner: Arc<dyn StateStore>, metrics: Arc<Metrics>) -> Self {
        MeasuredState { inner, metrics }
    }

    /// Times `call`; an error counts as failed when `is_backend_error` says
    /// it is the backend's own (not a domain outcome such as "used up").
    async fn timed<T, E>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
        is_backend_error: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        let failed = result.as_ref().err().is_some_and(is_backend_error);
        self.metrics.observe("state", operation, started, failed);
        result
    }

    /// Counts one slot operation by its outcome.
    fn slot(&self, operation: &str, outcome: &str) {
        self.metrics.slots.with_label_values(&[operation, outcome]).inc();
    }
}

fn any_error<E>(_: &E) -> bool {
    true
}

#[async_trait]
impl StateStore for MeasuredState {
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError> {
        self.timed("create_photo", self.inner.create_photo(new), any_error).await
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        self.timed("photo", self.inner.photo(id), any_error).await
    }

    async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError> {
        self.timed("issue_token", self.inner.issue_token(grant), any_error).await
    }

    async fn token_status(&self, token: &ReplaceToken, now: u64) -> Result<Option<TokenStatus>, StoreError> {
        self.timed("token_status", self.inner.token_status(token, now), any_error).await
    }

    async fn reserve_slot(
        &self,
        token: &ReplaceToken,
        kind: TokenKind,
        id: &str,
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError> {
        let call = self.inner.reserve_slot(token, kind, id, now, lease_secs);
        let result = self.timed("reserve_slot", call, |e| matches!(e, ReserveError::Store(_))).await;
        self.slot(
            "reserve",
            match &result {
                Ok(_) => "ok",
                Err(ReserveError::Unknown) => "unknown",
                Err(ReserveError::Expired) => "expired",
                Err(ReserveError::UsedUp) => "used_up",
                Err(ReserveError::Store(_)) => "error",
            },
        );
        result
    }

    async fn withdraw_reservation(
        &self,
        token: &ReplaceToken,
        id: &str,
        until: u64,
    ) -> Result<(), StoreError> {
        self.timed("withdraw_reservation", self.inner.withdraw_reservation(token, id, until), any_error).await
    }

    async fn renew_reservation(
        &self,
        reservation: &Reservation,
        now: u64,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let call = self.inner.renew_reservation(reservation, now, lease_secs);
        let result = self.timed("renew_reservation", call, any_error).await;
        self.slot(
            "renew",
            match &result {
                Ok(true) => "ok",
                Ok(false) => "lease_lost",
                Err(_) => "error",
            },
        );
        result
    }

    async fn refund_slot(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let result = self.timed("refund_slot", self.inner.refund_slot(reservation), any_error).await;
        self.slot("refund", if result.is_ok() { "ok" } else { "error" });
        result
    }

    async fn commit_version(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
        file: Option<&str>,
        outbox: &Outbox,
    ) -> Result<RecordedVersion, CommitError> {
        let call = self.inner.commit_version(reservation, version, now, file, outbox);
        let result = self.timed("commit_version", call, |e| matches!(e, CommitError::Store(_))).await;
        self.slot(
            "commit",
            match &result {
                Ok(_) => "ok",
                Err(CommitError::LeaseLost) => "lease_lost",
                Err(CommitError::NoSuchPhoto) => "no_such_photo",
                Err(CommitError::Store(_)) => "error",
            },
        );
        result
    }

    async fn update_upload_token(
        &self,
        token: &ReplaceToken,
        update: &MetadataUpdate,
        file: Option<&str>,
        now: u64,
    ) -> Result<TokenUpdate, StoreError> {
        let call = self.inner.update_upload_token(token, update, file, now);
        self.timed("update_upload_token", call, any_error).await
    }

    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<RecordedVersion>, StoreError> {
        self.timed("add_version", self.inner.add_version(photo_id, version), any_error).await
    }

    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError> {
        self.timed("nonce", self.inner.first_use_of_nonce(key, expires_at), any_error).await
    }

    async fn redeem_failures(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        self.timed("redeem_failures", self.inner.redeem_failures(client, window), any_error).await
    }

    async fn count_redeem_failure(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        self.timed("count_redeem_failure", self.inner.count_redeem_failure(client, window), any_error).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping(), any_error).await
    }

    async fn purge_expired(&self, now: u64) -> Result<Purged, StoreError> {
        self.timed("purge_expired", self.inner.purge_expired(now), any_error).await
    }
}

/// An [`ObjectStore`] that measures the one inside it: call durations and
/// failures, uploads in flight, bytes passed through.
pub struct MeasuredObjects {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
}

impl MeasuredObjects {
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: Arc<Metrics>) -> Self {
        MeasuredObjects { inner, metrics }
    }
}

/// Keeps `uploads_in_flight` right however a `put` ends, drops included.
struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl ObjectStore for MeasuredObjects {
    async fn put(
        &self,
        key: &ObjectKey,
        content_type: &str,
        body: ByteStream,
    ) -> Result<StoredObject, StorageError> {
        self.metrics.uploads_in_flight.inc();
        let _in_flight = InFlight(self.metrics.uploads_in_flight.clone());
        let counter = self.metrics.bytes_received.clone();
        let counted: ByteStream = Box::pin(body.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                counter.inc_by(bytes.len() as u64);
            }
        }));
        let started = Instant::now();
        let result = self.inner.put(key, content_type, counted).await;
        let failed = matches!(result, Err(StorageError::Backend(_)));
        self.metrics.observe("objects", "put", started, failed);
        result
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = self.inner.delete(key).await;
        self.metrics.observe("objects", "delete", started, result.is_err());
        result
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = self.inner.ping().await;
        self.metrics.observe("objects", "ping", started, result.is_err());
        result
    }

    async fn sweep(&self, min_age: std::time::Duration) -> Result<usize, StorageError> {
        let started = Instant::now();
        let result = self.inner.sweep(min_age).await;
        self.metrics.observe("objects", "sweep", started, result.is_err());
        result
    }
}
