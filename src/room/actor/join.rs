//! How a student's connection joins the room: new student, reconnect, or a
//! second session — and how the room tells a reconnect over a dead socket
//! from a genuine second device.
//!
//! A client that lost its network silently reconnects before the server has
//! noticed: its old socket still looks open. If the new connection names the
//! old `session_id` (`?previous_session=`), the room does not guess: it asks
//! the old connection to ping its peer. No pong within `exam.probe_timeout`
//! (or the old socket closes) means the old one is dead, so this is the same
//! client reconnecting — `reconnected`, no alert. A pong means two live
//! devices — the second-session policy applies, whatever the client claimed.

use std::sync::Arc;

use super::{Room, Timer};
use crate::{
    broker::Broker,
    config::SecondSession,
    protocol::{AlertKind, Cause, ServerMsg, Timestamp},
    room::{ConnId, StudentJoin, close, students::Outcome, students::Student},
    room::{RoomCmd, signals, signals::Client},
};

impl Room {
    pub(super) fn join_student(&mut self, mut join: StudentJoin) {
        let sid: Arc<str> = join.who.id.as_str().into();
        if let Some((clock, version)) = join.exam_clock.take() {
            // Newer than ours only if we missed a change (ignored otherwise).
            self.on_exam_control(clock, version, crate::room::ControlCause::Timing, false);
        }
        if let Some(control) = join.control.take() {
            // Changed elsewhere just now: known before the welcome, not
            // only once the change's event arrives (ignored if not newer).
            self.control_from_join(&sid, *control);
        }
        if let Some(reason) = self.refused_access(&sid) {
            // Removed from the exam (the handshake's roster cache was older).
            join.out.kick.kick(reason);
            let _ = join.reply.send(join.rate);
            return;
        }
        match join.cluster {
            crate::room::ClusterJoin::Alone => {}
            crate::room::ClusterJoin::RejectedElsewhere => {
                join.out.kick.kick(close::SECOND_SESSION);
                self.alert(&sid, AlertKind::SecondSession);
                let _ = join.reply.send(join.rate);
                return;
            }
            crate::room::ClusterJoin::TookOverElsewhere => {
                // The old session lives on another instance, which was told
                // to close it; here it is a takeover with its alert.
                let conn = join.conn;
                let outcome = match self.students.get_mut(&sid) {
                    Some(st) => {
                        if let Some(key) = st.grace_timer.take() {
                            self.timers.try_remove(&key);
                        }
                        st.take_over(conn)
                    }
                    None => {
                        self.students.insert(
                            sid.clone(),
                            Box::new(Student::new(
                                join.who.id.clone(),
                                join.who.name.clone(),
                                conn,
                            )),
                        );
                        Outcome {
                            cause: Some(Cause::SecondSession),
                            alert: Some(AlertKind::SecondSession),
                            touched: true,
                        }
                    }
                };
                return self.admit(join, Some(outcome));
            }
        }
        let Some(st) = self.students.get(&sid) else {
            return self.admit(join, None);
        };
        let Some(old) = st.conn else {
            return self.admit(join, None);
        };
        let claims_same_client =
            join.previous_session.is_some() && join.previous_session == st.session_id;
        if claims_same_client && join.handover {
            // The client of that HTTP session moving (8.4): it cannot
            // answer a probe, and need not.
            return self.retire(join, old);
        }
        if claims_same_client && !self.probes.contains_key(&old) {
            if let Some((_, old_out)) = self.student_conns.get(&old) {
                old_out.kick.probe();
            }
            let key = self
                .timers
                .insert(Timer::Probe(old), self.ctx.settings.probe_timeout);
            self.probes.insert(old, (join, key));
            return;
        }
        self.second_session(join, old);
    }

    /// The probe of `old` finished: `alive` if its peer answered.
    pub(super) fn probe_result(&mut self, old: ConnId, alive: bool) {
        let Some((join, key)) = self.probes.remove(&old) else {
            return;
        };
        self.timers.try_remove(&key);
        if alive {
            return self.second_session(join, old);
        }
        // Meanwhile another connection may have become this student's.
        let sid: Arc<str> = join.who.id.as_str().into();
        if let Some(current) = self.students.get(&sid).and_then(|st| st.conn)
            && current != old
        {
            return self.second_session(join, current);
        }
        self.retire(join, old);
    }

