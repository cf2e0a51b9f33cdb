//! `upload-receiver`: receives browser uploads for sites built on the 23
//! Video API. A site's backend asks for a short-lived replace or upload
//! token (`/api/photo/get-replace-token`, `/api/photo/get-upload-token`,
//! OAuth 1.0a signed); the browser posts the file here with that token; the
//! bytes stream to object storage and the token's uses are counted exactly.
//!
//! # Layout
//! - [`app`]: the only place that names concrete backends: builds the
//!   services from a [`Config`], binds, runs the upkeep; [`RunningApp`]
//!   and its inspection view for tests.
//! - `context`: the services every request shares, as one value; `cors`:
//!   the CORS answers of the methods pages call from scripts.
//! - `server`: the hyper accept loop, connection cap, timeouts, shutdown;
//!   generic over its handler, it knows no API.
//! - `api`: routing; `api::call` for the enveloped API methods;
//!   `api::redeem`, the redeem's walk (parts → token → slot → stored file →
//!   commit → answer).
//! - `http`: request helpers (parameters, client address, body kinds and
//!   streams) and plain responses.
//! - [`auth`]: OAuth 1.0a verification, credentials, its own error type.
//! - `envelope`: 23's XML / JSON / JSONP response formats; `error`: the
//!   one map of API failures to 23 error codes.
//! - [`store`]: the [`store::StateStore`] seam (tokens, slots, photos,
//!   nonces), its embedded (redb) and Redis implementations.
//! - [`storage`]: the [`storage::ObjectStore`] seam, its local-files and S3
//!   implementations (and an in-memory double for tests).
//! - `upload`: the streaming multipart pipeline into an object store.
//! - [`return_data`]: what a site is told, as data; [`callback`]: the
//!   redirects, POST forms and background callbacks that tell it.
//! - [`delivery`]: what the receiver sends sites on its own: the signature
//!   of its requests, and the worker making and retrying them from the
//!   state store's queue (`store::deliveries`).
//! - `metrics`: Prometheus metrics and the decorators measuring the stores.
//! - [`domain`]: newtypes parsed at the edge (photo ids, tokens, permissions).
//! - [`tasks`]: the clean-up tasks an application owns; `causes`: error
//!   causes kept for the logs.
//!
//! The `testing` feature makes `upload` and the in-memory object store
//! public, for the fuzz targets.

mod api;
pub mod app;
pub mod auth;
pub mod callback;
mod causes;
pub mod config;
mod context;
mod cors;
pub mod delivery;
pub mod domain;
mod envelope;
mod error;
mod http;
mod metrics;
pub mod return_data;
mod server;
pub mod storage;
pub mod store;
pub mod tasks;

#[cfg(feature = "testing")]
pub mod upload;
#[cfg(not(feature = "testing"))]
mod upload;

pub use app::{App, RunningApp};
pub use config::Config;
