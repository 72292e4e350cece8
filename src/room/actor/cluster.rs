//! The room's side of scale-out: publishing through the broker, receiving
//! numbered events from it, keeping a mirror of students attached to other
//! instances, re-synchronising after a Redis outage, session leases, and
//! expiring the presence of students whose instance died.
//!
//! With `Broker::Memory` none of this runs: `publish_event` numbers and
//! delivers at once, as a single instance always did.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;

use super::{Audience, Room, Timer};
use crate::{
    broker::{Broker, Draft, Published, SharedState},
    protocol::{Seq, ServerMsg, StudentState},
    room::{RoomCmd, close},
    store::{now_ms, writer::Record},
};

#[derive(serde::Deserialize)]
struct StudentEvent {
    #[serde(default)]
    seq: Seq,
    student: StudentState,
}

/// How long one reload of the shared state may take before it is tried
/// again, and the pauses between tries (doubling up to the maximum).
const RESYNC_TIMEOUT: Duration = Duration::from_secs(3);
const RESYNC_RETRY: Duration = Duration::from_millis(500);
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(5);

impl Room {
    /// Emits an event: numbered here (memory), or handed to Redis and
    /// delivered when it comes back numbered (cluster).
    pub(super) fn publish_event(
        &mut self,
        audience: Audience,
        kind: &'static str,
        student: Option<&Arc<str>>,
        build: impl Fn(&Room, Seq) -> Option<Utf8Bytes>,
    ) {
        let broker = self.ctx.broker.clone();
        match &broker {
            Broker::Memory => {
                let seq = self.next_seq();
                let Some(bytes) = build(self, seq) else {
                    return;
                };
                self.emit(seq, bytes, audience, kind, student);
            }
            broker @ Broker::Redis(_) if broker.healthy() => {
                let Some(body) = build(self, 0) else { return };
                let queued = broker.publish(Draft {
                    exam: self.exam_id.clone(),
                    body: body.as_str().to_owned(),
                    kind,
                    student: student.cloned(),
                    floor: self.seq,
                    delivered_locally: false,
                });
                if !queued {
                    self.diverged = true; // teachers get a snapshot at resync
                }
            }
            broker => {
                // Redis is away: keep serving our own members now, under a
                // provisional local seq; the event still goes to Redis (and
                // the other instances) once it is back, and our teachers get
                // a snapshot then, since the cluster numbers it anew.
                let (Some(bytes), Some(draft_body)) = (build(self, self.seq + 1), build(self, 0))
                else {
                    return;
                };
                self.seq += 1;
                let seq = self.seq;
                self.diverged = true;
                self.remember(seq, &bytes);
                self.deliver(&bytes, audience);
                if audience == Audience::Everyone {
                    // Not kept for `resume` under a number the cluster will
                    // not use: a student resuming from before it lost it.
                    self.announcement_floor = self.seq;
                }
                let _ = broker.publish(Draft {
                    exam: self.exam_id.clone(),
                    body: draft_body.as_str().to_owned(),
                    kind,
                    student: student.cloned(),
                    floor: self.seq,
                    delivered_locally: true,
                });
            }
        }
    }

