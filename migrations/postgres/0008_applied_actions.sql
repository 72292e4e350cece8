-- The ids of the latest proctor actions applied to each student (a JSON
-- array, newest last, at most 32), written in the same conditional update
-- as the change itself. An action that failed halfway is retried under its
-- id; the students it already changed are then skipped, so an `extend`
-- never counts twice (api/actions.rs).
ALTER TABLE student_control ADD COLUMN applied_actions TEXT;
