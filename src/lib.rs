//! `upload-receiver`: receives browser uploads for sites built on the 23
//! Video API. A site's backend asks for a short-lived replace token
//! (`/api/photo/get-replace-token`, OAuth 1.0a signed); the browser posts the
//! file here with that token; the bytes stream to object storage and the
//! token's uses are counted exactly.
//!
//! # Layout
//! - [`config`]: the TOML configuration, environment overrides, validation.
//! - [`app`]: builds the stores and the listener from a configuration.
//! - [`server`]: the hyper accept loop, connection cap, timeouts, shutdown.
//! - [`api`]: routing, parameters, authentication and rendering per request.
//! - [`auth`]: OAuth 1.0a verification, credentials, permission levels.
//! - [`envelope`]: 23's XML / JSON / JSONP response formats.
//! - [`error`]: [`error::ApiError`], the one map to 23 error codes.
//! - [`store`]: the [`store::StateStore`] seam (tokens, slots, photos,
//!   nonces), its embedded (redb) and Redis implementations.
//! - [`storage`]: the [`storage::ObjectStore`] seam, its local-files and S3
//!   implementations.
//! - [`upload`]: the streaming multipart pipeline into an object store.
//! - [`callback`]: return data, redirects, POST forms, background callbacks.
//! - [`metrics`]: Prometheus metrics and the decorators measuring the stores.
//! - [`domain`]: newtypes parsed at the edge (photo ids, tokens).

pub mod api;
pub mod app;
pub mod auth;
pub mod callback;
pub mod cleanup;
pub mod config;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod store;
pub mod upload;

pub use app::{App, RunningApp};
pub use config::Config;
