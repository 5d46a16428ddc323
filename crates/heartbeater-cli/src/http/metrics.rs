//! `/metrics`: a node's counters in the Prometheus text format, encoded by
//! `prometheus-client` from one snapshot per scrape. The node keeps plain
//! atomics (`HeartbeatServer::metrics` and friends); nothing here is on the
//! heartbeat path.

use heartbeater::{HeartbeatServer, HistogramSnapshot, NodeMetrics, PeerState, PeerStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds for the scheduler-lateness histogram, in seconds.
const LATENESS_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

/// Everything one scrape reports, copied out of the node first (the copy
/// is async, the encoding is not).
#[derive(Debug)]
pub struct Snapshot {
    identity: String,
    epoch: u64,
    work: NodeMetrics,
    datagrams: heartbeater::DatagramStats,
    security: heartbeater::SecurityStats,
    pauses: heartbeater::PauseStats,
    indirect: heartbeater::IndirectStats,
    lateness: HistogramSnapshot,
    awareness: u8,
    answered: u64,
    quarantined: usize,
    counts: heartbeater::StateCounts,
    /// Per-peer series, or `None` when the registry is past the limit.
    peers: Option<Vec<PeerStatus>>,
    topics: Vec<heartbeater::TopicStats>,
    label_limit: usize,
}

impl Snapshot {
    /// Copies what the node knows now. Per-peer and per-topic series only
    /// while there are at most `label_limit` of them (the cardinality
    /// guard).
    pub async fn take(server: &HeartbeatServer, label_limit: usize) -> Snapshot {
        let counts = server.peer_counts().await;
        let peers = if counts.total() <= label_limit {
            Some(server.peers().await)
        } else {
            None
        };
        Snapshot {
            identity: server.identity(),
            epoch: server.epoch(),
            work: server.metrics(),
            datagrams: server.datagram_stats(),
            security: server.security_stats(),
            pauses: server.pause_stats(),
            indirect: server.indirect_stats(),
            lateness: server.scheduler_lateness().histogram(LATENESS_BUCKETS),
            awareness: server.awareness_score(),
            answered: server.heartbeats_answered(),
            quarantined: server.quarantined_peers().len(),
            counts,
            peers,
            topics: server.topics(),
            label_limit,
        }
    }

    /// The Prometheus text exposition of this snapshot.
    pub fn encode(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(shortest_values(&out))
    }
}

/// `text` with every float sample value in its shortest form that reads
/// back as the same number (`0.002994`): the encoder's `dtoa` does not
/// always find it and writes up to 19 digits (`0.0029939999999999999`),
/// noise to a person reading `curl` output. The value is the last field of a
/// sample line: the node writes no timestamps or exemplars.
fn shortest_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let shorter = (!line.starts_with('#'))
            .then(|| line.rsplit_once(' '))
            .flatten()
            .filter(|(_, value)| value.contains(['.', 'e', 'E']))
            .and_then(|(series, value)| {
                let v: f64 = value.parse().ok()?;
                v.is_finite().then(|| format!("{series} {v}"))
            });
        out.push_str(shorter.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The OpenMetrics text `prometheus-client` writes, in the classic
/// Prometheus text format (0.0.4) that `promtool check metrics`, older
/// scrapers and people with `curl` read: a counter's HELP and TYPE name
/// its `_total` series, and there is no `# UNIT` or `# EOF` line.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

type Labels<'a> = [(&'static str, &'a str); 1];

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Option<Labels<'_>>, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        match labels {
            Some(l) => m
                .encode_family(l)?
                .encode_counter::<NoLabelSet, u64, u64>(v, None)?,
            None => m.encode_counter::<NoLabelSet, u64, u64>(v, None)?,
        }
    }
    Ok(())
}

