//! The per-connection outbound queue: bounded, single consumer, free when
//! empty, and the connection's two control signals (a kick that closes it,
//! a probe that asks it to ping its peer).
//!
//! tokio's bounded `mpsc` allocates its first 32-slot block (about 1.1 KB
//! with the channel) the moment it is created, for every connection, even
//! one that never receives a frame — most students. This queue is a
//! `VecDeque` that allocates on the first push and gives its buffer back
//! once drained. The room pushes with [`QueueTx::try_send`] (never waits);
//! the connection task awaits [`QueueRx::recv`].
//!
//! The kick and the probe live in the same shared state, behind one waker:
//! every future that waits on it ([`QueueRx::recv`], [`Kick::kicked`],
//! [`Kick::probed`]) is polled by the one connection task, so one waker
//! slot serves them all. A `CancellationToken` plus two `Notify`s cost
//! about 200 bytes of heap and 250 bytes of the connection's future, for
//! every idle connection.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use axum::extract::ws::Utf8Bytes;

use super::CloseReason;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The bound is reached: the consumer is not keeping up.
    Full,
    /// The consumer is gone.
    Closed,
}

struct Inner {
    /// A std mutex: held for a push, a pop or a flag, never across an
    /// `.await`.
    state: Mutex<State>,
    bound: usize,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    closed: bool,
    /// Set once: the first kick's reason wins.
    kicked: Option<CloseReason>,
    /// A probe asked for and not yet taken.
    probe: bool,
    /// Durable messages of this connection (answers, submissions) handed
    /// to the database and not committed yet ([`Kick::commit_started`]):
    /// a rebalance never closes a connection mid-commit.
    in_flight: u32,
    /// The connection task's waker, registered by whichever of its futures
    /// last found nothing to do.
    waker: Option<Waker>,
}

