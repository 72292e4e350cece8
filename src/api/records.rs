//! What happened: the exam's event timeline, a student's answers, and the
//! per-student report.

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Watcher, invalid};
use crate::{
    app::AppState,
    auth::Right,
    http::ApiError,
    protocol::{Status, Timestamp},
    store::{
        now_ms,
        queries::{ExamRow, StoredAnswer},
    },
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(timeline))
        .routes(routes!(answers))
        .routes(routes!(report))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// Return events with a seq greater than this (default 0).
    pub after_seq: Option<i64>,
    /// At most this many events (1-1000, default 100); outside that, 422.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// Events exactly as teachers received them, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after_seq` for the next page.
    pub next_after_seq: i64,
    pub has_more: bool,
}

/// The exam's event log, paged by seq. `seq`s may have gaps: with
/// `events.persist = false` the log keeps no plain `student` events
/// (docs/DEPLOY.md, Event persistence), and a cluster's numbering may skip
/// ahead after an outage; a gap is not a loss.
#[utoipa::path(get, path = "/v1/exams/{id}/timeline", tag = "records",
    params(("id" = String, Path, description = "Exam id"), TimelineQuery),
    responses((status = 200, description = "OK", body = Timeline), (status = 400, description = "Malformed request", body = crate::http::ErrorBody), (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody), (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody), (status = 404, description = "No such exam", body = crate::http::ErrorBody), (status = 422, description = "`invalid_field`: `limit` is outside 1-1000", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)))]
async fn timeline(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<Timeline>, ApiError> {
    caller.require_right(&id, Right::Watch)?;
    known(&app, &id).await?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let after = q.after_seq.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit must be between 1 and 1000"));
    }
    // One extra row tells whether there is a next page.
    let rows = app.store.timeline(&id, after, limit + 1).await?;
    Ok(Json(Timeline::page(rows, after, limit)))
}

impl Timeline {
    /// A page from up to `limit + 1` rows read after `after` (the extra
    /// row only tells whether there is a next page).
    pub(super) fn page(mut rows: Vec<(i64, String)>, after: i64, limit: i64) -> Self {
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_after_seq = rows.last().map(|(seq, _)| *seq).unwrap_or(after);
        let events = rows
            .into_iter()
            .filter_map(|(_, payload)| serde_json::from_str(&payload).ok())
            .collect();
        Timeline {
            events,
            next_after_seq,
            has_more,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Answers {
    pub student_id: String,
    pub answers: Vec<StoredAnswer>,
}

/// Every stored answer of one student, oldest first.
#[utoipa::path(get, path = "/v1/exams/{id}/students/{student_id}/answers", tag = "records",
    params(("id" = String, Path, description = "Exam id"), ("student_id" = String, Path)),
    responses((status = 200, description = "OK", body = Answers), (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody), (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody), (status = 404, description = "No such exam", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)))]
async fn answers(
    State(app): State<AppState>,
    caller: Watcher,
    Path((id, student_id)): Path<(String, String)>,
) -> Result<Json<Answers>, ApiError> {
    caller.require_right(&id, Right::Watch)?;
    known(&app, &id).await?;
    let answers = app.store.answers(&id, &student_id).await?;
    Ok(Json(Answers {
        student_id,
        answers,
    }))
}

/// One CSV row per student: status, answered (stored answers: distinct
/// questions), connections, total time disconnected, focus-lost count,
/// submission time. RFC 4180; a cell that would start a spreadsheet
/// formula (`=`, `+`, `-`, `@`, tab, CR) is prefixed with `'` and quoted.
#[utoipa::path(get, path = "/v1/exams/{id}/report.csv", tag = "records",
    params(("id" = String, Path, description = "Exam id")),
    responses((status = 200, description = "One row per student", content_type = "text/csv", body = String), (status = 401, description = "Missing, invalid or expired token", body = crate::http::ErrorBody), (status = 403, description = "`teachers_only` (a student's token) or `exam_not_granted`", body = crate::http::ErrorBody), (status = 404, description = "No such exam", body = crate::http::ErrorBody), (status = 503, description = "The database could not answer", body = crate::http::ErrorBody)))]
