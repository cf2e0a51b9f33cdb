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
use crate::store::{
    CommitError, NewPhoto, NonceKey, Photo, Reservation, ReserveError, StateStore, StoreError, TokenGrant,
    VersionFile,
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
        let bytes_received = IntCounter::with_opts(
            Opts::new("bytes_received_total", "File bytes received and passed to the object store.")
                .namespace(NAMESPACE),
        )
        .expect("metric definitions are valid");
        registry.register(Box::new(bytes_received.clone())).expect("metric names are unique");
        let uploads_in_flight = IntGauge::with_opts(
            Opts::new("uploads_in_flight", "Files being written to the object store.").namespace(NAMESPACE),
        )
        .expect("metric definitions are valid");
        registry.register(Box::new(uploads_in_flight.clone())).expect("metric names are unique");
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

    fn done<T, E>(
        &self,
        operation: &str,
        started: Instant,
        result: &Result<T, E>,
        is_backend_error: impl Fn(&E) -> bool,
    ) {
        let failed = result.as_ref().err().is_some_and(is_backend_error);
        self.metrics.observe("state", operation, started, failed);
    }
}

#[async_trait]
impl StateStore for MeasuredState {
    async fn create_photo(&self, new: NewPhoto) -> Result<Photo, StoreError> {
        let started = Instant::now();
        let result = self.inner.create_photo(new).await;
        self.done("create_photo", started, &result, |_| true);
        result
    }

    async fn photo(&self, id: PhotoId) -> Result<Option<Photo>, StoreError> {
        let started = Instant::now();
        let result = self.inner.photo(id).await;
        self.done("photo", started, &result, |_| true);
        result
    }

    async fn issue_token(&self, grant: TokenGrant) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.issue_token(grant).await;
        self.done("issue_token", started, &result, |_| true);
        result
    }

    async fn token(&self, token: &ReplaceToken) -> Result<Option<(TokenGrant, u32)>, StoreError> {
        let started = Instant::now();
        let result = self.inner.token(token).await;
        self.done("token", started, &result, |_| true);
        result
    }

    async fn reserve_slot(
        &self,
        token: &ReplaceToken,
        now: u64,
        lease_secs: u64,
    ) -> Result<Reservation, ReserveError> {
        let started = Instant::now();
        let result = self.inner.reserve_slot(token, now, lease_secs).await;
        self.done("reserve_slot", started, &result, |e| matches!(e, ReserveError::Store(_)));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ReserveError::Unknown) => "unknown",
            Err(ReserveError::Expired) => "expired",
            Err(ReserveError::UsedUp) => "used_up",
            Err(ReserveError::Store(_)) => "error",
        };
        self.metrics.slots.with_label_values(&["reserve", outcome]).inc();
        result
    }

    async fn renew_reservation(
        &self,
        reservation: &Reservation,
        now: u64,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.renew_reservation(reservation, now, lease_secs).await;
        self.done("renew_reservation", started, &result, |_| true);
        let outcome = match &result {
            Ok(true) => "ok",
            Ok(false) => "lease_lost",
            Err(_) => "error",
        };
        self.metrics.slots.with_label_values(&["renew", outcome]).inc();
        result
    }

    async fn refund_slot(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.refund_slot(reservation).await;
        self.done("refund_slot", started, &result, |_| true);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.slots.with_label_values(&["refund", outcome]).inc();
        result
    }

    async fn commit_version(
        &self,
        reservation: &Reservation,
        version: VersionFile,
        now: u64,
    ) -> Result<Photo, CommitError> {
        let started = Instant::now();
        let result = self.inner.commit_version(reservation, version, now).await;
        self.done("commit_version", started, &result, |e| matches!(e, CommitError::Store(_)));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CommitError::LeaseLost) => "lease_lost",
            Err(CommitError::NoSuchPhoto) => "no_such_photo",
            Err(CommitError::Store(_)) => "error",
        };
        self.metrics.slots.with_label_values(&["commit", outcome]).inc();
        result
    }

    async fn add_version(
        &self,
        photo_id: PhotoId,
        version: VersionFile,
    ) -> Result<Option<Photo>, StoreError> {
        let started = Instant::now();
        let result = self.inner.add_version(photo_id, version).await;
        self.done("add_version", started, &result, |_| true);
        result
    }

    async fn first_use_of_nonce(&self, key: &NonceKey, expires_at: u64) -> Result<bool, StoreError> {
        let started = Instant::now();
        let result = self.inner.first_use_of_nonce(key, expires_at).await;
        self.done("nonce", started, &result, |_| true);
        result
    }

    async fn redeem_failures(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        let started = Instant::now();
        let result = self.inner.redeem_failures(client, window).await;
        self.done("redeem_failures", started, &result, |_| true);
        result
    }

    async fn count_redeem_failure(&self, client: &str, window: u64) -> Result<u32, StoreError> {
        let started = Instant::now();
        let result = self.inner.count_redeem_failure(client, window).await;
        self.done("count_redeem_failure", started, &result, |_| true);
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.ping().await;
        self.done("ping", started, &result, |_| true);
        result
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

    async fn get(&self, key: &ObjectKey) -> Result<Option<ByteStream>, StorageError> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.observe("objects", "get", started, result.is_err());
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
}
