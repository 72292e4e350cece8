//! What a room does with what its clients send: a student's progress,
//! answers, focus, heartbeats, hands and submission; a teacher's
//! announcements and resume. Every reply (ack or error) names the
//! message's `ref`; what changes a student's state goes through
//! `Room::apply`, which numbers and fans out the event.

use axum::extract::ws::Utf8Bytes;

use super::{Audience, Room};
use crate::protocol::{ClientMsg, ErrorCode, Label, ServerMsg, Timestamp};
use crate::room::{ConnId, students::Outcome};
use crate::store::{now_ms, writer::Record};

impl Room {
    pub(super) fn student_message(&mut self, conn: ConnId, r#ref: Option<Label>, msg: ClientMsg) {
        let Some((sid, out)) = self.student_conns.get(&conn) else {
            return; // left, or taken over: its socket is closing
        };
        let (sid, out) = (sid.clone(), out.clone());
        if matches!(msg, ClientMsg::Progress { .. } | ClientMsg::Answer { .. }) {
            self.refresh_total();
        }
        // Heartbeat gaps and `answered` going back (room/signals.rs).
        let signals = self.watch_signals(&sid, &msg);
        // The exam's phase and the student's own clock decide whether
        // work is taken now (an answer that arrived before the deadline is
        // stored even if its commit lands after it).
        if matches!(
            msg,
            ClientMsg::Progress { .. } | ClientMsg::Answer { .. } | ClientMsg::Submit {}
        ) && let Err(code) = self.control.work(&sid, now_ms())
        {
            let submitted = self.students.get(&sid).is_some_and(|st| st.submitted());
            // A submitted student's repeated `submit` is still acked.
            if !(submitted && matches!(msg, ClientMsg::Submit {})) {
                return self.error(&out, code, r#ref.as_ref());
            }
        }
        // Durable messages: acked when committed, not now.
        let msg = match msg {
            ClientMsg::Answer {
                id,
                question,
                value,
            } => {
                match self.store_answer(conn, &sid, id, question, value, r#ref.clone()) {
                    Ok(outcome) => {
                        self.apply(&sid, outcome);
                        self.raise_signals(&sid, signals);
                    }
                    Err(code) => self.error(&out, code, r#ref.as_ref()),
                }
                return;
            }
            ClientMsg::Submit {} => {
                if !self.store_submission(conn, &sid, r#ref.clone()) {
                    self.ack(&out, r#ref.as_ref()); // already submitted
                }
                return;
            }
            ClientMsg::Received { id } => {
                self.on_received(&sid, &id, None);
                return self.ack(&out, r#ref.as_ref());
            }
            ClientMsg::RaiseHand { text } => return self.raise_hand(conn, &sid, text, r#ref),
            other => other,
        };
        let Some(st) = self.students.get_mut(&sid) else {
            return;
        };
        let result = match msg {
            ClientMsg::Progress { question, answered } => {
                st.progress(question, answered, self.total_questions)
            }
            ClientMsg::Activity { state } => st.activity(state),
            ClientMsg::Focus { state } => st.focus(state),
            ClientMsg::Heartbeat {} => Ok(Outcome::default()),
            ClientMsg::Resume { last_seq } => {
                let plan = crate::room::replay::plan_student(
                    &self.announcements,
                    last_seq,
                    self.seq,
                    self.announcement_floor.max(self.epoch_floor),
                );
                // `resumed` first: a client knows whether anything was lost
                // (and how many frames the replay is) before it applies it.
                let replay: Vec<Utf8Bytes> = self
                    .announcements
                    .range(plan.start..)
                    .map(|(_, b)| b.clone())
                    .collect();
                let resumed = ServerMsg::Resumed {
                    recovered: plan.recovered,
                    last_seq: self.seq,
                    replayed: replay.len(),
                };
                if self.push(&out, resumed.encode()) {
                    for bytes in replay {
                        if !self.push(&out, bytes) {
                            break;
                        }
                    }
                }
                // Action frames not yet acknowledged come again.
                self.resend_owed(&sid);
                Ok(Outcome::default())
            }
            ClientMsg::Announce { .. }
            | ClientMsg::Answer { .. }
            | ClientMsg::Submit {}
            | ClientMsg::Received { .. }
            | ClientMsg::RaiseHand { .. }
            // The socket answers `refresh` itself; it never reaches a room.
            | ClientMsg::Refresh { .. } => Err(ErrorCode::Forbidden),
        };
        match result {
            Ok(outcome) => {
                self.apply(&sid, outcome);
                self.raise_signals(&sid, signals);
                self.ack(&out, r#ref.as_ref());
            }
            Err(code) => self.error(&out, code, r#ref.as_ref()),
        }
    }

    pub(super) fn teacher_message(
        &mut self,
        conn: ConnId,
        r#ref: Option<Label>,
        msg: ClientMsg,
        user: &str,
        from: &str,
    ) {
        let Some(out) = self.teachers.get(&conn).map(|t| t.out.clone()) else {
            return;
        };
        match msg {
            ClientMsg::Announce { text } => {
                let text = text.trim();
                let max = self.ctx.max_announcement_chars;
                if text.is_empty() || text.chars().count() > max {
                    return self.error(&out, ErrorCode::InvalidAnnouncement, r#ref.as_ref());
                }
                self.ctx.writer.write(Record::TeacherAction {
                    exam_id: self.exam_id.clone(),
                    actor_id: user.to_owned(),
                    action: "announce",
                    payload: serde_json::json!({ "text": text }).to_string(),
                    at: now_ms(),
                });
                let at = Timestamp::now();
                self.publish_event(Audience::Everyone, "announcement", None, |_, seq| {
                    Some(
                        ServerMsg::Announcement {
                            seq,
                            text,
                            at,
                            from,
                        }
                        .encode(),
                    )
                });
            }
            ClientMsg::Resume { last_seq } => self.resume_teacher(conn, last_seq),
            ClientMsg::Heartbeat {} => {}
            _ => return self.error(&out, ErrorCode::Forbidden, r#ref.as_ref()),
        }
        self.ack(&out, r#ref.as_ref());
    }
}
