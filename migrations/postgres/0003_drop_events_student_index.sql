-- The (exam_id, student_id, seq) index cost every event a write to a
-- scattered B-tree page: with thousands of students, nearly every event
-- dirtied a page of its own (3.7 KB written per event at 20k events/s on
-- SQLite, 1.6 KB without it; 11 % of the server's CPU; docs/BENCHMARKS.md).
-- Its one reader, each student's latest state when a room loads, now scans
-- the exam's rows through the primary key (exam_id, seq) instead: a rare,
-- bounded read in exchange for a cheaper write on every event.
DROP INDEX IF EXISTS events_exam_student;