async fn report(
    State(app): State<AppState>,
    caller: Watcher,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_right(&id, Right::Watch)?;
    known(&app, &id).await?;
    let live = app.registry.counts(&id).await.is_some();
    let mut states = app.store.student_states(&id).await?;
    let submitted = app.store.submissions(&id).await?;
    let answered = app.store.answered_counts(&id).await?;
    let roster = app.store.roster(&id).await?;
    let categories = app.store.alert_categories(&id).await?;
    let controls = app.store.student_controls(&id).await?;
    // Extra time granted (accommodation and extensions, in seconds) and how
    // the exam ended for the student (issue 14: disputes need both).
    let timing_of = |sid: &str, submitted: bool| -> [String; 2] {
        let c = controls.get(sid);
        let extra = c.map_or(0, |c| {
            i64::from(c.clock.extra_minutes) * 60 + c.clock.extension_ms / 1000
        });
        let ended = match c.and_then(|c| c.finished) {
            Some((f, _)) => f.as_str(),
            None if submitted => "submitted",
            None => "",
        };
        [extra.to_string(), ended.to_owned()]
    };
    let mut away: HashMap<String, i64> = HashMap::new();
    let now = now_ms();
    let mut per_user: BTreeMap<String, Vec<(i64, Option<i64>)>> = BTreeMap::new();
    for s in app.store.sessions(&id).await? {
        per_user
            .entry(s.user_id)
            .or_default()
            .push((s.connected_at, s.disconnected_at));
    }
    // With `events.persist = false` the log keeps no `student` events:
    // students known only from their records (sessions, answers, a
    // submission) get the live room's state while it runs, else one built
    // from those records (so a student who sat the exam is never `absent`).
    let stored: std::collections::HashSet<String> =
        states.iter().map(|s| s.student_id.clone()).collect();
    let recorded: std::collections::BTreeSet<&String> = per_user
        .keys()
        .chain(submitted.keys())
        .chain(answered.keys())
        .filter(|sid| !stored.contains(*sid))
        .collect();
    let mut live_states = match live && !recorded.is_empty() {
        true => app.registry.states(&id).await.unwrap_or_default(),
        false => HashMap::new(),
    };
    for sid in recorded {
        let live_state = live_states.remove(sid.as_str());
        let name = roster.get(sid).map(|(name, _)| name.clone());
        let sessions = per_user.get(sid).map_or(0, Vec::len);
        states.push(live_state.unwrap_or_else(|| recorded_state(sid, name, sessions)));
    }
    // Time away counts until the student submitted, the exam's scheduled
    // end (when it has one), or now, whichever comes first.
    let exam_end = match app.store.exam(&id).await? {
        Some(ExamRow { clock, .. }) => clock
            .ended_at
            .or(clock.closes_at)
            .or(clock.opens_at.zip(clock.duration_ms).map(|(s, d)| s + d))
            .unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    for (user, sessions) in per_user {
        let end = submitted.get(&user).copied().unwrap_or(now).min(exam_end);
        away.insert(user, disconnected_ms(&sessions, end));
    }
    let mut csv = String::from(
        "student_id,name,status,answered,connections,total_disconnected_seconds,focus_lost_count,submitted_at,alerts_environment,alerts_test_taker,alerts_technical,extra_time_seconds,ended\r\n",
    );
    let mut seen = std::collections::HashSet::new();
    for st in &states {
        seen.insert(st.student_id.as_str());
        let submitted_at = submitted.get(&st.student_id).copied();
        let status = match (submitted_at, st.status) {
            (Some(_), _) | (_, Status::Submitted) => "submitted",
            // With no live room, nobody is connected.
            _ if !live => "disconnected",
            (_, Status::Active) => "active",
            (_, Status::Idle) => "idle",
            (_, Status::Disconnected) => "disconnected",
        };
        let [environment, test_taker, technical] =
            categories.get(&st.student_id).copied().unwrap_or_default();
        let [extra_time, ended] = timing_of(&st.student_id, status == "submitted");
        let row = [
            st.student_id.clone(),
            st.name.clone(),
            status.to_owned(),
            // Answers actually stored, never the client's own claim
            // (`progress.answered` before its first stored answer).
            answered
                .get(&st.student_id)
                .copied()
                .unwrap_or(0)
                .to_string(),
            st.connections.to_string(),
            (away.get(&st.student_id).copied().unwrap_or(0) / 1000).to_string(),
            st.focus_lost_count.to_string(),
            submitted_at
                .or(st.submitted_at.map(|t| t.unix_ms()))
                .map(|ms| {
                    humantime::format_rfc3339_seconds(Timestamp::from_unix_ms(ms).0).to_string()
                })
                .unwrap_or_default(),
            environment.to_string(),
            test_taker.to_string(),
            technical.to_string(),
            extra_time,
            ended,
        ];
        push_row(&mut csv, &row);
    }
    // Rostered students who never connected.
    let mut absent: Vec<_> = roster
        .iter()
        .filter(|(id, _)| !seen.contains(id.as_str()))
        .collect();
    absent.sort();
    for (student_id, (name, _)) in absent {
        let [extra_time, ended] = timing_of(student_id, false);
        push_row(
            &mut csv,
            &[
                student_id.clone(),
                name.clone(),
                "absent".into(),
                "0".into(),
                "0".into(),
                "0".into(),
                "0".into(),
                String::new(),
                "0".into(),
                "0".into(),
                "0".into(),
                extra_time,
                ended,
            ],
        );
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}-report.csv\""),
            ),
        ],
        csv,
    ))
}

