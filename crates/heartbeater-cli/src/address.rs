//! `HOST:PORT` arguments.

use std::fmt;
use std::str::FromStr;

/// A host (IP address or DNS name; IPv6 in brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT (for example 127.0.0.1:8181)"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        if host.contains(':') && !s.starts_with('[') {
            return Err(format!(
                "{s:?}: put an IPv6 address in brackets, as [::1]:8181"
            ));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_bracketed_ipv6() {
        assert_eq!(
            "127.0.0.1:8181".parse::<HostPort>().unwrap(),
            HostPort {
                host: "127.0.0.1".into(),
                port: 8181
            }
        );
        assert_eq!("[::1]:80".parse::<HostPort>().unwrap().host, "::1");
        assert_eq!(
            "[::1]:80".parse::<HostPort>().unwrap().to_string(),
            "[::1]:80"
        );
        for bad in ["8181", ":80", "h:99999", "h:x", "::1:80"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }
}