fn seconds_counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Counter)?
        .encode_counter::<NoLabelSet, f64, f64>(&v, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Option<Labels<'_>>, V)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        match labels {
            Some(l) => m.encode_family(l)?.encode_gauge(v)?,
            None => m.encode_gauge(v)?,
        }
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    // The text format wants per-bucket counts; the snapshot is cumulative.
    let mut previous = 0;
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(h.buckets.len() + 1);
    for &(bound, cumulative) in &h.buckets {
        buckets.push((bound, cumulative.saturating_sub(previous)));
        previous = cumulative;
    }
    buckets.push((f64::INFINITY, h.count.saturating_sub(previous)));
    e.encode_descriptor(name, help, unit, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        let w = &self.work;
        let secs = Some(&Unit::Seconds);
        gauge(
            e,
            "heartbeater_node_epoch",
            "This node's epoch (it grows at every start).",
            None,
            &[(Some([("identity", self.identity.as_str())]), self.epoch)],
        )?;
        let path = |p: &'static str| Some([("path", p)]);
        counter(
            e,
            "heartbeater_heartbeats_sent",
            "Heartbeats sent to peers, by path.",
            None,
            &[
                (path("datagram"), w.datagram.sent),
                (path("grpc"), w.grpc.sent),
            ],
        )?;
        counter(
            e,
            "heartbeater_heartbeats_acked",
            "Valid acknowledgements received, by the path they came on.",
            None,
            &[
                (path("datagram"), w.datagram.acked),
                (path("grpc"), w.grpc.acked),
            ],
        )?;
        counter(
            e,
            "heartbeater_heartbeats_timed_out",
            "Heartbeats whose timeout passed with no valid answer, by the path they were sent on.",
            None,
            &[
                (path("datagram"), w.datagram.timed_out),
                (path("grpc"), w.grpc.timed_out),
            ],
        )?;
        counter(
            e,
            "heartbeater_heartbeats_answered",
            "Heartbeats this node answered, from its monitors and clients.",
            None,
            &[(None, self.answered)],
        )?;
        histogram(
            e,
            "heartbeater_heartbeat_rtt",
            "Round-trip time of every valid acknowledgement.",
            secs,
            &w.rtt_seconds,
        )?;
        let state = |s: &'static str| Some([("state", s)]);
        gauge(
            e,
            "heartbeater_peers",
            "Registered peers, by liveness state.",
            None,
            &[
                (state("alive"), self.counts.alive as u64),
                (state("unreachable"), self.counts.unreachable as u64),
                (state("unknown"), self.counts.unknown as u64),
            ],
        )?;
        gauge(
            e,
            "heartbeater_peers_quarantined",
            "Stored peer records that could not be read at start (see docs/OPERATIONS.md).",
            None,
            &[(None, self.quarantined as u64)],
        )?;
        let t = &w.transitions;
        let kind = |k: &'static str| Some([("kind", k)]);
        counter(
            e,
            "heartbeater_transitions",
            "Liveness events, by kind.",
            None,
            &[
                (kind("registered"), t.registered),
                (kind("peer_up"), t.peer_up),
                (kind("peer_down"), t.peer_down),
                (kind("restarted"), t.restarted),
                (kind("identity_mismatch"), t.identity_mismatch),
                (kind("deregistered"), t.deregistered),
                (kind("reached_indirectly"), t.reached_indirectly),
            ],
        )?;
        let i = &self.indirect;
        let what = |k: &'static str| Some([("what", k)]);
        counter(
            e,
            "heartbeater_indirect_probes",
            "Indirect probes of this node as a monitor: rounds opened before a conviction, \
             requests sent to helpers, answers received, convictions prevented, rounds without \
             a helper to ask.",
            None,
            &[
                (what("rounds"), i.rounds),
                (what("requests_sent"), i.requests_sent),
                (what("answers"), i.answers),
                (what("convictions_prevented"), i.convictions_prevented),
                (what("without_helpers"), i.without_helpers),
            ],
        )?;
        counter(
            e,
            "heartbeater_indirect_requests_served",
            "Indirect probe requests of other monitors, by outcome: served (the suspect was \
             pinged), refused (over the monitor's rate, or no room), answered.",
            None,
            &[
                (Some([("outcome", "served")]), i.served),
                (Some([("outcome", "refused")]), i.refused),
                (Some([("outcome", "answered")]), i.answered),
            ],
        )?;
        counter(
            e,
            "heartbeater_peer_restarts",
            "Restarts seen: a peer answered with a higher epoch.",
            None,
            &[(None, t.restarted)],
        )?;
        counter(
            e,
            "heartbeater_identity_mismatches",
            "Answers from another identity than the registered one.",
            None,
            &[(None, t.identity_mismatch)],
        )?;
        let d = &self.datagrams;
        let reason = |r: &'static str| Some([("reason", r)]);
        counter(
            e,
            "heartbeater_datagrams_dropped",
            "Heartbeat datagrams dropped, by reason: malformed, unauthenticated (cluster key), \
             forged_token (not made by this node), stale (answers a heartbeat already settled), \
             too_short (a ping whose pong would be longer), receive_buffer_full (the kernel \
             dropped it: this node fell behind reading).",
            None,
            &[
                (reason("malformed"), d.malformed),
                (reason("unauthenticated"), d.auth_failed),
                (reason("forged_token"), d.forged_tokens),
                (reason("stale"), d.unmatched_pongs),
                (reason("too_short"), d.too_short),
                (reason("receive_buffer_full"), d.dropped_on_receive),
            ],
        )?;
        let s = &self.security;
        counter(
            e,
            "heartbeater_grpc_refused",
            "gRPC calls and connections refused, by reason.",
            None,
            &[
                (reason("unauthenticated"), s.unauthenticated_calls),
                (reason("connections_over_limit"), s.connections_over_limit),
                (reason("connections_over_total"), s.connections_over_total),
                (reason("tls_handshake_failed"), s.tls_handshakes_failed),
                (reason("no_preface"), s.silent_connections),
                (reason("idle"), s.idle_connections),
            ],
        )?;
        histogram(
            e,
            "heartbeater_scheduler_lateness",
            "How late heartbeats left against their schedule.",
            secs,
            &self.lateness,
        )?;
        counter(
            e,
            "heartbeater_local_pauses",
            "Times this node did not run for longer than its pause threshold.",
            None,
            &[(None, self.pauses.pauses)],
        )?;
        seconds_counter(
            e,
            "heartbeater_local_pause",
            "Time spent in local pauses.",
            self.pauses.total.as_secs_f64(),
        )?;
        counter(
            e,
            "heartbeater_heartbeats_voided",
            "Heartbeats in flight across a local pause, neither answered nor missed.",
            None,
            &[(None, self.pauses.voided_heartbeats)],
        )?;
        counter(
            e,
            "heartbeater_heartbeats_voided_overloaded",
            "Heartbeats this node could not carry (send buffer full, gRPC calls at their limit), neither answered nor missed.",
            None,
            &[(None, self.pauses.voided_overloaded)],
        )?;
        gauge(
            e,
            "heartbeater_awareness_score",
            "Local health score, 0 to 3: above 0, conviction thresholds are stretched.",
            None,
            &[(None, u64::from(self.awareness))],
        )?;
        histogram(
            e,
            "heartbeater_registry_write",
            "Duration of each synced registry write.",
            secs,
            &w.registry_write_seconds,
        )?;
        histogram(
            e,
            "heartbeater_registry_write_group_size",
            "Registry changes carried by each synced write.",
            None,
            &w.registry_group_size,
        )?;
        self.encode_labelled(e)
    }
}