/// 404 for an exam that was never created nor sat.
pub(super) async fn known(app: &AppState, id: &str) -> Result<(), ApiError> {
    if app.store.exam_known(id).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such exam",
        ))
    }
}

/// Time without any open session between the first connect and `end`.
fn disconnected_ms(sessions: &[(i64, Option<i64>)], end: i64) -> i64 {
    let mut total = 0;
    // The furthest point covered by a session so far (None: one is open).
    let mut covered_until: Option<i64> = None;
    let mut open = false;
    for &(start, stop) in sessions {
        // A session never closed (the server crashed) ends where the next begins.
        if open {
            open = false;
            covered_until = Some(covered_until.map_or(start, |u| u.max(start)));
        }
        if let Some(until) = covered_until
            && !open
            && start > until
        {
            total += start - until;
        }
        match stop {
            None => open = true,
            Some(stop) => covered_until = Some(covered_until.map_or(stop, |u| u.max(stop))),
        }
    }
    if let Some(until) = covered_until
        && !open
        && end > until
    {
        total += end - until;
    }
    total
}

/// Appends one CSV record (RFC 4180, CRLF line ends) of `fields`.
/// A student's state from their records alone: no focus or activity is
/// known, only who they are and how often they connected.
fn recorded_state(
    sid: &str,
    name: Option<String>,
    sessions: usize,
) -> crate::protocol::StudentState {
    crate::protocol::StudentState {
        connections: u32::try_from(sessions).unwrap_or(u32::MAX),
        ..crate::protocol::StudentState::fresh(
            sid.to_owned(),
            name.unwrap_or_else(|| sid.to_owned()),
            Status::Disconnected,
            Timestamp::now(),
        )
    }
}