    /// The student's connection `old` is dead or handed over: it is closed
    /// quietly (4001) and `join` admitted as a reconnect.
    fn retire(&mut self, join: StudentJoin, old: ConnId) {
        if let Some((sid, old_out)) = self.student_conns.remove(&old) {
            old_out.kick.kick(close::TAKEN_OVER);
            if let Some(st) = self.students.get_mut(&sid)
                && st.conn == Some(old)
            {
                st.drop_connection();
            }
        }
        self.admit(join, None);
    }

    /// A second live connection for a student who already has one. Its
    /// alert is folded with the student's other recent ones (`alerts.rs`).
    fn second_session(&mut self, join: StudentJoin, old: ConnId) {
        let sid: Arc<str> = join.who.id.as_str().into();
        // A `reset_session` lifts the block for one connection.
        let reset = self.take_reset(&sid);
        match self.ctx.settings.second_session {
            SecondSession::Reject if !reset => {
                join.out.kick.kick(close::SECOND_SESSION);
                self.alert(&sid, AlertKind::SecondSession);
                let _ = join.reply.send(join.rate);
            }
            SecondSession::Reject | SecondSession::Takeover => {
                if let Some((_, old_out)) = self.student_conns.remove(&old) {
                    let bye = ServerMsg::SessionInvalidated {
                        reason: "second_session",
                        id: None,
                    }
                    .encode();
                    let _ = old_out.tx.try_send(bye);
                    old_out.kick.kick(close::TAKEN_OVER);
                }
                let conn = join.conn;
                let outcome = self
                    .students
                    .get_mut(&sid)
                    .map(|st| st.take_over(conn))
                    .unwrap_or_default();
                self.admit(join, Some(outcome));
            }
        }
    }

    /// Uses up a `reset_session` of this student, if one is pending here
    /// (and in the database, for the other instances).
    fn take_reset(&mut self, sid: &Arc<str>) -> bool {
        let Some(c) = self.control.students.get_mut(sid) else {
            return false;
        };
        if c.reset_at.take().is_none() {
            return false;
        }
        let (store, exam, student) = (self.ctx.store.clone(), self.exam_id.clone(), sid.clone());
        self.ctx.tracker.spawn(async move {
            if let Err(e) = store.consume_reset(&exam, &student).await {
                tracing::warn!(error = %e, %student, "cannot record a used reset_session");
            }
        });
        true
    }

