//! Open connections per client IP (`limits.connections_per_ip`).
//!
//! The handshake takes a [`ConnectionSlot`] before the upgrade (so a client
//! over its share is answered 429, never accepted and then dropped) and
//! moves it into the connection's task; the slot gives its place back when
//! it is dropped, so every way a connection ends releases it, and so does
//! an upgrade that never completes (axum drops the `on_upgrade` callback,
//! and the slot with it). WebSocket connections and Server-Sent Events
//! streams count alike: both are long-lived connections holding a room
//! membership and a queue.
//!
//! A std Mutex over a map from [`IpKey`] to a count: held for one lookup,
//! never across an `.await`. The map holds only addresses with open
//! connections (a count that reaches zero is removed), so its size is
//! bounded by the number of open connections, itself bounded by
//! `server.max_connections`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use super::IpKey;

/// How many connections each client IP has open on this instance.
#[derive(Clone)]
pub struct ConnectionCounter {
    /// `None`: the limit is off (nothing is counted).
    inner: Option<Arc<Counts>>,
}

struct Counts {
    limit: u32,
    open: Mutex<HashMap<IpKey, u32>>,
}

/// One open connection's place in its IP's count; released on drop.
pub struct ConnectionSlot {
    /// `None` when the limit is off.
    held: Option<(Arc<Counts>, IpKey)>,
}

/// Refused: the IP already has `limit` connections open.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany {
    pub limit: u32,
}

impl ConnectionCounter {
    /// At most `limit` open connections per client IP; 0 = no limit.
    pub fn new(limit: u32) -> Self {
        Self {
            inner: (limit > 0).then(|| {
                Arc::new(Counts {
                    limit,
                    open: Mutex::new(HashMap::new()),
                })
            }),
        }
    }

    /// Takes a place for one more connection from `ip`, or refuses.
    pub fn acquire(&self, ip: IpAddr) -> Result<ConnectionSlot, TooMany> {
        let Some(counts) = &self.inner else {
            return Ok(ConnectionSlot { held: None });
        };
        let key = IpKey::from(ip);
        let mut open = counts.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= counts.limit {
            return Err(TooMany {
                limit: counts.limit,
            });
        }
        *n += 1;
        Ok(ConnectionSlot {
            held: Some((counts.clone(), key)),
        })
    }

    /// Connections `ip` has open (0 when the limit is off).
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.inner.as_ref().map_or(0, |c| {
            let open = c.open.lock().unwrap_or_else(|p| p.into_inner());
            open.get(&IpKey::from(ip)).copied().unwrap_or(0)
        })
    }

    /// Addresses with connections open (0 when the limit is off).
    pub fn addresses(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| {
            c.open.lock().unwrap_or_else(|p| p.into_inner()).len()
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some((counts, key)) = self.held.take() else {
            return;
        };
        let mut open = counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_plus_one_is_refused_and_a_dropped_slot_frees_its_place() {
        let c = ConnectionCounter::new(2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = c.acquire(ip).unwrap();
        let b = c.acquire(ip).unwrap();
        assert_eq!(c.acquire(ip).err(), Some(TooMany { limit: 2 }));
        assert!(
            c.acquire([10, 0, 0, 2].into()).is_ok(),
            "another address has its own count"
        );
        assert_eq!(c.open(ip), 2);
        drop(a);
        assert_eq!(c.open(ip), 1);
        let _c = c.acquire(ip).unwrap();
        drop(b);
        drop(_c);
        assert_eq!(c.open(ip), 0);
        assert_eq!(
            c.addresses(),
            0,
            "an address with nothing open is forgotten"
        );
    }

    #[test]
    fn ipv6_counts_per_64() {
        let c = ConnectionCounter::new(1);
        let _a = c.acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(c.acquire("2001:db8:1:2::ffff".parse().unwrap()).is_err());
        assert!(c.acquire("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn zero_counts_nothing() {
        let c = ConnectionCounter::new(0);
        let slots: Vec<_> = (0..1000)
            .map(|_| c.acquire([10, 0, 0, 1].into()).unwrap())
            .collect();
        assert_eq!(c.addresses(), 0);
        drop(slots);
    }
}
