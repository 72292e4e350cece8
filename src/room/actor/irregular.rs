//! The room's side of irregularities: sending alerts with their id and
//! category, the signals that are not status changes (room/signals.rs),
//! network incidents (room/incident.rs), proctors' reports and
//! resolutions, and handing every alert to the `alerts` table.
//!
//! Like the rest of the actor this only decides what to send and records
//! it; the rules live in the plain modules it asks.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Audience, Room};
use crate::{
    broker::Broker,
    protocol::{AlertKind, AlertState, ClientMsg, Seq, ServerMsg, Status, Timestamp},
    room::{Report, RoomCmd, incident},
    store::{alerts::AlertRow, writer::Record},
};

impl Room {
    /// Sends an automatic alert: a fresh `alert_id`, the kind's category,
    /// state `open`. `student` is `None` for a room's alert.
    pub(super) fn send_alert(
        &mut self,
        student: Option<&Arc<str>>,
        kind: AlertKind,
        count: u32,
        students: Option<u32>,
    ) {
        let at = Timestamp::now();
        // Made once, outside the builder: the builder may run twice (a
        // Redis outage encodes a provisional copy) and the id must not change.
        let alert_id = uuid::Uuid::new_v4().to_string();
        self.publish_event(Audience::Teachers, "alert", student, |_, seq| {
            Some(
                ServerMsg::Alert {
                    seq,
                    alert_id: &alert_id,
                    student_id: student.map(|s| &**s),
                    kind,
                    category: kind.category(),
                    state: AlertState::Open,
                    at,
                    count,
                    students,
                    text: None,
                    by: None,
                }
                .encode(),
            )
        });
    }

    /// Raises (and sends, unless folded) each of `kinds` for a student.
    pub(super) fn raise_signals(&mut self, sid: &Arc<str>, kinds: Vec<AlertKind>) {
        for kind in kinds {
            if let Some(count) = self.raise_alert(sid, kind) {
                self.emit_alert(sid, kind, count);
            }
        }
    }