    /// A numbered event from the broker (ours or another instance's).
    pub(super) fn on_published(&mut self, p: Published) {
        let ours = self.ctx.broker.instance() == Some(&p.origin);
        // The origin writes its events to the log, including those its
        // members already saw under a provisional seq (whose number the
        // room may have passed meanwhile).
        if ours
            && (p.seq > self.seq || p.delivered_at_origin)
            && self.logs(&p.kind, p.event.as_str())
        {
            self.ctx.writer.write(Record::Event {
                exam_id: self.exam_id.clone(),
                seq: p.seq as i64,
                at: now_ms(),
                student_id: p.student.clone(),
                kind: match p.kind.as_str() {
                    "alert" => "alert",
                    "alert_resolved" => "alert_resolved",
                    "announcement" => "announcement",
                    "exam_update" => "exam_update",
                    "action" => "action",
                    "delivery" => "delivery",
                    "hand" => "hand",
                    "hand_lowered" => "hand_lowered",
                    "student_control" => "student_control",
                    _ => "student",
                },
                payload: p.event.clone(),
            });
            self.log_alert(p.seq, &p.kind, p.event.as_str());
        }
        if p.seq <= self.confirmed {
            return; // already have it (e.g. loaded at start-up)
        }
        self.confirmed = p.seq;
        if ours && p.delivered_at_origin {
            // Back from an outage, numbered: our members saw it under a
            // provisional seq. Our drafts queued before the outage showed
            // come back before it, numbered above what our teachers saw,
            // so they got them live after newer state; and a resync may
            // have run before it was numbered. The snapshot after the last
            // of them is the truth (coalesced: one reload at a time).
            self.reload_for_late_event();
        }
        if p.seq <= self.seq {
            // Numbered below what our teachers saw under provisional seqs
            // (an outage): they get a snapshot at resync; students still
            // need other instances' announcements.
            if p.kind == "announcement" && !(ours && p.delivered_at_origin) {
                self.deliver_to_students(&p.event);
                // Delivered, not kept: below our numbering.
                self.announcement_floor = self.announcement_floor.max(self.seq);
            }
            // Our teachers never saw it, and the resync after the outage
            // may have run before it was numbered (the other instance's
            // drafts waited out the outage too; in a cluster, the exam's
            // shard may come back after the rest): they need a snapshot
            // that has it.
            if !(ours && p.delivered_at_origin) {
                self.reload_for_late_event();
            }
            return;
        }
        let gap = p.seq > self.seq + 1 && !(ours && p.delivered_at_origin);
        self.seq = p.seq;
        if ours && !self.ctx.persist_events {
            // The log holds no `student` events, so it cannot floor the
            // cluster's counter if Redis loses it: the origin keeps a
            // reservation ahead instead (read back by `restore`).
            self.reserve_ahead();
        }
        if p.kind == "student"
            && let Some(sid) = &p.student
        {
            self.holders.event_from(sid, &p.origin);
            self.mirror(sid, p.event.as_str());
            if p.event.as_str().contains(r#""control":"#) {
                self.student_control_published(p.event.as_str());
            }
        }
        if p.kind == "exam_update" {
            self.exam_update_published(p.event.as_str());
        }
        if !ours
            && matches!(
                p.kind.as_str(),
                "exam_update" | "action" | "student_control"
            )
        {
            // Changed elsewhere: the handshake here must not judge by the
            // roster and gate it cached before (deny, terminate, allow, a
            // phase change).
            self.ctx.rosters.invalidate(&self.exam_id);
        }
        match p.kind.as_str() {
            "student_control" => self.student_control_published(p.event.as_str()),
            "action" => self.action_published(p.event.as_str()),
            "delivery" => self.delivery_published(p.event.as_str()),
            "hand" => self.hand_published(p.event.as_str()),
            "hand_lowered" => self.hand_lowered_published(p.event.as_str()),
            _ => {}
        }
        if p.kind == "announcement" {
            self.remember_announcement(p.seq, &p.event);
        }
        if gap {
            // Events were missed (a lost subscription): the history has a
            // hole, and students attached elsewhere may have changed unseen.
            // Reload the shared state, then teachers get the truth as a
            // snapshot; announcements still reach students now.
            tracing::warn!(
                seq = p.seq,
                "gap in the exam's event stream; re-synchronising"
            );
            self.history.clear();
            self.history.push_back((p.seq, p.event.clone()));
            self.epoch_floor = p.seq;
            // Announcements in the gap were never kept here.
            self.announcement_floor = self.announcement_floor.max(p.seq - 1);
            if p.kind == "announcement" {
                self.deliver_to_students(&p.event);
            }
            self.resync_pending = true;
            self.start_resync();
            return;
        }
        self.remember(p.seq, &p.event);
        self.ctx.metrics.events.increment(1);
        if ours && p.delivered_at_origin {
            return; // our members had it already, under a provisional seq
        }
        let audience = if p.kind == "announcement" {
            Audience::Everyone
        } else {
            Audience::Teachers
        };
        self.deliver(&p.event, audience);
    }

