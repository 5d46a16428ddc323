//! The gRPC edge: the services and their conversions to and from the wire
//! contract, and what guards them: the access gate (tokens), TLS, the
//! listener's connection limits, idle connections, oversize requests, paging.

pub(crate) mod access;
pub(crate) mod connection;
pub(crate) mod convert;
pub(crate) mod idle;
pub(crate) mod listener;
pub(crate) mod oversize;
pub(crate) mod paging;
pub mod proto;
pub(crate) mod service;
pub mod tls;
