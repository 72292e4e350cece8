//! The connections open on this instance — WebSockets and Server-Sent
//! Events streams —, in one registry that both of their readers share: a
//! rolling restart ([`crate::drain`]: which to close, in which order, and
//! when the last one is gone) and token revocation
//! ([`crate::revocations`]: which to close because their token is revoked).
//! A rebalance reads it too ([`crate::rebalance`]: counts by role, and the
//! connections it may shed), through the drain's methods on [`Live`].
//!
//! One map, not one per reader: each entry would otherwise be kept twice
//! (two hash-map slots, two guards in the connection's future, the kick
//! counted in two places) for every open connection, idle or not. An entry
//! holds what each reader needs: the exam and role for the drain's fair
//! order, the token a revocation looks at (replaced by a `refresh`), and the
//! connection's [`Outbox`] (its queue, for the `token_revoked` frame, and
//! its kick).
//!
//! The registry also stands in for the server's shutdown signal: once the
//! drain has started (and so before the shutdown token is cancelled) a
//! connection that registers is kicked at once, so a connection's loop
//! needs no branch of its own waiting for the shutdown.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    revocations::TokenId,
    room::{ConnId, Outbox, close},
};

/// The open connections (see the module doc).
#[derive(Default)]
pub struct Live {
    /// A std mutex: held to insert, remove, copy or scan, never across an
    /// await.
    inner: Mutex<State>,
    /// Woken when the last listed connection is gone (the drain waits).
    pub(crate) emptied: tokio::sync::Notify,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) open: HashMap<ConnId, Entry>,
    /// Once set, a connection that registers is kicked at once with 1012
    /// (it was accepted just before the listener stopped, and joined after
    /// the drain took its list).
    pub(crate) restarting: bool,
}

/// One open connection.
pub(crate) struct Entry {
    pub(crate) exam: Arc<str>,
    pub(crate) watcher: bool,
    /// The token it currently speaks for (a `refresh` replaces it).
    pub(crate) token: TokenId,
    pub(crate) out: Outbox,
}

/// Keeps a connection listed; removes it when dropped.
pub struct Listed {
    live: Arc<Live>,
    conn: ConnId,
}

impl Live {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain inserts, removals and field updates: a poisoned map is
        // still a valid map.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a connection until the returned guard is dropped. Callers go
    /// through [`crate::revocations::Revocations::register`], which checks
    /// the token once it is listed.
    pub(crate) fn insert(
        self: &Arc<Self>,
        conn: ConnId,
        exam: Arc<str>,
        watcher: bool,
        token: TokenId,
        out: Outbox,
    ) -> Listed {
        let mut s = self.lock();
        if s.restarting {
            out.kick.kick(close::RESTART);
        }
        s.open.insert(
            conn,
            Entry {
                exam,
                watcher,
                token,
                out,
            },
        );
        Listed {
            live: self.clone(),
            conn,
        }
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }
}

impl Listed {
    /// The connection now speaks for another token (an accepted `refresh`).
    pub fn update(&self, token: TokenId) {
        if let Some(entry) = self.live.lock().open.get_mut(&self.conn) {
            entry.token = token;
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let empty = {
            let mut s = self.live.lock();
            s.open.remove(&self.conn);
            s.open.is_empty()
        };
        if empty {
            self.live.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map's slot is what every open connection keeps here: one slot
    /// for both readers, and no field that doubles it.
    #[test]
    fn an_entry_stays_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 104,
            "the registry's entry grew to {} bytes",
            std::mem::size_of::<Entry>()
        );
    }
}
