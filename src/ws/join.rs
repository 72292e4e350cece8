//! A connection joining its exam room: the cluster-wide session lease and
//! how the room treats a session held elsewhere, then what the room needs
//! to know about the student before it admits them (answered questions,
//! the previous client, a control record changed a moment ago), read
//! concurrently so a join pays one round trip.

use tokio::sync::oneshot;

use super::Connection;
use crate::{
    broker::Broker,
    config::SecondSession,
    room::{ClusterJoin, Outbox, RoomCmd, RoomHandle, StudentId, StudentJoin, rate::LazyBucket},
};

impl Connection {
    /// Takes the student's cluster-wide session lease and says how the room
    /// should treat a session held on another instance.
    pub(super) async fn claim_session(&self) -> ClusterJoin {
        let Broker::Redis(redis) = &self.app.broker else {
            return ClusterJoin::Alone;
        };
        if self.watcher() {
            return ClusterJoin::Alone;
        }
        let ttl = self.app.settings.exam.lease_ttl;
        let holder = redis.holder(&self.session_id.to_string());
        let (exam, student) = (&self.exam_id, &self.user);
        let previous = match redis.claim_lease(exam, student, &holder, ttl, false).await {
            Ok(None) => return ClusterJoin::Alone,
            Ok(Some(p)) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the session lease; admitting");
                return ClusterJoin::Alone;
            }
        };
        let (instance, session) = previous.split_once('/').unwrap_or((&previous, ""));
        if instance == self.app.instance_id.as_ref() {
            // Held here: the local room applies the policy (and its lease
            // renewal names whichever session wins).
            return ClusterJoin::Alone;
        }
        let (session, in_grace) = match session.strip_suffix("/grace") {
            Some(s) => (s, true),
            None => (session, false),
        };
        let same_client = in_grace || self.previous_session.as_deref() == Some(session);
        let state = redis
            .instance_state(instance)
            .await
            .unwrap_or(crate::broker::redis::InstanceState::Alive);
        let alive = state == crate::broker::redis::InstanceState::Alive;
        let policy = self.app.settings.exam.second_session;
        if alive && !same_client && policy == SecondSession::Reject {
            // A `reset_session` lifts the block once: this connection takes over.
            let reset = self.app.store.consume_reset(exam, student).await;
            if !reset.unwrap_or(false) {
                return ClusterJoin::RejectedElsewhere;
            }
        }
        let _ = redis.claim_lease(exam, student, &holder, ttl, true).await;
        if state != crate::broker::redis::InstanceState::Gone {
            // The other instance closes its socket (or ends its grace
            // period) for this student, without an event of its own; a
            // draining one too, so a socket it has not closed yet does not
            // run beside this one until the drain reaches it.
            // With the handover token, if one was presented: the holder
            // checks it against its HTTP session and, if it is that
            // session's, closes it without `session_invalidated` (8.4).
            let _ = redis.send_kick(exam, student, self.handover_claim()).await;
        }
        if alive && !same_client {
            ClusterJoin::TookOverElsewhere
        } else {
            // The same client back (it named its session, or its old socket
            // was already gone), or its instance died: a reconnect.
            ClusterJoin::Alone
        }
    }

    /// The previous session this connection names and the handover token
    /// it presented for it (8.4), if it did both.
    fn handover_claim(&self) -> Option<(&str, &uuid::Uuid)> {
        match (&self.previous_session, &self.handover) {
            (Some(previous), Some(token)) => Some((previous.as_str(), &**token)),
            _ => None,
        }
    }

    /// Whether this connection presented the handover token of the open
    /// HTTP session here that it names as its previous session (8.4).
    fn hands_over(&self) -> bool {
        self.handover_claim().is_some_and(|(previous, token)| {
            self.app
                .http_sessions
                .hands_over(previous, token, &self.exam_id, &self.user)
        })
    }

    /// The student's answered questions, stored through any instance: from
    /// Redis (rooms record each committed answer there before its ack), so
    /// a reconnect storm costs no database query per student; from the
    /// database only when Redis has no state for the exam or cannot answer,
    /// and then in one read per exam that the burst's joins share
    /// ([`super::answered`]), not one query per join.
    async fn answered(
        &self,
        redis: &crate::broker::RedisBroker,
    ) -> Option<std::collections::HashSet<String>> {
        let shared = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            redis.answered(&self.exam_id, &self.user),
        )
        .await;
        if let Ok(Ok(Some(answered))) = shared {
            return Some(answered);
        }
        self.app
            .answered_reads
            .answered(&self.app.store, &self.exam_id, &self.user)
            .await
    }

    /// Where the student's previous admitted session came from, on
    /// whichever instance it was (`ip_changed`, `device_changed`:
    /// room/signals.rs); the room records this one once it is admitted.
    async fn previous_client(
        &self,
        redis: &crate::broker::RedisBroker,
    ) -> Option<crate::room::signals::Client> {
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            redis.client_of(&self.exam_id, &self.user),
        )
        .await;
        match read {
            Ok(Ok(before)) => before.map(|b| crate::room::signals::Client::decode(&b)),
            _ => None,
        }
    }

    /// The student's control record if it changed within the last seconds
    /// (Redis notes every change, `broker::redis::CONTROL_NOTE`): read from
    /// the database, so a change made on another instance a moment ago
    /// holds from the welcome on, even before its event reaches the room.
    async fn recent_control(
        &self,
        redis: &crate::broker::RedisBroker,
    ) -> Option<Box<crate::control::StudentControl>> {
        let wait = std::time::Duration::from_secs(2);
        let changed = tokio::time::timeout(wait, redis.control_changed(&self.exam_id, &self.user));
        if !matches!(changed.await, Ok(Ok(true))) {
            return None;
        }
        let read = self.app.store.student_control(&self.exam_id, &self.user);
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(control)) => control.map(Box::new),
            _ => None, // the event still brings it
        }
    }

    /// Joins the room, retrying if it ended just as we looked it up. Also
    /// returns the message-rate bucket to use: a student's comes from the
    /// room (shared by all their connections), a teacher's is its own.
    pub(super) async fn join(&self, out: Outbox) -> Option<(RoomHandle, LazyBucket)> {
        let cluster = self.claim_session().await;
        let (answered, previous_client, control) = match (&self.app.broker, self.watcher()) {
            (Broker::Redis(redis), false) => tokio::join!(
                self.answered(redis),
                self.previous_client(redis),
                self.recent_control(redis)
            ),
            _ => (None, None, None),
        };
        // Empty until the first message (room/rate.rs).
        let fresh = LazyBucket::default;
        if self.watcher() {
            let registry = &self.app.registry;
            let joined = registry.join_watcher(&self.exam_id, self.id, &out, self.last_seq);
            let Some(room) = joined.await else {
                if !self.app.shutdown.is_cancelled() {
                    tracing::error!("could not join the exam room");
                }
                return None;
            };
            return Some((room, fresh()));
        }
        let handover = self.hands_over();
        for _ in 0..8 {
            if self.app.shutdown.is_cancelled() {
                return None;
            }
            let room = self.app.registry.get_or_start(&self.exam_id);
            let (reply, joined) = oneshot::channel();
            let cmd = RoomCmd::JoinStudent(Box::new(StudentJoin {
                conn: self.id,
                who: StudentId {
                    id: self.user.to_string(),
                    name: self.name.to_string(),
                },
                session_id: self.session_id.to_string(),
                previous_session: self.previous_session.clone(),
                handover,
                peer_ip: Some(self.client.ip.to_string()),
                user_agent: Some(self.user_agent.clone()),
                previous_client: previous_client.clone(),
                cluster,
                answered: answered.clone(),
                exam_clock: self.app.rosters.exam_clock(&self.exam_id),
                control: control.clone(),
                out: out.clone(),
                rate: fresh(),
                reply,
            }));
            if room.send(cmd).await.is_ok()
                && let Ok(rate) = joined.await
            {
                return Some((room, rate));
            }
        }
        tracing::error!("could not join the exam room");
        None
    }
}
