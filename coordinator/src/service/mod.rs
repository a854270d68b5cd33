//! The gRPC shell around the domain: wire types in, domain calls, wire types out. Status codes
//! are chosen here and name the offending field.

pub mod coordinator;
pub mod replay;
pub mod validate;
