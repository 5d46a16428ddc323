//! Validated configuration of a monitored peer.
//!
//! Everything that arrives from the network or a command line passes through
//! [`PeerSpec::new`] or [`DetectorConfig::new`] before it reaches the state
//! machines, so the rest of the core never sees a zero frequency, an empty id
//! or a port that cannot exist. Each error names the offending field in the
//! wire contract's words (`peer_port`, `heartbeat_freq_millis`, ...), which is
//! what the gRPC layer reports back to the caller.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub use crate::identity::MAX_PEER_ID_BYTES;
use crate::validation::{check_count, check_interval};
pub use crate::validation::{ValidationError, MAX_INTERVAL, MAX_MISSED_LIMIT, MIN_INTERVAL};

/// Longest reply timeout, in heartbeat periods. At most
/// [`crate::probe::PROBE_WINDOW`] heartbeats of a peer are then in flight at
/// once (a period of scheduler lateness included), so each peer's window of
/// probes is a fixed 72 bytes, and a black-holed peer holds at most that many
/// timers. A reply later than seven periods is of no use to a detector that
/// already sent seven more heartbeats.
pub const MAX_TIMEOUT_PERIODS: u32 = 7;

/// Consecutive misses that make a peer unreachable when none is given.
pub const DEFAULT_MAX_MISSED: u32 = 3;

/// How one peer is judged: how often it is asked, how long an answer is
/// accepted, and how many silences convict it.
///
/// A peer that stops answering is declared unreachable within
/// `max_missed x heartbeat_freq + timeout` of its last valid reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Time between two heartbeats. Shorter detects faster and costs more.
    pub heartbeat_freq: Duration,
    /// How long after sending a heartbeat its reply still counts. Defaults to
    /// the frequency; raise it on links whose latency approaches the
    /// frequency. At most [`MAX_TIMEOUT_PERIODS`] times the frequency.
    pub timeout: Duration,
    /// Consecutive heartbeats without a valid reply that make the peer
    /// unreachable (the count rule). Higher tolerates more packet loss,
    /// detects more slowly.
    pub max_missed: NonZeroU32,
    /// How silences are judged: the count rule (the default) or phi accrual.
    pub kind: DetectorKind,
    /// Consecutive valid replies that bring an unreachable peer back to
    /// alive (hysteresis against flapping); 1, the default, is the first.
    pub rise: NonZeroU32,
}

/// The rule that convicts a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DetectorKind {
    /// `max_missed` consecutive heartbeats without a valid reply: the
    /// seeds' rule, with the exact bound of
    /// [`DetectorConfig::detection_bound`].
    #[default]
    MissCount,
    /// Phi accrual ([`crate::phi`]): a silence too unlikely given the
    /// intervals between the peer's past answers.
    PhiAccrual(crate::phi::PhiParams),
}

/// Most consecutive valid replies that may be asked for before an
/// unreachable peer is reported alive.
pub const MAX_RISE: u32 = 100;

impl DetectorConfig {
    /// Validates wire values: a frequency and an optional timeout in
    /// milliseconds, and an optional miss count.
    pub fn from_millis(
        heartbeat_freq_millis: i64,
        timeout_millis: Option<i64>,
        max_missed: Option<u32>,
    ) -> Result<Self, ValidationError> {
        let heartbeat_freq = interval_from_millis("heartbeat_freq_millis", heartbeat_freq_millis)?;
        let timeout = match timeout_millis {
            Some(ms) => Some(interval_from_millis("timeout_millis", ms)?),
            None => None,
        };
        Self::new(heartbeat_freq, timeout, max_missed)
    }

    /// Validates a frequency, an optional timeout (default: the frequency) and
    /// an optional miss count (default: [`DEFAULT_MAX_MISSED`]).
    pub fn new(
        heartbeat_freq: Duration,
        timeout: Option<Duration>,
        max_missed: Option<u32>,
    ) -> Result<Self, ValidationError> {
        check_interval("heartbeat_freq_millis", heartbeat_freq)?;
        let timeout = timeout.unwrap_or(heartbeat_freq);
        check_interval("timeout_millis", timeout)?;
        if timeout > heartbeat_freq * MAX_TIMEOUT_PERIODS {
            return Err(ValidationError::new(
                "timeout_millis",
                format!(
                    "{} ms; must be at most {MAX_TIMEOUT_PERIODS} x heartbeat_freq_millis ({} ms): \
                     at most {} heartbeats of a peer are in flight",
                    timeout.as_millis(),
                    (heartbeat_freq * MAX_TIMEOUT_PERIODS).as_millis(),
                    crate::probe::PROBE_WINDOW,
                ),
            ));
        }
        let max_missed = check_count("max_missed", max_missed.unwrap_or(DEFAULT_MAX_MISSED))?;
        Ok(Self {
            heartbeat_freq,
            timeout,
            max_missed,
            kind: DetectorKind::MissCount,
            rise: NonZeroU32::MIN,
        })
    }

