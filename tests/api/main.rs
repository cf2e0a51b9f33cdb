//! Black-box tests of the service over HTTP: the real `App` on port 0 with
//! its own data directory, called by independent clients.

#[path = "../support/chunks.rs"]
mod chunk_client;
mod common;
#[path = "../support/files.rs"]
mod files;
#[path = "../support/multipart.rs"]
mod multipart;
#[path = "../support/servers.rs"]
mod servers;

mod authentication;
mod browser;
mod browser_chunked;
mod chunks;
mod cors;
mod deliveries;
mod get_replace_token;
mod hardening;
mod independent_clients;
mod photo_list;
// nginx in front of two instances, as the cluster tests start it.
#[allow(dead_code)]
#[path = "../cluster/processes.rs"]
mod processes;
mod redeem;
mod response_formats;
mod restart;
mod server;
mod signatures;
mod site;
mod ssrf;
mod token_status;
mod upload_token;
mod uploads;
