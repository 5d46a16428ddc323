//! The heartbeat datagram: how nodes heartbeat each other over UDP.
//!
//! A node listens for UDP on the same address and port number as its gRPC
//! service. A monitoring node sends each peer a *ping*; the peer answers
//! with a *pong* that echoes the ping's token and carries the peer's own
//! identity and epoch, exactly what the unary `Heartbeat` RPC returns. One
//! datagram each way and no connection: per peer, the monitor keeps a few
//! dozen bytes instead of an HTTP/2 connection's buffers. The layout, the
//! optional authentication with cluster keys and what each protects against
//! are in `docs/PROTOCOL.md`; the codec lives in [`heartbeater_core::datagram`]
//! (no IO, so it can be fuzzed and used by other implementations) and is
//! re-exported here.

pub use heartbeater_core::datagram::*;
