//! One conformance suite per store trait, run against every implementation:
//! the embedded store and Redis for `StateStore`; local files (and S3) for
//! `ObjectStore`. The servers are real, started by `scripts/test.sh`; a
//! missing one fails the tests that need it.

#[path = "../support/files.rs"]
mod files;
#[path = "../support/servers.rs"]
mod servers;

mod chunked;
mod deliveries;
mod objects;
mod state;
