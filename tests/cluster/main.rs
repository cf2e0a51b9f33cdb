//! Several receivers sharing Redis and S3, behind a real nginx with request
//! buffering off, and the faults of their backends. Needs the servers that
//! `scripts/test.sh` starts, plus `nginx` and `redis-server` binaries.

#[allow(dead_code)]
#[path = "../support/chunks.rs"]
mod chunk_client;
// The HTTP tests' harness; this binary uses part of it.
#[allow(dead_code)]
#[path = "../api/common.rs"]
mod common;
#[path = "../support/files.rs"]
mod files;
#[path = "../support/multipart.rs"]
mod multipart;
#[path = "../support/servers.rs"]
mod servers;
#[allow(dead_code)]
#[path = "../api/site.rs"]
mod site;

mod chunked;
mod deliveries;
mod faults;
mod load_balanced;
mod processes;