    /// Updates a student attached elsewhere from their latest event.
    fn mirror(&mut self, sid: &Arc<str>, event: &str) {
        if self.students.get(sid).is_some_and(|st| st.conn.is_some()) {
            return; // attached here: our own state is the newest
        }
        let Ok(ev) = serde_json::from_str::<StudentEvent>(event) else {
            return;
        };
        let (seq, connected) = (ev.seq, ev.student.connected);
        let mirrored = |student, questions| {
            let mut st = crate::room::students::Student::restored(student, questions);
            st.state.connected = connected;
            st.mirrored_seq = seq;
            st
        };
        match self.students.get_mut(sid) {
            // Older than what we mirrored already: a reload of the shared
            // state issued before that event was numbered.
            Some(st) if seq < st.mirrored_seq => {}
            Some(st) => {
                if ev.student.connected
                    && let Some(key) = st.grace_timer.take()
                {
                    // Back on another instance: no longer ours to expire.
                    self.timers.try_remove(&key);
                }
                let questions = std::mem::take(&mut st.answered_questions);
                let checked = st.answers_checked;
                // The event's count is the cluster's newest; our own set may
                // be older (answers went through another instance since).
                let answered = ev.student.answered;
                **st = mirrored(ev.student, questions);
                st.state.answered = st.state.answered.max(answered);
                st.answers_checked = checked;
            }
            None => {
                let st = mirrored(ev.student, Default::default());
                self.students.insert(sid.clone(), Box::new(st));
            }
        }
    }

    /// Another instance took this student's session: close ours (after a
    /// `session_invalidated`, unless `quiet`: its own client moved with the
    /// handover token), or end our grace period for them without an event.
    pub(super) fn kicked_elsewhere(&mut self, sid: &Arc<str>, quiet: bool) {
        self.holders.forget(sid);
        let Some(st) = self.students.get_mut(sid) else {
            return;
        };
        if let Some(key) = st.grace_timer.take() {
            self.timers.try_remove(&key);
        }
        let Some(conn) = st.conn.take() else {
            return;
        };
        if let Some((_, out)) = self.student_conns.remove(&conn) {
            if !quiet {
                let bye = ServerMsg::SessionInvalidated {
                    reason: "second_session",
                    id: None,
                }
                .encode();
                let _ = out.tx.try_send(bye);
            }
            out.kick.kick(close::TAKEN_OVER);
        }
        if let Some(key) = st.idle_timer.take() {
            self.timers.try_remove(&key);
        }
    }

    /// Reloads the shared state after Redis came back or a gap (async, off
    /// the loop; retried with backoff until it succeeds or the room ends).
    /// One reload at a time per room: asked again while one is out, one
    /// more follows it (`on_resynced`), however many asked.
    pub(super) fn start_resync(&mut self) {
        let Broker::Redis(redis) = &self.ctx.broker else {
            return;
        };
        if self.resync_loading {
            self.resync_again = true;
            return;
        }
        self.resync_loading = true;
        let (redis, exam, inbox) = (redis.clone(), self.exam_id.clone(), self.inbox.clone());
        self.ctx.tracker.spawn(async move {
            let mut pause = RESYNC_RETRY;
            loop {
                if let Ok(Ok(s)) = tokio::time::timeout(RESYNC_TIMEOUT, redis.load(&exam)).await {
                    if let Some(inbox) = inbox.upgrade() {
                        let _ = inbox.send(RoomCmd::Resynced(s)).await;
                    }
                    return;
                }
                if inbox.strong_count() == 0 {
                    return; // the room ended
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RESYNC_RETRY_MAX);
            }
        });
    }

    /// Applies reloaded shared state; teachers get a snapshot if anything
    /// was missed.
    pub(super) fn on_resynced(&mut self, state: SharedState) {
        self.resync_loading = false;
        if std::mem::take(&mut self.resync_again) {
            // Asked again while this reload was out: its state may predate
            // what asked (a gap, a late event). The next one decides.
            self.start_resync();
            return;
        }
        let missed = state.seq > self.seq || self.diverged || self.resync_pending;
        self.apply_shared(state);
        if missed {
            self.diverged = false;
            self.resync_pending = false;
            self.snapshot_all();
        }
        if std::mem::take(&mut self.late_loading) && std::mem::take(&mut self.late_again) {
            self.reload_for_late_event();
        }
    }

    /// Reloads the shared state, then snapshots every local teacher, for
    /// an event numbered under our provisional seqs; one reload at a time
    /// (events arriving meanwhile make one more).
    fn reload_for_late_event(&mut self) {
        if self.late_loading {
            self.late_again = true;
            return;
        }
        self.late_loading = true;
        self.diverged = true;
        self.start_resync();
    }

