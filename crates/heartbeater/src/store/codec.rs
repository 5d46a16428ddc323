//! Binary encoding of stored records: a version byte, then a protobuf body.
//!
//! Protobuf (through prost's derive, no `.proto` needed) gives forward and
//! backward compatible fields for free; the version byte leaves room for a
//! change of encoding altogether.

use std::time::Duration;

use heartbeater_core::{DetectorKind, PhiParams};
use prost::Message;

use super::registry::{NodeMeta, PeerRecord};

const VERSION: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct MetaV1 {
    #[prost(string, tag = "1")]
    identity: String,
    #[prost(uint64, tag = "2")]
    epoch: u64,
}

#[derive(Clone, PartialEq, Message)]
struct PeerV1 {
    #[prost(string, tag = "1")]
    peer_id: String,
    #[prost(string, tag = "2")]
    host: String,
    #[prost(uint32, tag = "3")]
    port: u32,
    #[prost(uint64, tag = "4")]
    heartbeat_freq_micros: u64,
    #[prost(uint64, tag = "5")]
    timeout_micros: u64,
    #[prost(uint32, tag = "6")]
    max_missed: u32,
    #[prost(int64, tag = "7")]
    registered_at_micros: i64,
    /// 0: the count rule (what records written before the field hold), 1:
    /// phi accrual.
    #[prost(uint32, tag = "8")]
    detector: u32,
    #[prost(uint32, tag = "9")]
    phi_threshold_centi: u32,
    #[prost(uint64, tag = "10")]
    acceptable_pause_micros: u64,
    #[prost(uint64, tag = "11")]
    min_std_dev_micros: u64,
    /// 0 in records written before the field: 1.
    #[prost(uint32, tag = "12")]
    rise: u32,
}

fn frame(body: impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.encoded_len());
    out.push(VERSION);
    body.encode_raw(&mut out);
    out
}

fn unframe<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, String> {
    match bytes.split_first() {
        Some((&VERSION, body)) => M::decode(body).map_err(|e| format!("{what}: {e}")),
        Some((v, _)) => Err(format!("{what}: unknown record version {v}")),
        None => Err(format!("{what}: empty record")),
    }
}

pub(crate) fn encode_meta(meta: &NodeMeta) -> Vec<u8> {
    frame(MetaV1 {
        identity: meta.identity.clone(),
        epoch: meta.epoch,
    })
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Result<NodeMeta, String> {
    let m: MetaV1 = unframe(bytes, "node meta")?;
    if m.identity.is_empty() {
        return Err("node meta: empty identity".into());
    }
    Ok(NodeMeta {
        identity: m.identity,
        epoch: m.epoch,
    })
}

pub(crate) fn encode_peer(p: &PeerRecord) -> Vec<u8> {
    let (detector, phi_threshold_centi, acceptable_pause_micros, min_std_dev_micros) = match p.kind
    {
        DetectorKind::MissCount => (0, 0, 0, 0),
        DetectorKind::PhiAccrual(phi) => (
            1,
            (phi.threshold() * 100.0).round() as u32,
            micros(phi.acceptable_pause()),
            micros(phi.min_std_dev()),
        ),
    };
    frame(PeerV1 {
        peer_id: p.peer_id.clone(),
        host: p.host.clone(),
        port: u32::from(p.port),
        heartbeat_freq_micros: micros(p.heartbeat_freq),
        timeout_micros: micros(p.timeout),
        max_missed: p.max_missed,
        registered_at_micros: p.registered_at_micros,
        detector,
        phi_threshold_centi,
        acceptable_pause_micros,
        min_std_dev_micros,
        rise: p.rise,
    })
}

pub(crate) fn decode_peer(bytes: &[u8]) -> Result<PeerRecord, String> {
    let p: PeerV1 = unframe(bytes, "peer record")?;
    let port = u16::try_from(p.port).map_err(|_| format!("peer {}: port {}", p.peer_id, p.port))?;
    let kind = match p.detector {
        0 => DetectorKind::MissCount,
        1 => DetectorKind::PhiAccrual(
            PhiParams::new(
                f64::from(p.phi_threshold_centi) / 100.0,
                Duration::from_micros(p.acceptable_pause_micros),
                Duration::from_micros(p.min_std_dev_micros),
            )
            .map_err(|e| format!("peer {}: {e}", p.peer_id))?,
        ),
        other => return Err(format!("peer {}: unknown detector {other}", p.peer_id)),
    };
    Ok(PeerRecord {
        peer_id: p.peer_id,
        host: p.host,
        port,
        heartbeat_freq: Duration::from_micros(p.heartbeat_freq_micros),
        timeout: Duration::from_micros(p.timeout_micros),
        max_missed: p.max_missed,
        registered_at_micros: p.registered_at_micros,
        last_epoch: None,
        kind,
        rise: p.rise.max(1),
    })
}

pub(crate) fn encode_epoch(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

pub(crate) fn decode_epoch(bytes: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| format!("peer epoch: {} bytes, expected 8", bytes.len()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let meta = NodeMeta {
            identity: "id".into(),
            epoch: 7,
        };
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        let peer = PeerRecord {
            peer_id: "p".into(),
            host: "::1".into(),
            port: 65535,
            heartbeat_freq: Duration::from_millis(5),
            timeout: Duration::from_millis(9),
            max_missed: 4,
            registered_at_micros: 123,
            last_epoch: None,
            kind: Default::default(),
            rise: 1,
        };
        assert_eq!(decode_peer(&encode_peer(&peer)).unwrap(), peer);
        let phi = PeerRecord {
            kind: DetectorKind::PhiAccrual(
                PhiParams::new(9.5, Duration::from_millis(250), Duration::from_millis(30)).unwrap(),
            ),
            rise: 4,
            ..peer.clone()
        };
        assert_eq!(decode_peer(&encode_peer(&phi)).unwrap(), phi);
        // A record from before the detector fields: the count rule, rise 1.
        let old = frame(PeerV1 {
            peer_id: "p".into(),
            port: 1,
            ..Default::default()
        });
        let old = decode_peer(&old).unwrap();
        assert_eq!((old.kind, old.rise), (DetectorKind::MissCount, 1));
        assert!(decode_peer(&[]).is_err());
        assert!(decode_peer(&[2, 0]).is_err());
        assert!(decode_peer(&[1, 0xff, 0xff]).is_err());
        assert!(decode_meta(&[1]).is_err(), "empty identity");
        assert_eq!(decode_epoch(&encode_epoch(42)), Ok(42));
        assert!(decode_epoch(&[1, 2]).is_err());
    }
}
