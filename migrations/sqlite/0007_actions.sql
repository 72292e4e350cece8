-- Proctor actions (issue 14 item 6) and raised hands (item 7). Times are
-- unix milliseconds, JSON is TEXT. An action is stored under the id its
-- client chose, so a retry finds it and applies nothing twice.
CREATE TABLE actions (
    exam_id    TEXT NOT NULL,
    action_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    actor_sub  TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    at         BIGINT NOT NULL,
    -- The request body as received (canonical JSON), to tell a retry from
    -- a different action under a reused id.
    payload    TEXT NOT NULL,
    -- The per-student outcome, once applied (NULL while being applied).
    result     TEXT,
    PRIMARY KEY (exam_id, action_id)
);
CREATE INDEX actions_exam_at ON actions (exam_id, at);

-- One row per student an action sent a frame to: 'pending' until their
-- client acknowledges it (`received`), then 'delivered'; 'superseded' when
-- an `allow` makes an undelivered `deny`/`terminate` moot. `frame` is the
-- exact frame to re-send on reconnect (NULL: an `exam_update`, rebuilt).
CREATE TABLE action_deliveries (
    exam_id      TEXT NOT NULL,
    action_id    TEXT NOT NULL,
    student_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    frame        TEXT,
    at           BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (exam_id, action_id, student_id)
);
CREATE INDEX action_deliveries_student ON action_deliveries (exam_id, student_id, state);

-- Raised hands: open while lowered_at is NULL; at most one open per student.
CREATE TABLE hands (
    exam_id    TEXT NOT NULL,
    hand_id    TEXT NOT NULL,
    student_id TEXT NOT NULL,
    text       TEXT,
    raised_at  BIGINT NOT NULL,
    lowered_at BIGINT,
    lowered_by TEXT,
    PRIMARY KEY (exam_id, hand_id)
);
CREATE INDEX hands_exam_student ON hands (exam_id, student_id);