impl Snapshot {
    /// The series with a label per peer or per topic, within the guard.
    fn encode_labelled(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            e,
            "heartbeater_metrics_peer_series_suppressed",
            "1 while per-peer series are left out: more peers than metrics_peer_labels.",
            None,
            &[(None, u64::from(self.peers.is_none()))],
        )?;
        if let Some(peers) = &self.peers {
            fn label(p: &PeerStatus) -> Option<Labels<'_>> {
                Some([("peer", p.peer_id.as_str())])
            }
            let up: Vec<_> = peers
                .iter()
                .map(|p| (label(p), u64::from(p.state == PeerState::Alive)))
                .collect();
            gauge(
                e,
                "heartbeater_peer_up",
                "1 while the peer is alive, 0 while unreachable or not yet heard.",
                None,
                &up,
            )?;
            let missed: Vec<_> = peers
                .iter()
                .map(|p| (label(p), u64::from(p.missed)))
                .collect();
            gauge(
                e,
                "heartbeater_peer_missed",
                "Consecutive heartbeats the peer missed, right now.",
                None,
                &missed,
            )?;
            let rtt: Vec<_> = peers
                .iter()
                .filter_map(|p| p.last_rtt.map(|r| (label(p), r.as_secs_f64())))
                .collect();
            gauge(
                e,
                "heartbeater_peer_last_rtt",
                "Round-trip time of the peer's last valid reply.",
                Some(&Unit::Seconds),
                &rtt,
            )?;
        }
        let topics: Vec<_> = self.topics.iter().take(self.label_limit).collect();
        fn topic<'a>(t: &&'a heartbeater::TopicStats) -> Option<Labels<'a>> {
            Some([("topic", t.topic.as_str())])
        }
        let subs: Vec<_> = topics
            .iter()
            .map(|t| (topic(t), t.subscribers.len() as u64))
            .collect();
        gauge(
            e,
            "heartbeater_topic_subscribers",
            "Subscription streams open, per published topic.",
            None,
            &subs,
        )?;
        let connected: Vec<_> = topics
            .iter()
            .map(|t| (topic(t), t.connected.len() as u64))
            .collect();
        gauge(
            e,
            "heartbeater_topic_clients_connected",
            "Clients answering the topic's heartbeats.",
            None,
            &connected,
        )?;
        let sent: Vec<_> = topics
            .iter()
            .map(|t| (topic(t), t.heartbeats_sent))
            .collect();
        counter(
            e,
            "heartbeater_topic_heartbeats_sent",
            "Heartbeat requests sent to a topic's clients.",
            None,
            &sent,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_values_are_written_in_their_shortest_form() {
        let text = "# HELP t_seconds Time, e.g. 0.1.\n\
                    t_seconds_sum 0.0029940000000000001\n\
                    t_seconds_bucket{le=\"0.00025\"} 7\n\
                    u_seconds_total{peer=\"a b\"} 0.31158000000000001\n\
                    v 1.0e-7\nw +Inf\nx NaN\n# EOF\n";
        assert_eq!(
            shortest_values(text),
            "# HELP t_seconds Time, e.g. 0.1.\nt_seconds_sum 0.002994\n\
             t_seconds_bucket{le=\"0.00025\"} 7\nu_seconds_total{peer=\"a b\"} 0.31158\n\
             v 0.0000001\nw +Inf\nx NaN\n# EOF\n"
        );
    }

    #[test]
    fn classic_text_names_counters_by_their_total_series() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 3\n\
                  # HELP t_seconds Time.\n# TYPE t_seconds histogram\n# UNIT t_seconds seconds\n\
                  t_seconds_count 1\n# EOF\n";
        assert_eq!(
            to_classic_text(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n\
             # HELP t_seconds Time.\n# TYPE t_seconds histogram\nt_seconds_count 1\n"
        );
    }
}