fn push_row(csv: &mut String, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            csv.push(',');
        }
        push_cell(csv, f);
    }
    csv.push_str("\r\n");
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP's
/// "CSV injection" list): `=`, `+`, `-`, `@`, and tab or carriage return,
/// which some spreadsheets skip before looking for one of those.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Appends one field. Names and ids are the user's choice, so a cell that
/// a spreadsheet would run as a formula (`=HYPERLINK(...)`) is neutralised
/// as OWASP recommends: prefixed with `'` (shown, not evaluated) and quoted.
/// Otherwise RFC 4180: a field holding a comma, quote, CR or LF is quoted,
/// with its quotes doubled. Every cell goes through here, counts included
/// (none is ever negative, so no number is altered).
fn push_cell(csv: &mut String, field: &str) {
    let formula = field.starts_with(FORMULA_START);
    if !formula && !field.contains([',', '"', '\n', '\r']) {
        csv.push_str(field);
        return;
    }
    csv.push('"');
    if formula {
        csv.push('\'');
    }
    for c in field.chars() {
        if c == '"' {
            csv.push('"');
        }
        csv.push(c);
    }
    csv.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnected_time_counts_gaps_between_sessions() {
        // 0-10 connected, 10-15 away, 15-30 connected, then away until 40.
        assert_eq!(disconnected_ms(&[(0, Some(10)), (15, Some(30))], 40), 15);
        // Overlapping sessions (a takeover) leave no gap.
        assert_eq!(disconnected_ms(&[(0, Some(20)), (10, Some(30))], 30), 0);
        // Still connected: no trailing gap.
        assert_eq!(disconnected_ms(&[(0, Some(10)), (12, None)], 100), 2);
        // A session left open by a crash ends where the next one starts.
        assert_eq!(disconnected_ms(&[(0, None), (50, Some(60))], 70), 10);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        let mut csv = String::new();
        push_row(&mut csv, &["a".into(), "O'Brien, \"Al\"".into()]);
        assert_eq!(csv, "a,\"O'Brien, \"\"Al\"\"\"\r\n");
    }

    fn cell(f: &str) -> String {
        let mut csv = String::new();
        push_cell(&mut csv, f);
        csv
    }

    #[test]
    fn csv_cells_that_start_a_formula_are_neutralised() {
        assert_eq!(cell("=1+2"), "\"'=1+2\"");
        assert_eq!(cell("+1"), "\"'+1\"");
        assert_eq!(cell("-1"), "\"'-1\"");
        assert_eq!(cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(cell("\t=1"), "\"'\t=1\"");
        assert_eq!(cell("\r=1"), "\"'\r=1\"");
        // Still RFC 4180: quotes doubled inside the quoted field.
        assert_eq!(
            cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        // Only the first character matters; plain cells stay as they are.
        assert_eq!(cell("a=b"), "a=b");
        assert_eq!(cell("Ada Lovelace"), "Ada Lovelace");
        assert_eq!(cell("2026-12-01T09:00:00Z"), "2026-12-01T09:00:00Z");
        assert_eq!(cell("12"), "12");
        assert_eq!(cell(""), "");
        assert_eq!(cell("a\nb"), "\"a\nb\"");
    }

    /// One RFC 4180 field, read back as a spreadsheet would.
    fn read_cell(csv: &str) -> Result<String, String> {
        match csv.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inner) if !inner.replace("\"\"", "").contains('"') => {
                Ok(inner.replace("\"\"", "\""))
            }
            Some(_) => Err(format!("a lone quote inside {csv:?}")),
            None if csv.contains([',', '"', '\r', '\n']) => Err(format!("unquoted {csv:?}")),
            None => Ok(csv.to_owned()),
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::{cell, read_cell};

        /// OWASP's list, written out again: the test's own oracle.
        const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

        proptest! {
            /// Whatever a name or id holds, its cell reads back as that text
            /// (with `'` in front when it would start a formula), and what a
            /// spreadsheet reads never starts a formula.
            #[test]
            fn any_cell_reads_back_as_its_text_and_never_starts_a_formula(
                f in prop_oneof![
                    any::<String>(),
                    ("[=+@\t\r-]", any::<String>()).prop_map(|(a, b)| a + &b),
                    "[a=+@, \"\r\n\t-]{0,8}",
                ]
            ) {
                let read = read_cell(&cell(&f)).map_err(TestCaseError::fail)?;
                let expected = if f.starts_with(FORMULA_START) { format!("'{f}") } else { f.clone() };
                prop_assert_eq!(&read, &expected);
                prop_assert!(!read.starts_with(FORMULA_START), "{:?}", read);
            }
        }
    }
}
