-- Exam control (issue 14): the timing model, the phase clock, and each
-- student's accommodations, extensions, pauses and access. Times are unix
-- milliseconds. `version` increases with every change, so an instance that
-- hears of two changes out of order keeps the newer (room/control.rs).
ALTER TABLE exams ADD COLUMN timing TEXT NOT NULL DEFAULT 'fixed';
ALTER TABLE exams ADD COLUMN opens_at BIGINT;
ALTER TABLE exams ADD COLUMN closes_at BIGINT;
ALTER TABLE exams ADD COLUMN duration_ms BIGINT;
ALTER TABLE exams ADD COLUMN auto_start BIGINT NOT NULL DEFAULT 0;
ALTER TABLE exams ADD COLUMN started_at BIGINT;
ALTER TABLE exams ADD COLUMN ended_at BIGINT;
-- Exam-wide pauses, a JSON array of {"from","to"} (control/clock.rs Span).
ALTER TABLE exams ADD COLUMN pauses TEXT NOT NULL DEFAULT '[]';
ALTER TABLE exams ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- Exams created before this migration keep what they had: students could
-- sit any of them ('scheduled' was only the default label, never a state),
-- so they are in progress now, with their old start and duration.
UPDATE exams SET opens_at = starts_at, duration_ms = duration_secs * 1000;
UPDATE exams SET phase = 'in_progress' WHERE phase IN ('running', 'scheduled');

-- One row per student the exam's control has touched: accommodations set
-- on the roster or by PATCH, extensions, pauses, access and how their exam
-- ended. Students without a row have the defaults.
CREATE TABLE student_control (
    exam_id         TEXT NOT NULL,
    student_id      TEXT NOT NULL,
    extra_minutes   BIGINT NOT NULL DEFAULT 0,
    time_multiplier DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    extension_ms    BIGINT NOT NULL DEFAULT 0,
    started_at      BIGINT,
    pauses          TEXT NOT NULL DEFAULT '[]',
    -- 'submitted' | 'time_up' | 'terminated'
    finished        TEXT,
    finished_at     BIGINT,
    -- 1 after `deny` or `terminate`, until `allow`.
    denied          BIGINT NOT NULL DEFAULT 0,
    deny_reason     TEXT,
    -- A second-session block was lifted (`reset_session`) at this time.
    reset_at        BIGINT,
    version         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (exam_id, student_id)
);
CREATE INDEX exams_phase ON exams (phase);
