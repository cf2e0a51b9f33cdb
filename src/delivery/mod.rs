//! Telling a site about outcomes by requests of the receiver's own (the
//! background callback, the webhook's [`event`]s): signed so the site can
//! tell them from forgeries ([`signature`]), kept in the state store until
//! the site answers ([`queue`]; a commit writes its own, [`outbox`]), made
//! and retried with growing delays ([`worker`]).

pub mod event;
pub mod outbox;
pub mod queue;
pub mod signature;
pub mod worker;
