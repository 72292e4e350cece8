//! Every family's help text: what it counts, exactly (unit, when it moves,
//! what it leaves out). Prometheus shows these as `# HELP`; the table in
//! docs/PROTOCOL.md, appendix B.1, repeats them word for word (a test
//! holds it to this list).

/// How a family is described to the recorder.
pub(super) enum Kind {
    Counter,
    Gauge,
    Seconds,
    Records,
}

/// Every family, its kind, and what it counts.
pub(super) const HELP: &[(&str, Kind, &str)] = &[
    (
        "examwatch_connections_total",
        Kind::Counter,
        "Connections opened: WebSocket upgrades (every role) and students' HTTP sessions (GET me/events?transport=http); listener SSE streams not included",
    ),
    (
        "examwatch_students_connected",
        Kind::Gauge,
        "Open student connections: WebSockets and HTTP sessions (listener SSE streams not included)",
    ),
    (
        "examwatch_teachers_connected",
        Kind::Gauge,
        "Open watcher WebSocket connections: teachers, proctors and admins together (SSE streams not included)",
    ),
    (
        "examwatch_connections_open",
        Kind::Gauge,
        "Open connections by token role (student, proctor, teacher, admin) and transport (websocket; http: a student's HTTP session, GET me/events?transport=http + POST me/messages); listener SSE streams are in examwatch_sse_streams and examwatch_sse_student_streams",
    ),
    (
        "examwatch_sse_streams",
        Kind::Gauge,
        "Open Server-Sent Events streams (watchers on GET /v1/exams/{id}/events; not in the socket gauges, their frames are in examwatch_frames_out_total)",
    ),
    (
        "examwatch_sse_student_streams",
        Kind::Gauge,
        "Open student Server-Sent Events streams (GET /v1/exams/{id}/me/events; the student is not counted as connected by it)",
    ),
    (
        "examwatch_handshakes_rejected_total",
        Kind::Counter,
        "Handshakes refused before the upgrade or the stream (400/401/403/426/429/503), each counted once, by transport (websocket, sse, ticket = POST /v1/tickets) and reason (the error code of the JSON answer); connections refused at server.max_connections are in examwatch_connections_refused_full_total instead",
    ),
    (
        "examwatch_handshakes_rate_limited_total",
        Kind::Counter,
        "Handshakes and ticket requests refused with 429 by the per-subject or per-address handshake limit (also in examwatch_handshakes_rejected_total with reason rate_limited)",
    ),
    (
        "examwatch_handshake_logs_suppressed_total",
        Kind::Counter,
        "Refused handshakes not logged one by one (over log.refused_handshakes_per_second); all are still counted",
    ),
    ("examwatch_rooms", Kind::Gauge, "Exam rooms in memory"),
    (
        "examwatch_shard_connections",
        Kind::Gauge,
        "Open connections (HTTP, WebSocket, SSE) served by each shard thread, by shard (0 to server.shards - 1; no series with server.shards = 0)",
    ),
    (
        "examwatch_shard_rooms",
        Kind::Gauge,
        "Exam rooms running on each shard thread, by shard (an exam's room runs on the shard its id hashes to; no series with server.shards = 0)",
    ),
    (
        "examwatch_messages_in_total",
        Kind::Counter,
        "WebSocket text frames received from clients, by client message type; invalid = not a valid client message (bad JSON, unknown type, bad fields), unread = refused before parsing (over limits.max_message_bytes or the message rate); pings, pongs and close frames not counted",
    ),
    (
        "examwatch_bad_messages_total",
        Kind::Counter,
        "Client messages answered with an error (by the socket or by the room)",
    ),
    (
        "examwatch_events_total",
        Kind::Counter,
        "Exam events this instance's rooms took in, each once with its seq: numbered here (no Redis), or numbered by Redis and received back from it (any instance's, with Redis)",
    ),
    (
        "examwatch_frames_out_total",
        Kind::Counter,
        "Event frames rooms queued to sockets and SSE streams, one per recipient (refused pushes, closed 4008, not counted); replies to one connection are in examwatch_messages_out_total only",
    ),
    (
        "examwatch_messages_out_total",
        Kind::Counter,
        "Server messages queued to a socket's or SSE stream's outbound queue (or written straight to the socket, for refusals of a client frame), one per recipient, by message type; refused pushes (closed 4008) not counted; close frames and pings not counted",
    ),
    (
        "examwatch_slow_consumer_closes_total",
        Kind::Counter,
        "Connections and SSE streams closed 4008 because their outbound queue was full, once each, by path: teacher_queue and student_queue (a socket), sse_watcher and sse_student (a stream), snapshot (a watcher's queue could not take a snapshot), replay (nor a resume replay)",
    ),
    (
        "examwatch_closes_total",
        Kind::Counter,
        "WebSocket connections ended, once each, by who ended them (server: our close frame; client: theirs; transport: no close frame) and code (the close code; 1005 = client close without a code, 1006 = no close frame)",
    ),
    (
        "examwatch_ping_timeouts_total",
        Kind::Counter,
        "Connections closed 4000 because no pong or other frame arrived within two ping intervals",
    ),
    (
        "examwatch_resume_replays_total",
        Kind::Counter,
        "Watcher resumes served from the room's history",
    ),
    (
        "examwatch_resume_snapshots_total",
        Kind::Counter,
        "Watcher resumes answered with a fresh snapshot (the gap could not be replayed)",
    ),
    (
        "examwatch_accept_errors_total",
        Kind::Counter,
        "Failed accepts (e.g. out of file descriptors); the listener backed off",
    ),
    (
        "examwatch_connections_refused_full_total",
        Kind::Counter,
        "Connections answered 503 at server.max_connections",
    ),
    (
        "examwatch_tls_handshake_failures_total",
        Kind::Counter,
        "TLS handshakes on the public listener that made no connection, by reason: timeout (not complete within server.request_head_timeout, or 2 s for a 503 past the cap), closed (the peer went away), protocol (refused by rustls: TLS 1.1 or older, not TLS, an untrusting client's alert)",
    ),
    (
        "examwatch_tickets_issued_total",
        Kind::Counter,
        "Connection tickets minted",
    ),
    (
        "examwatch_tickets_redeemed_total",
        Kind::Counter,
        "Connection tickets redeemed at a handshake",
    ),
    (
        "examwatch_tickets_refused_total",
        Kind::Counter,
        "Connection tickets refused at a handshake (invalid_ticket)",
    ),
    (
        "examwatch_fanout_seconds",
        Kind::Seconds,
        "Per event this instance fans out (numbered here or relayed by the broker): seconds from its cause to the event's bytes being queued for every local member; the cause is a client message read from its socket (the wait in the room's inbox included), or the room taking a command, timer or broker message",
    ),
    (
        "examwatch_broker_publish_seconds",
        Kind::Seconds,
        "Per event published to Redis: seconds from the room handing it to the broker to Redis confirming its pipeline (waiting while Redis is away included); events dropped over broker.queue_limit not observed",
    ),
    (
        "examwatch_broker_reconnects_total",
        Kind::Counter,
        "Times Redis became reachable after being unreachable (a lost connection, or a start without it); rooms re-synchronise each time",
    ),
    (
        "examwatch_broker_resubscriptions_total",
        Kind::Counter,
        "Times an exam's sharded subscription (`{broker.prefix}:exam:{<exam>}`) was confirmed again after Redis dropped it: a lost connection, a failed-over primary or a slot moved to another node of a Redis Cluster; that exam's room re-synchronises each time",
    ),
    (
        "examwatch_db_pending_writes",
        Kind::Gauge,
        "Records accepted by the database writer and not yet committed (read at scrape time)",
    ),
    (
        "examwatch_db_failing",
        Kind::Gauge,
        "1 while database writes fail (and are retried), else 0 (read at scrape time)",
    ),
    (
        "examwatch_db_committed_total",
        Kind::Counter,
        "Records the database writer committed or set aside (rejected), counted once the batch holding them is done",
    ),
    (
        "examwatch_db_retries_total",
        Kind::Counter,
        "Failed batch commits for an unreachable or failing database (retried with backoff; each attempt counted)",
    ),
    (
        "examwatch_db_rejected_total",
        Kind::Counter,
        "Records the database refused for their data (a constraint or type error, not an outage): logged and set aside, an answer's student told not_stored",
    ),
    (
        "examwatch_db_collisions_total",
        Kind::Counter,
        "Events not stored because their (exam, seq) was already in the log (a re-issued seq; seq reservation should make this 0)",
    ),
    (
        "examwatch_db_batch_records",
        Kind::Records,
        "Per batch the database writer takes from its queue: how many records it holds (at most database.batch_max), observed once before the first attempt",
    ),
    (
        "examwatch_db_commit_seconds",
        Kind::Seconds,
        "Per database transaction that committed (a batch, or one record when a batch was split to set a bad record aside): seconds from its start to its commit; failed attempts not observed",
    ),
    (
        "examwatch_fleet_connections",
        Kind::Gauge,
        "Open connections (WebSockets and SSE streams) of each instance of the fleet as this instance last read them from Redis (cluster.rebalance_interval), by member (instance id) and role (student; teacher = every watcher role); an instance gone keeps its last value; with the in-memory broker, this instance alone",
    ),
    (
        "examwatch_http_batches_total",
        Kind::Counter,
        "POST /v1/exams/{id}/me/messages batches by path: local (this instance holds the session), forwarded (sent through Redis to the instance holding it, which answered), relayed (run here for a POST that reached another instance), unreachable (for another instance that could not be reached or did not answer: 503 session_unreachable); each batch in one path",
    ),
    (
        "examwatch_rebalance_shed_total",
        Kind::Counter,
        "Connections this instance closed with 1012 \"rebalance\" (automatic rebalancing, or POST /v1/admin/instances/{id}/drain), by role (student; teacher = every watcher role); they are also in examwatch_closes_total{code=\"1012\"}",
    ),
    (
        "process_open_fds",
        Kind::Gauge,
        "File descriptors this process has open (entries of /proc/self/fd, read at scrape time; -1 where unavailable)",
    ),
    (
        "process_max_fds",
        Kind::Gauge,
        "The process's open-files limit (RLIMIT_NOFILE soft limit, read at scrape time; sockets past it fail to accept)",
    ),
];

/// The families the server exports, for tests and the dashboard check.
pub fn families() -> impl Iterator<Item = &'static str> {
    described().map(|(name, _)| name)
}

/// Every family with its help text (docs/PROTOCOL.md, B.1, repeats them).
pub fn described() -> impl Iterator<Item = (&'static str, &'static str)> {
    HELP.iter().map(|(name, _, help)| (*name, *help))
}
