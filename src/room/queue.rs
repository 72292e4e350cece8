//! The per-connection outbound queue: bounded, single consumer, and free
//! when empty.
//!
//! tokio's bounded `mpsc` allocates its first 32-slot block (about 1.1 KB
//! with the channel) the moment it is created, for every connection, even
//! one that never receives a frame — most students. This queue is a
//! `VecDeque` that allocates on the first push and gives its buffer back
//! once drained, so an idle connection costs one small `Arc`. The room
//! pushes with [`QueueTx::try_send`] (never waits); the connection task
//! awaits [`QueueRx::recv`].

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The bound is reached: the consumer is not keeping up.
    Full,
    /// The consumer is gone.
    Closed,
}

struct Inner {
    /// A std mutex: held for a push or a pop, never across an `.await`.
    state: Mutex<State>,
    /// Wakes the one consumer; a permit is kept if it is not waiting yet.
    ready: Notify,
    bound: usize,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    closed: bool,
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

/// A queue of at most `bound` frames.
pub fn queue(bound: usize) -> (QueueTx, QueueRx) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
        bound,
    });
    (
        QueueTx {
            inner: inner.clone(),
        },
        QueueRx { inner },
    )
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue
        // inconsistent (push_back/pop_front), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl QueueTx {
    /// Queues a frame without waiting.
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), PushError> {
        {
            let mut s = self.inner.lock();
            if s.closed {
                return Err(PushError::Closed);
            }
            if s.frames.len() >= self.inner.bound {
                return Err(PushError::Full);
            }
            s.frames.push_back(frame);
        }
        self.inner.ready.notify_one();
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
    pub async fn recv(&mut self) -> Utf8Bytes {
        loop {
            if let Some(frame) = self.try_recv() {
                return frame;
            }
            self.inner.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let mut s = self.inner.lock();
        let frame = s.frames.pop_front();
        if s.frames.is_empty() && s.frames.capacity() > 0 {
            // Drained: give the buffer back (idle connections cost nothing).
            s.frames = VecDeque::new();
        }
        frame
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.closed = true;
        s.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_up_to_the_bound() {
        let (tx, mut rx) = queue(2);
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
        let (tx, mut rx) = queue(4);
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
}