    /// The same settings, judged by `kind`.
    pub fn with_kind(mut self, kind: DetectorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The same settings, with `rise` consecutive valid replies needed to
    /// bring an unreachable peer back (1 to [`MAX_RISE`]).
    pub fn with_rise(mut self, rise: u32) -> Result<Self, ValidationError> {
        if rise > MAX_RISE {
            return Err(ValidationError::new(
                "rise",
                format!("{rise} is more than the limit of {MAX_RISE}"),
            ));
        }
        self.rise = NonZeroU32::new(rise)
            .ok_or_else(|| ValidationError::new("rise", "must be at least 1"))?;
        Ok(self)
    }

    /// The longest a dead peer can go undetected after its last valid reply.
    ///
    /// Exact for the count rule: `max_missed x heartbeat_freq + timeout`.
    /// Phi accrual has no fixed bound (it waits longer when the peer's
    /// answers were irregular); this is its time for a peer whose answers
    /// came exactly every period, plus one period (phi is evaluated at each
    /// heartbeat).
    pub fn detection_bound(&self) -> Duration {
        match self.kind {
            DetectorKind::MissCount => self.heartbeat_freq * self.max_missed.get() + self.timeout,
            DetectorKind::PhiAccrual(phi) => {
                phi.steady_conviction_after(self.heartbeat_freq) + self.heartbeat_freq
            }
        }
    }
}

fn interval_from_millis(field: &'static str, millis: i64) -> Result<Duration, ValidationError> {
    if millis <= 0 {
        return Err(ValidationError::new(
            field,
            format!("{millis} ms; must be at least 1 ms"),
        ));
    }
    let interval = Duration::from_millis(millis.unsigned_abs());
    check_interval(field, interval)?;
    Ok(interval)
}

/// A peer to monitor: who it is, where it listens and how it is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's identity; replies from another identity do not count.
    pub peer_id: Arc<str>,
    /// IP address or DNS name, without brackets.
    pub host: String,
    /// TCP (and UDP) port of the peer's node.
    pub port: u16,
    /// Timing of its heartbeats.
    pub detector: DetectorConfig,
}

impl PeerSpec {
    /// Validates every field of a registration.
    pub fn new(
        peer_id: &str,
        host: &str,
        port: u32,
        detector: DetectorConfig,
    ) -> Result<Self, ValidationError> {
        let peer_id = validate_peer_id(peer_id)?;
        let host = validate_host("peer_host", host)?;
        let port = validate_port("peer_port", port)?;
        Ok(Self {
            peer_id: Arc::from(peer_id),
            host,
            port,
            detector,
        })
    }
}

/// Checks a peer id and returns its canonical spelling: a UUID in
/// lower-case hyphenated form, or a node name as written
/// ([`crate::identity`]). An id no node can answer with (`9a0e...`, `a b`)
/// is an error, since its peer could never be `ALIVE`.
pub fn validate_peer_id(peer_id: &str) -> Result<String, ValidationError> {
    crate::identity::canonical_identity(peer_id)
        .map_err(|e| ValidationError::new("peer_id", e.to_string()))
}

/// Checks a port: 1 to 65535.
pub fn validate_port(field: &'static str, port: u32) -> Result<u16, ValidationError> {
    match u16::try_from(port) {
        Ok(0) => Err(ValidationError::new(field, "0; must be 1 to 65535")),
        Ok(port) => Ok(port),
        Err(_) => Err(ValidationError::new(
            field,
            format!("{port}; must be 1 to 65535"),
        )),
    }
}

