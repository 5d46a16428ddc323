//! Each client's share of something the node holds open for it
//! (connections, event streams): one counter per client, a claim per use,
//! given back when the claim is dropped.
//!
//! A client is an IPv4 address or an IPv6 /64: one host is commonly given a
//! whole /64, and could otherwise take a share from each of its 2^64
//! addresses. An IPv4 address mapped into IPv6 counts as itself.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Open claims per client.
#[derive(Debug, Default)]
pub struct ClientShares {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientShares {
    /// A claim for the client at `ip`, unless it already holds `limit`.
    pub fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientClaim> {
        let client = client_network(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientClaim {
            owner: self.clone(),
            client,
        })
    }
}

/// One client's claim on its share; given back on drop.
#[derive(Debug)]
pub struct ClientClaim {
    owner: Arc<ClientShares>,
    client: IpAddr,
}

impl Drop for ClientClaim {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// What a client's share is counted by: its IPv4 address, or its IPv6 /64.
fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv6_64_shares_one_allowance() {
        let shares = Arc::new(ClientShares::default());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let first = shares.take(a, 2).expect("first");
        let second = shares.take(b, 2).expect("second, same /64");
        assert!(shares.take(b, 2).is_none(), "the /64 has its share");
        assert!(shares.take(other, 2).is_some(), "another /64 has its own");
        drop((first, second));
        assert!(shares.take(a, 2).is_some(), "given back on close");
        // IPv4, also as mapped into IPv6: per address.
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _one = shares.take(v4, 1).expect("v4");
        assert!(shares.take(mapped, 1).is_none(), "the same client");
        assert!(shares.take("192.0.2.2".parse().unwrap(), 1).is_some());
    }
}
