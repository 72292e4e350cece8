//! The room's side of proctor actions and raised hands: applying an action
//! (from this instance's API, or published by another instance), sending
//! its frames to the targets this room holds, re-sending what they have not
//! acknowledged, closing removed students (4003), and the hands.
//!
//! Who owes what is plain state (`room/deliveries.rs`, `room/hands.rs`);
//! this file only dispatches. An action is applied once per room, by id:
//! the API's command and the same action coming back from Redis meet in
//! [`super::super::deliveries::Deliveries::learn`].

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;

use super::{Audience, Room, Timer};
use crate::{
    control::{Finish, StudentControl},
    protocol::{ActionKind, Cause, ErrorCode, Label, ServerMsg, Timestamp},
    room::{
        ActionApplied, CloseReason, ConnId, LoweredHand, RoomCmd, close,
        deliveries::{Frame, Owed},
        hands::Hand,
    },
    store::{actions::HandRow, now_ms},
};

/// A removed student's socket is closed when its client acknowledges the
/// frame that says why, or after this at the latest (well within the
/// second the contract allows).
const EVICT_AFTER: Duration = Duration::from_millis(300);

/// An `action` event as another instance's room reads it.
#[derive(serde::Deserialize)]
struct ActionEvent {
    action: ActionHead,
    #[serde(default)]
    controls: BTreeMap<String, StudentControl>,
    #[serde(default)]
    frame: Option<serde_json::Value>,
    #[serde(default)]
    deliver: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ActionHead {
    id: String,
    kind: ActionKind,
}

#[derive(serde::Deserialize)]
struct DeliveryEvent {
    action_id: String,
    student_id: String,
}

#[derive(serde::Deserialize)]
struct HandEvent {
    hand_id: String,
    student_id: String,
    #[serde(default)]
    text: Option<String>,
    at: Timestamp,
}

fn close_for(kind: ActionKind) -> CloseReason {
    match kind {
        ActionKind::Terminate => close::TERMINATED,
        _ => close::ACCESS_REVOKED,
    }
}

impl Room {
    /// Reads what the database owes to this exam's students and its open
    /// hands (room start).
    pub(super) async fn load_actions(&mut self) -> Result<(), crate::store::StoreError> {
        let store = self.ctx.store.clone();
        for row in store.pending_deliveries(&self.exam_id).await? {
            let Some(kind) = ActionKind::parse(&row.kind) else {
                continue;
            };
            let frame = match row.frame {
                Some(text) => Frame::Bytes(text.into()),
                None => Frame::ExamUpdate,
            };
            let sid: Arc<str> = row.student_id.as_str().into();
            self.deliveries.owe(
                &sid,
                Owed {
                    action_id: row.action_id.as_str().into(),
                    kind,
                    frame,
                },
            );
        }
        for h in store.open_hands(&self.exam_id).await? {
            self.hands.learn(Hand {
                hand_id: h.hand_id.as_str().into(),
                student_id: h.student_id.as_str().into(),
                text: h.text,
                at: h.raised_at,
            });
            if let Some(st) = self.students.get_mut(h.student_id.as_str()) {
                st.state.hand_raised = true;
            }
        }
        Ok(())
    }

    /// An action stored through this instance's API: apply, publish.
    pub(super) fn on_action(&mut self, a: ActionApplied) {
        if !self.apply_action(
            &a.id,
            a.kind,
            &a.controls,
            a.frame.as_ref(),
            &a.deliver,
            true,
        ) {
            return;
        }
        let controls = (!a.controls.is_empty()).then_some(&a.controls);
        self.publish_event(Audience::Teachers, "action", None, |_, seq| {
            Some(
                ServerMsg::Action {
                    seq,
                    action: &a.record,
                    controls,
                    frame: a.frame.as_ref(),
                    deliver: &a.deliver,
                }
                .encode(),
            )
        });
        if let Some(lowered) = a.lowered {
            self.lower_hand(&lowered, true);
            let sid: Arc<str> = lowered.student_id.as_str().into();
            let at = Timestamp::from_unix_ms(lowered.at);
            self.publish_event(Audience::Teachers, "hand_lowered", Some(&sid), |_, seq| {
                Some(
                    ServerMsg::HandLowered {
                        seq,
                        hand_id: &lowered.hand_id,
                        student_id: &lowered.student_id,
                        by: &lowered.by,
                        at,
                    }
                    .encode(),
                )
            });
        }
    }