    /// Merges the broker's view of the exam into the room.
    pub(super) fn apply_shared(&mut self, state: SharedState) {
        for event in &state.students {
            if let Ok(ev) = serde_json::from_str::<StudentEvent>(event) {
                let sid: Arc<str> = ev.student.student_id.as_str().into();
                self.mirror(&sid, event);
            }
        }
        self.confirmed = self.confirmed.max(state.seq);
        if state.seq > self.seq {
            let contiguous = state
                .history
                .first()
                .is_some_and(|(s, _)| *s <= self.seq + 1);
            self.history = state
                .history
                .into_iter()
                .map(|(seq, e)| (seq, Utf8Bytes::from(e)))
                .collect();
            if !contiguous {
                self.epoch_floor = state.seq;
            }
            // The announcements this room had not seen stay resumable (at
            // start-up the whole list is rebuilt from the history anyway).
            let new: Vec<_> = self
                .history
                .iter()
                .filter(|(s, b)| *s > self.seq && super::durable::is_announcement(b))
                .cloned()
                .collect();
            for (s, b) in new {
                self.remember_announcement(s, &b);
            }
            self.seq = state.seq;
        }
    }

    /// Every local teacher gets a fresh snapshot.
    pub(super) fn snapshot_all(&mut self) {
        let teachers: Vec<_> = self.teachers.keys().copied().collect();
        if teachers.is_empty() {
            return;
        }
        // Encoded once, in parts like any snapshot; the same bytes for all.
        let parts = self.snapshot_parts();
        for conn in teachers {
            self.send_parts(conn, &parts);
        }
    }

    /// Renews this instance's student leases (every `exam.lease_ttl` / 3).
    pub(super) fn cluster_tick(&mut self) {
        self.step_started = std::time::Instant::now();
        let Broker::Redis(redis) = &self.ctx.broker else {
            return;
        };
        // Students with a socket here, or within their grace period here.
        let leases: Vec<(Arc<str>, String, bool)> = self
            .students
            .iter()
            .filter(|(_, st)| st.conn.is_some() || st.grace_timer.is_some())
            .filter_map(|(sid, st)| {
                st.session_id
                    .as_ref()
                    .map(|s| (sid.clone(), redis.holder(s), st.conn.is_none()))
            })
            .collect();
        let ttl = self.ctx.settings.lease_ttl;
        let (redis, exam) = (redis.clone(), self.exam_id.clone());
        self.ctx.tracker.spawn(async move {
            let _ = redis.renew_leases(&exam, &leases, ttl).await;
        });
    }

    /// Checks, after a student joined here, that the session lease is still
    /// ours: a simultaneous claim on another instance may have taken it
    /// just before its request to close our socket could find it.
    pub(super) fn verify_lease(&self, sid: &Arc<str>) {
        let Broker::Redis(redis) = &self.ctx.broker else {
            return;
        };
        let Some(session) = self.students.get(sid).and_then(|st| st.session_id.clone()) else {
            return;
        };
        let mine = redis.holder(&session);
        let ttl = self.ctx.settings.lease_ttl;
        let (redis, exam, sid, inbox) = (
            redis.clone(),
            self.exam_id.clone(),
            sid.clone(),
            self.inbox.clone(),
        );
        self.ctx.tracker.spawn(async move {
            let Ok(Some(holder)) = redis.lease_holder(&exam, &sid).await else {
                return;
            };
            let here = format!("{}/", redis.instance());
            if holder != mine && holder != format!("{mine}/grace") && holder.starts_with(&here) {
                // Another session of this instance still holds it (a
                // reconnect here): name this one now, not at the next
                // renewal, so that this client's next reconnect elsewhere,
                // naming this session, is a reconnect there and not a
                // second session (a rebalance can move it again at once).
                let _ = redis
                    .renew_leases(&exam, &[(sid.clone(), mine, false)], ttl)
                    .await;
                return;
            }
            if holder != mine
                && holder != format!("{mine}/grace")
                && !holder.starts_with(&format!("{}/", redis.instance()))
                && let Some(inbox) = inbox.upgrade()
            {
                let _ = inbox
                    .send(RoomCmd::LeaseLost {
                        student: sid,
                        session,
                    })
                    .await;
            }
        });
    }

    /// The student is gone for good from here (disconnected, or left after
    /// submitting): free the cluster-wide lease.
    pub(super) fn release_lease(&self, sid: &Arc<str>) {
        let Broker::Redis(redis) = &self.ctx.broker else {
            return;
        };
        let Some(session) = self.students.get(sid).and_then(|st| st.session_id.clone()) else {
            return;
        };
        let holder = redis.holder(&session);
        let (redis, exam, sid) = (redis.clone(), self.exam_id.clone(), sid.clone());
        self.ctx.tracker.spawn(async move {
            redis.release_lease(&exam, &sid, &holder).await;
        });
    }

