//! Telling a site about outcomes by requests of the receiver's own:
//! signed so the site can tell them from forgeries ([`signature`]).

pub mod signature;