    /// Another instance's `action` event (or ours, back from Redis).
    pub(super) fn action_published(&mut self, event: &str) {
        match serde_json::from_str::<ActionEvent>(event) {
            Ok(ev) => {
                let id: Arc<str> = ev.action.id.as_str().into();
                self.apply_action(
                    &id,
                    ev.action.kind,
                    &ev.controls,
                    ev.frame.as_ref(),
                    &ev.deliver,
                    false,
                );
            }
            Err(e) => tracing::warn!(error = %e, "an action event that does not parse"),
        }
    }

    /// Applies an action here once: the students' records, then the frame
    /// to each target this room holds. False if it was applied already.
    fn apply_action(
        &mut self,
        id: &Arc<str>,
        kind: ActionKind,
        controls: &BTreeMap<String, StudentControl>,
        frame: Option<&serde_json::Value>,
        deliver: &[String],
        local: bool,
    ) -> bool {
        if !self.deliveries.learn(id) {
            return false;
        }
        let now = now_ms();
        for (sid, control) in controls {
            let sid: Arc<str> = sid.as_str().into();
            let finished = control.finished;
            self.control.apply_student(sid.clone(), control.clone());
            if kind == ActionKind::Allow {
                self.deliveries.forget_removals(&sid);
            }
            self.refresh_view(&sid, now);
            self.arm_deadline(&sid, now);
            let cause = match kind {
                ActionKind::Terminate => {
                    if let Some((Finish::Terminated, at)) = finished {
                        self.terminated(&sid, at);
                    }
                    Cause::Terminated
                }
                ActionKind::Extend | ActionKind::Pause | ActionKind::Resume => Cause::Timing,
                _ => Cause::Access,
            };
            self.student_changed(&sid, cause, local);
        }
        self.arm_exam_timer(now);
        if kind.sends_frame() {
            let frame = match frame {
                Some(v) => Frame::Bytes(v.to_string().into()),
                None => Frame::ExamUpdate,
            };
            for sid in deliver {
                let sid: Arc<str> = sid.as_str().into();
                let owed = Owed {
                    action_id: id.clone(),
                    kind,
                    frame: frame.clone(),
                };
                self.send_owed(&sid, &owed, now);
                self.deliveries.owe(&sid, owed);
            }
        }
        true
    }

    /// A terminated student's exam is over: their state says submitted.
    /// Told to watchers by the room that holds their socket.
    fn terminated(&mut self, sid: &Arc<str>, at: i64) {
        self.control.finish(sid, Finish::Terminated, at);
        if let Some(st) = self.students.get_mut(sid)
            && !st.submitted()
        {
            st.submit(Timestamp::from_unix_ms(at));
        }
    }

    /// Tells watchers of a student's changed state: from the room that
    /// holds their socket, or the one the change came through (`local`),
    /// whichever knows them (a repeat from both is the same state).
    fn student_changed(&mut self, sid: &Arc<str>, cause: Cause, local: bool) {
        let here = self.socket_of(sid).is_some();
        if (here || local) && self.students.contains_key(sid) {
            self.apply(
                sid,
                crate::room::students::Outcome {
                    cause: Some(cause),
                    ..Default::default()
                },
            );
        }
    }

    /// The student's socket here, as a list (none or one).
    fn sockets_of(&self, sid: &str) -> Vec<(ConnId, crate::room::Outbox)> {
        self.socket_of(sid).into_iter().collect()
    }

    /// Sends one owed frame on every socket and event stream the student
    /// has here; a frame that removes them closes the socket soon after
    /// (a stream ends by itself once it has sent such a frame).
    fn send_owed(&mut self, sid: &str, owed: &Owed, now: i64) {
        let sockets = self.sockets_of(sid);
        let streams = self.listeners_of(sid);
        if sockets.is_empty() && streams.is_empty() {
            return;
        }
        let bytes = self.owed_frame(sid, owed, now);
        for out in streams {
            self.push(&out, bytes.clone());
        }
        for (conn, out) in sockets {
            self.push(&out, bytes.clone());
            if owed.kind.removes() {
                self.timers
                    .insert(Timer::Evict(conn, close_for(owed.kind)), EVICT_AFTER);
            }
        }
    }

    /// The bytes of an owed frame: as stored, or an `exam_update` built now.
    pub(super) fn owed_frame(&self, sid: &str, owed: &Owed, now: i64) -> Utf8Bytes {
        match &owed.frame {
            Frame::Bytes(b) => b.clone(),
            Frame::ExamUpdate => self.exam_update_with_id(sid, owed, now),
        }
    }

