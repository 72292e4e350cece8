//! Process-wide counters, rendered in the Prometheus text format at
//! `/metrics`. Plain atomics: every hot path bumps one with `Relaxed`
//! ordering, which costs about as much as an add.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub students_connected: AtomicI64,
    pub teachers_connected: AtomicI64,
    pub handshakes_rejected: AtomicU64,
    pub rooms: AtomicI64,
    pub messages_in: AtomicU64,
    pub bad_messages: AtomicU64,
    pub events: AtomicU64,
    pub frames_out: AtomicU64,
    pub slow_closes: AtomicU64,
    pub ping_timeouts: AtomicU64,
    pub resume_replays: AtomicU64,
    pub resume_snapshots: AtomicU64,
    /// Connection tickets minted, redeemed, and refused at a handshake.
    pub tickets_issued: AtomicU64,
    pub tickets_redeemed: AtomicU64,
    pub tickets_refused: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let counters: [(&str, &str, u64); 10] = [
            (
                "examwatch_connections_total",
                "WebSocket connections accepted",
                self.connections_total.load(Ordering::Relaxed),
            ),
            (
                "examwatch_handshakes_rejected_total",
                "Handshakes refused (401/403/400)",
                self.handshakes_rejected.load(Ordering::Relaxed),
            ),
            (
                "examwatch_messages_in_total",
                "Client messages received",
                self.messages_in.load(Ordering::Relaxed),
            ),
            (
                "examwatch_bad_messages_total",
                "Client messages answered with an error",
                self.bad_messages.load(Ordering::Relaxed),
            ),
            (
                "examwatch_events_total",
                "Exam events emitted (each has a seq)",
                self.events.load(Ordering::Relaxed),
            ),
            (
                "examwatch_frames_out_total",
                "Frames queued to sockets by rooms",
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
        ];
        let gauges: [(&str, &str, i64); 3] = [
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
                "examwatch_rooms",
                "Exam rooms in memory",
                self.rooms.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::with_capacity(2048);
        for (name, help, v) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        for (name, help, v) in gauges {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
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
            out.push_str(&format!(
                "# HELP {name} Connection tickets {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        out
    }
}
