//! Code generated from `proto/heartbeater/v1/heartbeater.proto`.
//!
//! The request and response messages are re-exported at the crate root; the
//! generated client and server modules stay here for users who want raw gRPC.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("heartbeater.v1");

/// The encoded `FileDescriptorSet` of the wire contract, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/heartbeater_descriptor.bin"));