    fn exam_update_with_id(&self, sid: &str, owed: &Owed, now: i64) -> Utf8Bytes {
        let view = self.control.view(sid, now);
        let exam = &self.control.exam;
        let ts = |ms: Option<i64>| ms.map(Timestamp::from_unix_ms);
        ServerMsg::ExamUpdate {
            seq: None,
            phase: exam.phase,
            opens_at: ts(exam.opens_at),
            closes_at: ts(exam.closes_at),
            server_time: Timestamp::from_unix_ms(now),
            deadline: Some(ts(view.deadline)),
            paused: view.paused,
            extra_minutes: Some(view.extra_minutes),
            cause: owed.kind.as_str(),
            clock: None,
            version: None,
            id: Some(&owed.action_id),
        }
        .encode()
    }

    /// Sends again every frame the student has not acknowledged (they
    /// joined, or sent `resume`).
    pub(super) fn resend_owed(&mut self, sid: &str) {
        let now = now_ms();
        for owed in self.deliveries.owed(sid).to_vec() {
            self.send_owed(sid, &owed, now);
        }
    }

    /// A removed student's socket: closed now, if still here.
    pub(super) fn evict_now(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some((_, out)) = self.student_conns.get(&conn) {
            out.kick.kick(reason);
        }
    }

    /// A joining student the access list refuses (denied or terminated
    /// while their handshake passed an older roster cache): closed 4003.
    pub(super) fn refused_access(&self, sid: &str) -> Option<CloseReason> {
        let c = self.control.student(sid);
        let reason = match c.deny_reason.as_deref() {
            Some("terminated") => close::TERMINATED,
            _ => close::ACCESS_REVOKED,
        };
        c.denied.then_some(reason)
    }

    /// The student was refused at the handshake for a `deny` or
    /// `terminate`: the refusal told their client (403 with its code), and
    /// no socket will ever carry those frames, so they are delivered.
    pub(super) fn refused_at_handshake(&mut self, sid: &Arc<str>) {
        let removals: Vec<Arc<str>> = self
            .deliveries
            .owed(sid)
            .iter()
            .filter(|o| o.kind.removes())
            .map(|o| o.action_id.clone())
            .collect();
        for id in removals {
            self.on_received(sid, &id, None);
        }
    }

    /// `received {id}` from a student: on their socket, or through `POST
    /// me/received`, whose `reply` learns whether the delivery was
    /// recorded (`None`: nothing was owed under this id).
    pub(super) fn on_received(
        &mut self,
        sid: &Arc<str>,
        id: &str,
        reply: Option<tokio::sync::oneshot::Sender<Option<bool>>>,
    ) {
        let Some(owed) = self.deliveries.received(sid, id) else {
            // Not owed (already acknowledged, or not an action's).
            if let Some(reply) = reply {
                let _ = reply.send(None);
            }
            return;
        };
        if owed.kind.removes() {
            for (conn, _) in self.sockets_of(sid) {
                self.evict_now(conn, close_for(owed.kind));
            }
        }
        let (store, exam, inbox, sid) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
            sid.clone(),
        );
        let action_id = owed.action_id;
        self.ctx.tracker.spawn(async move {
            let answer = |recorded: bool| {
                if let Some(reply) = reply {
                    let _ = reply.send(Some(recorded));
                }
            };
            for attempt in 0..5u32 {
                match store.mark_delivered(&exam, &action_id, &sid, now_ms()).await {
                    Ok(true) => {
                        answer(true);
                        if let Some(inbox) = inbox.upgrade() {
                            let _ = inbox
                                .send(RoomCmd::Delivered {
                                    student: sid,
                                    action_id,
                                })
                                .await;
                        }
                        return;
                    }
                    // Recorded elsewhere already.
                    Ok(false) => return answer(true),
                    Err(e) => {
                        tracing::warn!(error = %e, %sid, attempt, "cannot record a delivery; retrying");
                        tokio::time::sleep(Duration::from_millis(200) * (attempt + 1)).await;
                    }
                }
            }
            answer(false);
        });
    }

    /// This room recorded a delivery: watchers see pending → delivered.
    pub(super) fn delivered(&mut self, sid: Arc<str>, action_id: Arc<str>) {
        self.publish_event(Audience::Teachers, "delivery", Some(&sid), |_, seq| {
            Some(
                ServerMsg::Delivery {
                    seq,
                    action_id: &action_id,
                    student_id: &sid,
                    state: "delivered",
                }
                .encode(),
            )
        });
    }

