//! Process-wide counters, rendered in the Prometheus text format at
//! `/metrics`. Plain atomics: every hot path bumps one with `Relaxed`
//! ordering, which costs about as much as an add.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub students_connected: AtomicI64,
    pub teachers_connected: AtomicI64,
    /// Open Server-Sent Events streams (`GET /v1/exams/{id}/events`), which
    /// are not sockets: counted apart from `teachers_connected`.
    pub sse_streams: AtomicI64,
    /// Open student streams (`GET /v1/exams/{id}/me/events`): not sockets,
    /// and not in `students_connected` (the student is not connected).
    pub sse_student_streams: AtomicI64,
    pub handshakes_rejected: AtomicU64,
    /// Of those, refused with 429 by a handshake rate limit.
    pub handshakes_rate_limited: AtomicU64,
    /// Refused-handshake log lines not written (over the log budget).
    pub handshake_logs_suppressed: AtomicU64,
    pub rooms: AtomicI64,
    pub messages_in: AtomicU64,
    pub bad_messages: AtomicU64,
    pub events: AtomicU64,
    pub frames_out: AtomicU64,
    pub slow_closes: AtomicU64,
    pub ping_timeouts: AtomicU64,
    pub resume_replays: AtomicU64,
    pub resume_snapshots: AtomicU64,
    /// `accept` failed (out of file descriptors, …); the loop backed off.
    pub accept_errors: AtomicU64,
    /// Connections answered 503 because `server.max_connections` were open.
    pub connections_refused_full: AtomicU64,
    /// Connection tickets minted, redeemed, and refused at a handshake.
    pub tickets_issued: AtomicU64,
    pub tickets_redeemed: AtomicU64,
    pub tickets_refused: AtomicU64,
}

impl Metrics {
    pub fn render(&self, instance: &str) -> String {
        let counters = [
            (
                "examwatch_connections_total",
                "WebSocket connections accepted",
                self.connections_total.load(Ordering::Relaxed),
            ),
            (
                "examwatch_handshakes_rejected_total",
                "Handshakes refused before the upgrade (400/401/403/426/429/503), each counted",
                self.handshakes_rejected.load(Ordering::Relaxed),
            ),
            (
                "examwatch_handshakes_rate_limited_total",
                "Handshakes refused with 429 (per-subject or per-IP limit)",
                self.handshakes_rate_limited.load(Ordering::Relaxed),
            ),
            (
                "examwatch_handshake_logs_suppressed_total",
                "Refused handshakes not logged one by one (over log.refused_handshakes_per_second)",
                self.handshake_logs_suppressed.load(Ordering::Relaxed),
            ),
            (
                "examwatch_messages_in_total",
                "Client messages received",
                self.messages_in.load(Ordering::Relaxed),
            ),
            (
                "examwatch_bad_messages_total",
                "Client messages answered with an error (by the socket or by the room)",
                self.bad_messages.load(Ordering::Relaxed),
            ),
            (
                "examwatch_events_total",
                "Exam events emitted (each has a seq)",
                self.events.load(Ordering::Relaxed),
            ),
            (
                "examwatch_frames_out_total",
                "Frames rooms queued to sockets and SSE streams (refused pushes, closed 4008, not counted)",
                self.frames_out.load(Ordering::Relaxed),
            ),
            (
                "examwatch_slow_consumer_closes_total",
                "Connections closed 4008 because their queue was full",
                self.slow_closes.load(Ordering::Relaxed),
            ),
            (
                "examwatch_ping_timeouts_total",
                "Connections closed because no pong arrived",
                self.ping_timeouts.load(Ordering::Relaxed),
            ),
            (
                "examwatch_resume_replays_total",
                "Teacher resumes served from history",
                self.resume_replays.load(Ordering::Relaxed),
            ),
            (
                "examwatch_resume_snapshots_total",
                "Teacher resumes answered with a fresh snapshot",
                self.resume_snapshots.load(Ordering::Relaxed),
            ),
            (
                "examwatch_accept_errors_total",
                "Failed accepts (e.g. out of file descriptors); the listener backed off",
                self.accept_errors.load(Ordering::Relaxed),
            ),
            (
                "examwatch_connections_refused_full_total",
                "Connections answered 503 at server.max_connections",
                self.connections_refused_full.load(Ordering::Relaxed),
            ),
        ];
        let gauges = [
            (
                "examwatch_students_connected",
                "Open student sockets",
                self.students_connected.load(Ordering::Relaxed),
            ),
            (
                "examwatch_teachers_connected",
                "Open teacher sockets",
                self.teachers_connected.load(Ordering::Relaxed),
            ),
            (
                "examwatch_sse_streams",
                "Open Server-Sent Events streams (watchers on GET /v1/exams/{id}/events; not in the socket gauges, their frames are in examwatch_frames_out_total)",
                self.sse_streams.load(Ordering::Relaxed),
            ),
            (
                "examwatch_sse_student_streams",
                "Open student Server-Sent Events streams (GET /v1/exams/{id}/me/events; the student is not counted as connected by it)",
                self.sse_student_streams.load(Ordering::Relaxed),
            ),
            (
                "examwatch_rooms",
                "Exam rooms in memory",
                self.rooms.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::with_capacity(4096);
        for (name, help, v) in counters {
            write_metric(&mut out, name, help, "counter", instance, v);
        }
        for (name, help, v) in gauges {
            write_metric(&mut out, name, help, "gauge", instance, v);
        }
        let tickets = [
            ("issued", "minted", &self.tickets_issued),
            (
                "redeemed",
                "redeemed at a handshake",
                &self.tickets_redeemed,
            ),
            (
                "refused",
                "refused at a handshake (invalid_ticket)",
                &self.tickets_refused,
            ),
        ];
        for (what, help, v) in tickets {
            let (name, v) = (
                format!("examwatch_tickets_{what}_total"),
                v.load(Ordering::Relaxed),
            );
            let help = format!("Connection tickets {help}");
            write_metric(&mut out, &name, &help, "counter", instance, v);
        }
        out
    }
}

/// Appends one metric in the Prometheus text format, labelled with the
/// instance id (several instances behind one scrape job stay apart; the
/// label is `instance_id` because Prometheus owns `instance`).
pub fn write_metric(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    instance: &str,
    value: impl std::fmt::Display,
) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{instance_id=\"{}\"}} {value}\n",
        label_value(instance)
    );
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn label_value(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_carries_the_instance() {
        let m = Metrics::default();
        m.events.fetch_add(3, Ordering::Relaxed);
        let text = m.render("host:1");
        assert!(
            text.contains("examwatch_events_total{instance_id=\"host:1\"} 3\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{instance_id=\"host:1\"} "), "{line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label_value("plain"), "plain");
    }
}
