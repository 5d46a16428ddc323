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

/// Open claims per client, and in all, within a bound for all clients
/// together: many clients each within their share can still exhaust what
/// the node has (file descriptors, for connections).
#[derive(Debug)]
pub struct ClientShares {
    open: Mutex<Open>,
    total_limit: usize,
}

#[derive(Debug, Default)]
struct Open {
    per_client: HashMap<IpAddr, usize>,
    total: usize,
}

impl Default for ClientShares {
    /// No bound for all clients together, only each client's share.
    fn default() -> Self {
        Self::with_total(usize::MAX)
    }
}

/// Why [`ClientShares::take`] gave no claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client holds its share already.
    ClientShare,
    /// All clients together hold the total.
    Total,
}

impl ClientShares {
    /// Shares of which all clients together hold at most `total_limit`.
    pub fn with_total(total_limit: usize) -> Self {
        Self {
            open: Mutex::default(),
            total_limit,
        }
    }

    /// A claim for the client at `ip`, unless it already holds `limit`, or
    /// all clients together hold the total.
    pub fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Result<ClientClaim, Refused> {
        let client = client_network(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.total_limit {
            return Err(Refused::Total);
        }
        let count = open.per_client.entry(client).or_insert(0);
        if *count >= limit {
            return Err(Refused::ClientShare);
        }
        *count += 1;
        open.total += 1;
        Ok(ClientClaim {
            owner: self.clone(),
            client,
        })
    }

    /// Claims held now, by all clients together.
    pub fn total(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
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
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_client.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

/// What a client's share is counted by: its IPv4 address, or its IPv6 /64.
pub fn client_network(ip: IpAddr) -> IpAddr {
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
        assert_eq!(
            shares.take(b, 2).err(),
            Some(Refused::ClientShare),
            "the /64 has its share"
        );
        assert!(shares.take(other, 2).is_ok(), "another /64 has its own");
        drop((first, second));
        assert!(shares.take(a, 2).is_ok(), "given back on close");
        // IPv4, also as mapped into IPv6: per address.
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _one = shares.take(v4, 1).expect("v4");
        assert!(shares.take(mapped, 1).is_err(), "the same client");
        assert!(shares.take("192.0.2.2".parse().unwrap(), 1).is_ok());
    }

    #[test]
    fn all_clients_together_hold_at_most_the_total() {
        let shares = Arc::new(ClientShares::with_total(3));
        let held: Vec<_> = (1..=3u8)
            .map(|n| shares.take(IpAddr::from([192, 0, 2, n]), 2).unwrap())
            .collect();
        assert_eq!(
            shares.take(IpAddr::from([192, 0, 2, 9]), 2).err(),
            Some(Refused::Total),
            "a new client, within its share, over the total"
        );
        assert_eq!(shares.total(), 3);
        drop(held);
        assert_eq!(shares.total(), 0);
        assert!(shares.take(IpAddr::from([192, 0, 2, 9]), 2).is_ok());
    }
}