    /// Another instance recorded a delivery: no longer owed here either.
    pub(super) fn delivery_published(&mut self, event: &str) {
        if let Ok(ev) = serde_json::from_str::<DeliveryEvent>(event) {
            self.deliveries.received(&ev.student_id, &ev.action_id);
        }
    }

    /// `raise_hand`: stored first, then announced and acked.
    pub(super) fn raise_hand(
        &mut self,
        conn: ConnId,
        sid: &Arc<str>,
        text: Option<String>,
        r#ref: Option<Label>,
    ) {
        if !self.hands.begin_raise(sid) {
            // Already up (or on its way): one hand at a time.
            if let Some((_, out)) = self.student_conns.get(&conn) {
                self.ack(out, r#ref.as_ref());
            }
            return;
        }
        let text = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        let row = HandRow {
            hand_id: format!("h-{}", uuid::Uuid::new_v4()),
            student_id: sid.to_string(),
            text,
            raised_at: now_ms(),
            lowered_at: None,
        };
        let (store, exam, inbox, sid) = (
            self.ctx.store.clone(),
            self.exam_id.clone(),
            self.inbox.clone(),
            sid.clone(),
        );
        self.ctx.tracker.spawn(async move {
            let stored = store.insert_hand(&exam, &row).await;
            if let Err(e) = &stored {
                tracing::warn!(error = %e, student = %sid, "cannot store a raised hand");
            }
            let hand = stored.ok().map(|()| Hand {
                hand_id: row.hand_id.as_str().into(),
                student_id: sid.clone(),
                text: row.text,
                at: row.raised_at,
            });
            if let Some(inbox) = inbox.upgrade() {
                let _ = inbox
                    .send(RoomCmd::HandStored {
                        conn,
                        student: sid,
                        hand,
                        r#ref,
                    })
                    .await;
            }
        });
    }

    /// The outcome of storing a raise.
    pub(super) fn hand_stored(
        &mut self,
        conn: ConnId,
        sid: Arc<str>,
        hand: Option<Hand>,
        r#ref: Option<Label>,
    ) {
        self.hands.raised(&sid, hand.clone());
        let out = self.student_conns.get(&conn).map(|(_, out)| out.clone());
        let Some(hand) = hand else {
            if let Some(out) = out {
                self.error(&out, ErrorCode::StorageBusy, r#ref.as_ref());
            }
            return;
        };
        if let Some(st) = self.students.get_mut(&sid) {
            st.state.hand_raised = true;
        }
        let at = Timestamp::from_unix_ms(hand.at);
        self.publish_event(Audience::Teachers, "hand", Some(&sid), |_, seq| {
            Some(
                ServerMsg::Hand {
                    seq,
                    hand_id: &hand.hand_id,
                    student_id: &hand.student_id,
                    text: hand.text.as_deref(),
                    at,
                }
                .encode(),
            )
        });
        self.student_changed(&sid, Cause::HandRaised, true);
        if let Some(out) = out {
            self.ack(&out, r#ref.as_ref());
        }
    }

    /// Another instance's `hand` event.
    pub(super) fn hand_published(&mut self, event: &str) {
        let Ok(ev) = serde_json::from_str::<HandEvent>(event) else {
            return;
        };
        if let Some(st) = self.students.get_mut(ev.student_id.as_str()) {
            st.state.hand_raised = true;
        }
        self.hands.learn(Hand {
            hand_id: ev.hand_id.as_str().into(),
            student_id: ev.student_id.as_str().into(),
            text: ev.text,
            at: ev.at.unix_ms(),
        });
    }

    /// Another instance's `hand_lowered` event.
    pub(super) fn hand_lowered_published(&mut self, event: &str) {
        if let Ok(l) = serde_json::from_str::<LoweredEvent>(event) {
            self.lower_hand(
                &LoweredHand {
                    hand_id: l.hand_id,
                    student_id: l.student_id,
                    by: String::new(),
                    at: 0,
                },
                false,
            );
        }
    }

    fn lower_hand(&mut self, l: &LoweredHand, local: bool) {
        self.hands.lower(&l.hand_id);
        let sid: Arc<str> = l.student_id.as_str().into();
        if !self.hands.is_raised(&sid)
            && let Some(st) = self.students.get_mut(&sid)
            && st.state.hand_raised
        {
            st.state.hand_raised = false;
            self.student_changed(&sid, Cause::HandLowered, local);
        }
    }
}

#[derive(serde::Deserialize)]
struct LoweredEvent {
    hand_id: String,
    student_id: String,
}
