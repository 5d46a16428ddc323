//! `tls`: what TLS costs a node's gRPC calls: unary `Heartbeat` against a
//! node serving TLS, with the same node in plain text as the baseline, each
//! in its own process, measured in alternating rounds.

use anyhow::Context;
use heartbeater::proto::heartbeat_service_client::HeartbeatServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::rpc::{latencies_with, throughput_with};
use super::{median, percentile, raw_client, Settings};
use crate::child::Helper;
use crate::report::Row;

const BASELINE: &str = "the same node in plain text";

/// A CA and a certificate for 127.0.0.1 it signs, written as `cert.pem` and
/// `key.pem` into `dir`; returns the CA's PEM.
fn certificates(dir: &std::path::Path) -> anyhow::Result<String> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(ca.pem())
}

async fn tls_client(addr: &str, ca: &str) -> anyhow::Result<HeartbeatServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect {addr} over TLS"))?;
    Ok(HeartbeatServiceClient::new(channel))
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let ca = certificates(dir.path())?;
    let dir_arg = dir.path().to_str().context("utf-8 temp dir")?.to_owned();
    let plain = Helper::start(&["node"]).await?;
    let secured = Helper::start(&["node", "--tls-dir", &dir_arg]).await?;
    let plain_addr = plain.ready["addr"].as_str().unwrap_or_default().to_owned();
    let tls_addr = secured.ready["addr"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut lat_ours, mut lat_theirs) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds() {
        theirs.push(throughput_with(raw_client(&plain_addr).await?, 64, s.window()).await?);
        ours.push(throughput_with(tls_client(&tls_addr, &ca).await?, 64, s.window()).await?);
        lat_theirs.extend(latencies_with(raw_client(&plain_addr).await?, s.window()).await?);
        lat_ours.extend(latencies_with(tls_client(&tls_addr, &ca).await?, s.window()).await?);
    }
    lat_ours.sort_unstable();
    lat_theirs.sort_unstable();
    Ok(vec![
        Row::new("tls", "throughput_c64", median(ours), "calls/s", "-")
            .against(BASELINE, median(theirs)),
        Row::new(
            "tls",
            "latency_p50_c1_us",
            percentile(&lat_ours, 0.5),
            "us",
            "-",
        )
        .against(BASELINE, percentile(&lat_theirs, 0.5)),
    ])
}