/// Checks a host given in `field`: an IP address (IPv6 optionally in brackets) or a DNS name
/// (RFC 1123 labels, at most 253 bytes, a last label that is not all digits).
/// Returns it normalised: no brackets, no trailing dot.
pub fn validate_host(field: &'static str, host: &str) -> Result<String, ValidationError> {
    if host.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let bad = |why: &str| ValidationError::new(field, format!("{host:?} {why}"));
    if name.is_empty() || name.len() > 253 {
        return Err(bad("is not an IP address or a DNS name of 1 to 253 bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty or over-long (> 63 bytes) DNS label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "is not an IP address, and a DNS name has only letters, digits, '-' and '.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a DNS label that starts or ends with '-'"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("is neither a valid IP address nor a DNS name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn detector_defaults_are_the_frequency_and_three_misses() {
        let cfg = DetectorConfig::new(freq(100), None, None).unwrap();
        assert_eq!(cfg.timeout, freq(100));
        assert_eq!(cfg.max_missed.get(), 3);
        assert_eq!(cfg.detection_bound(), freq(400));
    }

    #[test]
    fn frequencies_outside_one_ms_to_one_hour_name_their_field() {
        for ms in [0, -5, 3_600_001, i64::MAX] {
            let err = DetectorConfig::from_millis(ms, None, None).unwrap_err();
            assert_eq!(err.field, "heartbeat_freq_millis", "{ms}");
        }
        for ms in [0, -1, 3_600_001] {
            let err = DetectorConfig::from_millis(100, Some(ms), None).unwrap_err();
            assert_eq!(err.field, "timeout_millis", "{ms}");
        }
        assert!(DetectorConfig::from_millis(3_600_000, Some(1), Some(1000)).is_ok());
    }

    #[test]
    fn a_timeout_longer_than_seven_periods_is_rejected() {
        assert!(DetectorConfig::from_millis(100, Some(700), None).is_ok());
        let err = DetectorConfig::from_millis(100, Some(701), None).unwrap_err();
        assert_eq!(err.field, "timeout_millis");
        assert!(err.reason.contains("7 x heartbeat_freq_millis"), "{err}");
        // The case that once held millions of heartbeats in flight.
        let err = DetectorConfig::from_millis(1, Some(3_600_000), None).unwrap_err();
        assert_eq!(err.field, "timeout_millis");
    }

    #[test]
    fn max_missed_must_be_one_to_a_thousand() {
        for n in [0, 1001, u32::MAX] {
            let err = DetectorConfig::from_millis(10, None, Some(n)).unwrap_err();
            assert_eq!(err.field, "max_missed", "{n}");
        }
    }

    #[test]
    fn ports_outside_the_tcp_range_are_rejected() {
        assert_eq!(
            validate_port("peer_port", 0).unwrap_err().field,
            "peer_port"
        );
        assert!(validate_port("peer_port", 65536).is_err());
        assert_eq!(validate_port("peer_port", 65535), Ok(65535));
    }

    #[test]
    fn peer_ids_must_be_non_empty_and_bounded() {
        assert!(validate_peer_id("").is_err());
        assert!(validate_peer_id(&"x".repeat(257)).is_err());
        assert!(validate_peer_id(&"x".repeat(64)).is_ok());
        assert!(validate_peer_id("a\nb").is_err());
    }

    #[test]
    fn a_registration_holds_the_canonical_spelling_of_its_uuid() {
        let d = DetectorConfig::new(freq(100), None, None).unwrap();
        let spec =
            PeerSpec::new("6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F", "127.0.0.1", 9, d).unwrap();
        assert_eq!(&*spec.peer_id, "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f");
        let err = PeerSpec::new("9a0e...", "127.0.0.1", 9, d).unwrap_err();
        assert_eq!(err.field, "peer_id");
    }

    #[test]
    fn hosts_are_ip_addresses_or_dns_names() {
        assert_eq!(
            validate_host("peer_host", "127.0.0.1").unwrap(),
            "127.0.0.1"
        );
        assert_eq!(validate_host("peer_host", "[::1]").unwrap(), "::1");
        assert_eq!(validate_host("peer_host", "::1").unwrap(), "::1");
        assert_eq!(
            validate_host("peer_host", "Node-1.Example.com.").unwrap(),
            "node-1.example.com"
        );
        assert_eq!(
            validate_host("peer_host", "localhost").unwrap(),
            "localhost"
        );
        for bad in [
            "",
            "bad host",
            "-a.com",
            "a..b",
            "256.1.1.1",
            "1.2.3",
            "exa_mple.com",
            "http://x",
            &"a".repeat(64),
        ] {
            let err = validate_host("peer_host", bad).unwrap_err();
            assert_eq!(err.field, "peer_host", "{bad}");
        }
    }
}