    /// Attaches the connection, sends `welcome`, and tells teachers.
    /// `outcome` is given when the student's state was already updated.
    fn admit(&mut self, join: StudentJoin, outcome: Option<Outcome>) {
        let StudentJoin {
            conn,
            who,
            session_id,
            out,
            reply,
            answered,
            rate,
            peer_ip,
            user_agent,
            previous_client,
            ..
        } = join;
        let this_session = session_id.clone();
        if let (Some(answered), Some(st)) = (answered, self.students.get_mut(who.id.as_str())) {
            if answered.len() > st.answered_questions.len() {
                // Answers stored through another instance count here too.
                st.state.answered = answered.len() as u32;
                st.answered_questions = answered;
            } else if (st.answered_questions.len() as u32) < st.state.answered
                && st.state.answered > st.answers_checked
            {
                // Fewer than the count we know, and not a count the
                // database was found not to back: the shared set is not whole.
                self.load_answered();
            }
        }
        let sid: Arc<str> = who.id.as_str().into();
        let outcome = match (outcome, self.students.get_mut(&sid)) {
            (Some(o), _) => o,
            (None, Some(st)) => {
                if let Some(key) = st.grace_timer.take() {
                    self.timers.try_remove(&key);
                }
                st.reconnect(conn, who.name)
            }
            (None, None) => {
                self.students
                    .insert(sid.clone(), Box::new(Student::new(who.id, who.name, conn)));
                Outcome {
                    cause: Some(Cause::Connected),
                    alert: None,
                    touched: true,
                }
            }
        };
        // Admitted while the exam runs: their clock starts (once).
        let now = crate::store::now_ms();
        self.start_clock(&sid, now);
        self.refresh_view(&sid, now);
        let view = self.control.view(&sid, now);
        let exam = &self.control.exam;
        // The student's bucket outlives their connections: the first one's
        // is kept and every later one shares it.
        let mut rate = rate;
        if let Some(st) = self.students.get_mut(&sid) {
            rate = st.rate.get_or_insert(rate).clone();
            st.session_id = Some(session_id);
            st.state.hand_raised = self.hands.is_raised(&sid);
            let welcome = ServerMsg::Welcome {
                session_id: st.session_id.as_deref().unwrap_or_default(),
                server_time: Timestamp::from_unix_ms(now),
                exam_id: &self.exam_id,
                student: &st.state,
                last_seq: self.seq,
                phase: exam.phase,
                deadline: view.deadline.map(Timestamp::from_unix_ms),
                paused: view.paused,
                opens_at: exam.opens_at.map(Timestamp::from_unix_ms),
                closes_at: exam.closes_at.map(Timestamp::from_unix_ms),
            }
            .encode();
            self.push(&out, welcome);
        }
        self.student_conns.insert(conn, (sid.clone(), out));
        // Action frames they have not acknowledged yet (sent while away).
        self.resend_owed(&sid);
        self.apply(&sid, outcome);
        // Another IP or browser than the previous session (room/signals.rs).
        let client = Client {
            ip: peer_ip,
            user_agent,
        };
        self.compare_client(&sid, &this_session, client, previous_client);
        self.verify_lease(&sid);
        let _ = reply.send(rate);
    }
}

impl Room {
    /// Compares where a joining session comes from with the student's
    /// previous session: the one Redis had (any instance's latest admitted
    /// one, read by the handshake), else the one this room saw, else, off the loop, the
    /// database's latest other session (a room that restarted), whose
    /// answer comes back as `RoomCmd::PreviousClient`.
    fn compare_client(
        &mut self,
        sid: &Arc<str>,
        session_id: &str,
        now: Client,
        shared: Option<Client>,
    ) {
        let Some(st) = self.students.get_mut(sid) else {
            return;
        };
        let seen = st.signals.previous();
        st.signals
            .record(now.ip.as_deref(), now.user_agent.as_deref());
        if let Broker::Redis(redis) = &self.ctx.broker {
            // Admitted: this is now the session the next one is compared with.
            let (redis, exam, student, client) = (
                redis.clone(),
                self.exam_id.clone(),
                sid.clone(),
                now.encode(),
            );
            self.ctx.tracker.spawn(async move {
                if let Err(e) = redis.record_client(&exam, &student, &client).await {
                    tracing::debug!(error = %e, "cannot record a student's client in Redis");
                }
            });
        }
        if let Some(before) = shared.or(seen) {
            let kinds = signals::changes(&before, now.ip.as_deref(), now.user_agent.as_deref());
            return self.raise_signals(sid, kinds);
        }
        if st.state.connections <= 1 {
            return; // their first session: nothing before it to read
        }
        let (store, exam, student, session, inbox) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            sid.clone(),
            session_id.to_owned(),
            self.inbox.clone(),
        );
        self.ctx.tracker.spawn(async move {
            let previous = store
                .previous_client(&exam, &student, &session)
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "cannot read a student's previous session");
                    None
                });
            if let (Some(previous), Some(inbox)) = (previous, inbox.upgrade()) {
                let _ = inbox
                    .send(RoomCmd::PreviousClient {
                        student,
                        previous,
                        now,
                    })
                    .await;
            }
        });
    }

    /// Where a student's previous session came from, learnt off the loop.
    pub(super) fn previous_client(&mut self, sid: &Arc<str>, previous: &Client, now: &Client) {
        let kinds = signals::changes(previous, now.ip.as_deref(), now.user_agent.as_deref());
        self.raise_signals(sid, kinds);
    }
}