    /// The server is stopping: free the lease of every student whose
    /// session is here (the liveness key is already gone, `retire`).
    pub(super) fn release_all_leases(&self) {
        if !self.ctx.broker.clustered() {
            return;
        }
        let sids: Vec<Arc<str>> = self.students.keys().cloned().collect();
        for sid in &sids {
            self.release_lease(sid);
        }
    }

    /// What an answer's commit task needs to record it in Redis (`None`
    /// with `Broker::Memory`).
    pub(super) fn answer_sharing(&self) -> Option<AnswerSharing> {
        match &self.ctx.broker {
            Broker::Redis(redis) => Some(AnswerSharing {
                redis: redis.clone(),
                exam: self.exam_id.clone(),
            }),
            Broker::Memory => None,
        }
    }

    /// Reads the students' answered questions from the database, off the
    /// loop: for the join whose shared set (Redis) was not whole. One query
    /// for the whole exam, whichever student asked: after a Redis restart
    /// every returning student asks, and they share one read in flight
    /// (those who ask meanwhile get one more read once it is back, since it
    /// may have started before their last answer).
    pub(super) fn load_answered(&mut self) {
        if self.answered_load.in_flight {
            self.answered_load.again = true;
            return;
        }
        self.answered_load.in_flight = true;
        let (store, exam, inbox) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
        );
        self.ctx.tracker.spawn(async move {
            let answered = store
                .answered_sets(&exam)
                .await
                .inspect_err(
                    |e| tracing::warn!(error = %e, "cannot read the exam's answered questions"),
                )
                .ok();
            if let Some(inbox) = inbox.upgrade() {
                let _ = inbox.send(RoomCmd::AnsweredLoaded { answered }).await;
            }
        });
    }

    /// The database's answered sets (see `load_answered`). Merged, not
    /// replaced: an answer committed since the read (its question then in
    /// our set) still counts.
    /// A count still above the set afterwards is one the database has no
    /// answers for either (a client's claim in `progress`): joins do not
    /// read again for it (`Student::answers_checked`).
    pub(super) fn answered_loaded(&mut self, answered: Option<HashMap<String, HashSet<String>>>) {
        if let Some(answered) = answered {
            for (sid, questions) in answered {
                if let Some(st) = self.students.get_mut(sid.as_str()) {
                    st.answered_questions.extend(questions);
                    let n = st.answered_questions.len() as u32;
                    st.state.answered = st.state.answered.max(n);
                }
            }
            for st in self.students.values_mut() {
                if (st.answered_questions.len() as u32) < st.state.answered {
                    st.answers_checked = st.state.answered;
                }
            }
        }
        self.answered_load.in_flight = false;
        if std::mem::take(&mut self.answered_load.again) {
            self.load_answered();
        }
    }

    /// A student whose instance died: start the grace period here.
    pub(super) fn orphaned(&mut self, sid: Arc<str>) {
        let grace = self.ctx.settings.disconnect_grace;
        if let Some(st) = self.students.get_mut(&sid)
            && st.conn.is_none()
            && st.grace_timer.is_none()
            && !st.submitted()
        {
            st.state.connected = false;
            st.grace_timer = Some(self.timers.insert(Timer::Grace(sid), grace));
        }
    }
}

/// Records committed answers in the exam's shared state, so a student who
/// reconnects on any instance gets their `answered` count from Redis, not
/// from one database query per join (a reconnect storm after an instance
/// died is then no database storm).
pub(super) struct AnswerSharing {
    redis: Arc<crate::broker::RedisBroker>,
    exam: Arc<str>,
}

impl AnswerSharing {
    /// Best effort, bounded: if Redis is away the join falls back to the
    /// database (the set is then known incomplete, see `answered`).
    pub(super) async fn record(&self, student: &str, question: &str) {
        let recorded = tokio::time::timeout(
            Duration::from_secs(2),
            self.redis.record_answer(&self.exam, student, question),
        )
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::warn!("cannot record an answer in Redis; joins read it from the database");
        }
    }
}

/// The room's exam-wide answered-set read (`Room::load_answered`).
#[derive(Debug, Default)]
pub(super) struct AnsweredLoad {
    /// A read is running; its result comes back as `AnsweredLoaded`.
    in_flight: bool,
    /// Someone asked while it ran: read once more when it is back.
    again: bool,
}
