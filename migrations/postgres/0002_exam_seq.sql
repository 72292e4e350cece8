-- How far each exam's seq may have been used. Written ahead of use (in
-- blocks) and set to the exact last seq when a room ends cleanly, so a room
-- starting after a crash never re-issues a seq a teacher may have seen.
CREATE TABLE exam_seq (
    exam_id  TEXT PRIMARY KEY,
    reserved BIGINT NOT NULL
);
