//! The cross-domain wire format, from the `cross-domain-protocol` crate that the daemon shares
//! with the guest proxy; re-exported here so that the cross-domain layer names it as its own.

pub use cross_domain_protocol::wire::*;