    /// What a student's message says about heartbeats and `answered`,
    /// before the message itself is applied.
    pub(super) fn watch_signals(&mut self, sid: &Arc<str>, msg: &ClientMsg) -> Vec<AlertKind> {
        let gap = self.ctx.alerts.heartbeat_gap;
        let Some(st) = self.students.get_mut(sid) else {
            return Vec::new();
        };
        if st.submitted() {
            return Vec::new();
        }
        let now = std::time::Instant::now();
        let signals = &mut st.signals;
        match msg {
            ClientMsg::Heartbeat {} => {
                signals.heartbeat(now);
                Vec::new()
            }
            ClientMsg::Progress { answered, .. } => signals
                .working(now, gap)
                .into_iter()
                .chain(signals.progress(*answered))
                .collect(),
            ClientMsg::Answer { .. } => signals.working(now, gap).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// A student's socket was lost here (their grace clock runs): the other
    /// instances are told, and it counts towards a network incident.
    pub(super) fn student_dropped(&mut self, sid: &Arc<str>) {
        if let Broker::Redis(redis) = &self.ctx.broker {
            let (redis, exam, student) = (redis.clone(), self.exam_id.clone(), sid.clone());
            self.ctx.tracker.spawn(async move {
                if let Err(e) = redis.send_dropped(&exam, &student).await {
                    tracing::debug!(error = %e, "cannot tell the cluster of a drop");
                }
            });
        }
        self.count_drop(sid);
    }

    /// A student's socket was lost on another instance: counted like ours,
    /// so every instance sees the whole exam's drops, and judges (and folds
    /// its own students' alerts) alike.
    pub(super) fn dropped_elsewhere(&mut self, sid: &Arc<str>) {
        self.holders.forget(sid);
        if let Some(st) = self.students.get_mut(sid) {
            if st.conn.is_some() {
                return; // back here already: that drop is over
            }
            st.state.connected = false;
        }
        self.count_drop(sid);
    }

    /// A drop, here or elsewhere: part of a network incident? In a cluster
    /// every instance sees the incident; the first to claim it in Redis
    /// sends the one alert.
    fn count_drop(&mut self, sid: &Arc<str>) {
        let connected = self
            .students
            .values()
            .filter(|s| s.state.connected && s.state.status != Status::Submitted)
            .count();
        let thresholds = incident::Thresholds::from(&self.ctx.alerts);
        let now = std::time::Instant::now();
        let students = match self.incidents.dropped(sid, connected, now, thresholds) {
            incident::Verdict::Incident { students } => students,
            incident::Verdict::Folded => return self.incident_goes_on(thresholds.window),
            incident::Verdict::Normal => return,
        };
        let Broker::Redis(redis) = &self.ctx.broker else {
            return self.incident_claimed(students);
        };
        let (redis, exam, inbox) = (redis.clone(), self.exam_id.clone(), self.inbox.clone());
        // The claim lasts as long as the incident: a window past its last
        // drop (`incident_goes_on`), so the next incident is claimed anew.
        let ttl = thresholds.window;
        self.ctx.tracker.spawn(async move {
            // Better a second alert than none when Redis cannot answer.
            let ours = redis.claim_incident(&exam, ttl).await.unwrap_or(true);
            if ours && let Some(inbox) = inbox.upgrade() {
                let _ = inbox.send(RoomCmd::IncidentClaimed { students }).await;
            }
        });
    }

    /// A drop folded into the incident in progress: its claim in Redis
    /// lives a window past this drop, as the incident does here.
    fn incident_goes_on(&self, window: std::time::Duration) {
        if let Broker::Redis(redis) = &self.ctx.broker {
            let (redis, exam) = (redis.clone(), self.exam_id.clone());
            self.ctx.tracker.spawn(async move {
                let _ = redis.extend_incident(&exam, window).await;
            });
        }
    }

    /// Ours to report: one `network_incident` alert for the room.
    pub(super) fn incident_claimed(&mut self, students: u32) {
        tracing::warn!(students, "network incident: many students dropped at once");
        self.send_alert(None, AlertKind::NetworkIncident, 1, Some(students));
    }

    /// A proctor's report, already stored by the API: numbered and sent to
    /// every watcher like any alert.
    pub(super) fn file_report(&mut self, report: Report, reply: oneshot::Sender<Option<Seq>>) {
        let sid: Option<Arc<str>> = report.student_id.as_deref().map(Arc::from);
        // Counted in the student's `alerts` when the room knows them.
        let count = match &sid {
            Some(s) => self.raise_alert(s, AlertKind::Report).unwrap_or(1),
            None => 1,
        };
        let before = self.seq;
        self.publish_event(Audience::Teachers, "alert", sid.as_ref(), |_, seq| {
            Some(
                ServerMsg::Alert {
                    seq,
                    alert_id: &report.alert_id,
                    student_id: report.student_id.as_deref(),
                    kind: AlertKind::Report,
                    category: report.category,
                    state: AlertState::Open,
                    at: report.at,
                    count,
                    students: None,
                    text: Some(&report.text),
                    by: Some(&report.by),
                }
                .encode(),
            )
        });
        // Numbered here only with the memory broker; in a cluster the
        // number comes back from Redis (and is written to the row then).
        let seq = matches!(self.ctx.broker, Broker::Memory) && self.seq > before;
        let _ = reply.send(seq.then_some(self.seq));
    }

    /// An alert was resolved (its row says so already): tell watchers.
    pub(super) fn alert_resolved(&mut self, alert_id: &str, by: &str, note: &str, at: Timestamp) {
        self.publish_event(Audience::Teachers, "alert_resolved", None, |_, seq| {
            Some(
                ServerMsg::AlertResolved {
                    seq,
                    alert_id,
                    by,
                    note,
                    at,
                }
                .encode(),
            )
        });
    }

    /// Hands an `alert` event to the `alerts` table (beside its event).
    pub(super) fn log_alert(&self, seq: Seq, kind: &str, payload: &str) {
        if kind != "alert" {
            return;
        }
        if let Some(row) = AlertRow::from_event(&self.exam_id, seq as i64, payload) {
            self.ctx.writer.write(Record::Alert(Box::new(row)));
        }
    }
}