impl State {
    fn park(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

/// The room's side (cloneable).
#[derive(Clone)]
pub struct QueueTx {
    inner: Arc<Inner>,
}

/// The connection's side.
pub struct QueueRx {
    inner: Arc<Inner>,
}

/// A one-shot "close this connection" signal (the first reason wins), and
/// "is your peer still there?" probes: the connection pings and reports the
/// pong. Cloneable; shares the queue's state.
#[derive(Clone)]
pub struct Kick {
    inner: Arc<Inner>,
}

/// A queue of at most `bound` frames, and the kick of its connection.
pub fn queue(bound: usize) -> (QueueTx, QueueRx, Kick) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            closed: false,
            kicked: None,
            probe: false,
            in_flight: 0,
            waker: None,
        }),
        bound,
    });
    (
        QueueTx {
            inner: inner.clone(),
        },
        QueueRx {
            inner: inner.clone(),
        },
        Kick { inner },
    )
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue
        // inconsistent (push_back/pop_front, flags), so a poisoned lock is
        // usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state, then wakes the connection task (outside the lock).
    fn signal(&self, change: impl FnOnce(&mut State) -> bool) {
        let waker = {
            let mut s = self.lock();
            if !change(&mut s) {
                return;
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl QueueTx {
    /// Queues a frame without waiting.
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), PushError> {
        let waker = {
            let mut s = self.inner.lock();
            if s.closed {
                return Err(PushError::Closed);
            }
            if s.frames.len() >= self.inner.bound {
                return Err(PushError::Full);
            }
            s.frames.push_back(frame);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Free slots left.
    pub fn capacity(&self) -> usize {
        self.inner
            .bound
            .saturating_sub(self.inner.lock().frames.len())
    }
}

impl QueueRx {
    /// The next frame; waits while the queue is empty. Never ends on its
    /// own: the connection ends by its other branches.
    pub async fn recv(&self) -> Utf8Bytes {
        poll_fn(|cx| {
            let mut s = self.inner.lock();
            match pop(&mut s) {
                Some(frame) => Poll::Ready(frame),
                None => {
                    s.park(cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The next frame if one is queued.
    pub fn try_recv(&self) -> Option<Utf8Bytes> {
        pop(&mut self.inner.lock())
    }
}

fn pop(s: &mut State) -> Option<Utf8Bytes> {
    let frame = s.frames.pop_front();
    if s.frames.is_empty() && s.frames.capacity() > 0 {
        // Drained: give the buffer back (idle connections cost nothing).
        s.frames = VecDeque::new();
    }
    frame
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.closed = true;
        s.frames.clear();
    }
}

impl Kick {
    /// Closes the connection with `reason`, unless it was kicked already.
    pub fn kick(&self, reason: CloseReason) {
        self.inner.signal(|s| {
            if s.kicked.is_some() {
                return false;
            }
            s.kicked = Some(reason);
            true
        });
    }

    /// Waits for a kick; its reason.
    pub async fn kicked(&self) -> CloseReason {
        poll_fn(|cx| {
            let mut s = self.inner.lock();
            match &s.kicked {
                Some(r) => Poll::Ready(r.clone()),
                None => {
                    s.park(cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The reason, if kicked.
    pub fn reason(&self) -> Option<CloseReason> {
        self.inner.lock().kicked.clone()
    }

    /// A durable message of this connection goes to the database: until
    /// the returned guard is dropped (its commit is known), the connection
    /// is mid-commit ([`Kick::kick_unless_in_flight`]).
    pub fn commit_started(&self) -> InFlight {
        self.inner.lock().in_flight += 1;
        InFlight { kick: self.clone() }
    }

    /// Whether a durable message of this connection awaits its commit.
    pub fn in_flight(&self) -> bool {
        self.inner.lock().in_flight > 0
    }

    /// Kicks with `reason` unless the connection was kicked already or has
    /// a durable message awaiting its commit (checked under the same lock
    /// as the kick, so no commit starts in between); true if it kicked.
    pub fn kick_unless_in_flight(&self, reason: CloseReason) -> bool {
        let mut kicked = false;
        self.inner.signal(|s| {
            if s.kicked.is_some() || s.in_flight > 0 {
                return false;
            }
            s.kicked = Some(reason);
            kicked = true;
            true
        });
        kicked
    }

    /// Asks the connection to check that its peer is alive.
    pub fn probe(&self) {
        self.inner.signal(|s| {
            s.probe = true;
            true
        });
    }

    /// Waits for a probe request, and takes it.
    pub async fn probed(&self) {
        poll_fn(|cx| {
            let mut s = self.inner.lock();
            if std::mem::take(&mut s.probe) {
                Poll::Ready(())
            } else {
                s.park(cx);
                Poll::Pending
            }
        })
        .await
    }
}

/// A durable message awaiting its commit ([`Kick::commit_started`]).
pub struct InFlight {
    kick: Kick,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.kick.inner.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_mid_commit_is_not_kicked_by_a_rebalance() {
        let (_tx, _rx, kick) = queue(4);
        let first = kick.commit_started();
        let second = kick.commit_started();
        assert!(kick.in_flight());
        assert!(!kick.kick_unless_in_flight(crate::room::close::REBALANCE));
        drop(first);
        assert!(!kick.kick_unless_in_flight(crate::room::close::REBALANCE));
        drop(second);
        assert!(!kick.in_flight());
        assert!(kick.kick_unless_in_flight(crate::room::close::REBALANCE));
        assert_eq!(kick.reason(), Some(crate::room::close::REBALANCE));
        assert!(
            !kick.kick_unless_in_flight(crate::room::close::REBALANCE),
            "once"
        );
    }

    #[tokio::test]
    async fn frames_come_out_in_order_up_to_the_bound() {
        let (tx, rx, _) = queue(2);
        assert_eq!(tx.capacity(), 2);
        tx.try_send("a".into()).unwrap();
        tx.try_send("b".into()).unwrap();
        assert_eq!(tx.try_send("c".into()), Err(PushError::Full));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(rx.recv().await.as_str(), "a");
        assert_eq!(
            rx.try_recv().map(|f| f.as_str().to_owned()),
            Some("b".into())
        );
        assert!(rx.try_recv().is_none());
        assert_eq!(tx.capacity(), 2);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_and_a_gone_one_refuses() {
        let (tx, rx, _) = queue(4);
        let waiter = tokio::spawn(async move {
            let f = rx.recv().await;
            (f, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send("x".into()).unwrap();
        let (frame, rx) = waiter.await.unwrap();
        assert_eq!(frame.as_str(), "x");
        drop(rx);
        assert_eq!(tx.try_send("y".into()), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn the_first_kick_wins_and_wakes_a_waiting_connection() {
        let (_tx, rx, kick) = queue(4);
        let room_side = kick.clone();
        let conn = tokio::spawn(async move {
            tokio::select! {
                _ = rx.recv() => None,
                reason = kick.kicked() => Some(reason),
            }
        });
        tokio::task::yield_now().await;
        room_side.kick(crate::room::close::TOO_SLOW);
        room_side.kick(crate::room::close::GOING_AWAY);
        assert_eq!(conn.await.unwrap(), Some(crate::room::close::TOO_SLOW));
        assert_eq!(room_side.reason(), Some(crate::room::close::TOO_SLOW));
    }

    #[tokio::test]
    async fn a_probe_is_taken_once() {
        let (_tx, _rx, kick) = queue(4);
        let waiter = kick.clone();
        let conn = tokio::spawn(async move { waiter.probed().await });
        tokio::task::yield_now().await;
        kick.probe();
        conn.await.unwrap();
        // Taken: a second wait pends until the next probe.
        use futures_util::FutureExt;
        assert!(
            kick.probed().now_or_never().is_none(),
            "a probe must be consumed by the wait that saw it"
        );
        kick.probe();
        kick.probed().await;
    }
}
