//! Applying an action: who it targets, each student's part (their
//! control record changed once per action id, however often it is
//! retried: store `apply_student_action`), the outcome and delivery rows
//! stored, then the room told. A failure part way tells the rooms what
//! did change (`stopped_halfway`) and releases the id for a retry.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

/// The students an action targets.
pub(super) async fn targets(
    app: &AppState,
    exam_id: &str,
    body: &ActionBody,
) -> Result<Vec<String>, ApiError> {
    if body.all == Some(true) {
        return Ok(app.store.exam_students(exam_id).await?);
    }
    let mut ids = body.students.clone().unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Applies the action; returns the students owed a frame.
pub(super) async fn apply(
    app: &AppState,
    exam_id: &str,
    clock: &ExamClock,
    body: &ActionBody,
    caller: &Watcher,
    now: i64,
) -> Result<Vec<String>, ApiError> {
    let store = &app.store;
    let kind = body.kind;
    let mut lowered = None;
    let students = match kind {
        ActionKind::LowerHand => {
            let hand_id = body.hand_id.as_deref().unwrap_or_default();
            let hand = store
                .hand(exam_id, hand_id)
                .await?
                .ok_or_else(|| invalid(format!("no raised hand {hand_id:?} in this exam")))?;
            vec![hand.student_id]
        }
        _ => targets(app, exam_id, body).await?,
    };
    if let Some(hand_id) = body.reply_to.as_deref().or(body.hand_id.as_deref()) {
        let hand = store
            .hand(exam_id, hand_id)
            .await?
            .ok_or_else(|| invalid(format!("no raised hand {hand_id:?} in this exam")))?;
        if store
            .lower_hand(exam_id, hand_id, &caller.0.sub, now)
            .await?
        {
            lowered = Some(LoweredHand {
                hand_id: hand_id.to_owned(),
                student_id: hand.student_id.clone(),
                by: caller.0.sub.clone(),
                at: now,
            });
        }
    }
    let mut controls = BTreeMap::new();
    let mut outcomes = Vec::with_capacity(students.len());
    let mut deliver = Vec::new();
    let roster = if matches!(kind, ActionKind::Deny | ActionKind::Allow) {
        store.roster(exam_id).await?
    } else {
        Default::default()
    };
    for sid in &students {
        let mut out = serde_json::Map::new();
        out.insert("student_id".into(), json!(sid));
        let changed = match apply_one(app, exam_id, clock, body, sid, now, &roster, &mut out).await
        {
            Ok(changed) => changed,
            Err(e) => {
                stopped_halfway(app, exam_id, controls).await;
                return Err(e);
            }
        };
        if let Some(control) = changed.control {
            controls.insert(sid.clone(), control);
        }
        // A hand that was down already: nothing to tell its student.
        let lowers_nothing = kind == ActionKind::LowerHand && lowered.is_none();
        if changed.frame && kind.sends_frame() && !lowers_nothing {
            deliver.push(sid.clone());
        }
        if kind == ActionKind::LowerHand {
            out.insert("lowered".into(), json!(lowered.is_some()));
        }
        outcomes.push(Value::Object(out));
    }
    if matches!(
        kind,
        ActionKind::Deny | ActionKind::Allow | ActionKind::Terminate
    ) {
        app.rosters.invalidate(exam_id);
    }
    let at = Timestamp::from_unix_ms(now);
    let frame = frame_for(body, &caller.0.name, at);
    let frame_text = frame.as_ref().map(Value::to_string);
    let result = json!({ "students": outcomes });
    let rows: Vec<(String, Option<String>)> = deliver
        .iter()
        .map(|s| (s.clone(), frame_text.clone()))
        .collect();
    store
        .finish_action(
            exam_id,
            &body.id,
            kind.as_str(),
            now,
            &result.to_string(),
            &rows,
        )
        .await?;
    let mut record = serde_json::to_value(answer_from(
        &stored(body, caller, now, &result),
        &deliver
            .iter()
            .map(|s| (s.clone(), ("pending".to_owned(), None)))
            .collect(),
    ))
    .unwrap_or(Value::Null);
    if let Some(obj) = record.as_object_mut() {
        obj.remove("payload");
        obj.insert(
            "payload".into(),
            serde_json::to_value(body).unwrap_or(Value::Null),
        );
    }
    let changed: Vec<&str> = controls.keys().map(String::as_str).collect();
    note_controls(app, exam_id, &changed).await;
    notify(
        app,
        exam_id,
        RoomCmd::Action(Box::new(ActionApplied {
            id: body.id.as_str().into(),
            kind,
            record,
            controls,
            frame,
            deliver: deliver.clone(),
            lowered,
        })),
    )
    .await;
    Ok(deliver)
}

/// The action failed after changing some students' records: their rooms
/// are told now (cause `action`), so what every instance shows matches the
/// database while the client decides whether to retry. The retry skips
/// these students' changes (store `apply_student_action`) and sends the
/// action's own frames.
pub(super) async fn stopped_halfway(
    app: &AppState,
    exam_id: &str,
    controls: BTreeMap<String, StudentControl>,
) {
    let changed: Vec<&str> = controls.keys().map(String::as_str).collect();
    note_controls(app, exam_id, &changed).await;
    for (student, control) in controls {
        notify(
            app,
            exam_id,
            RoomCmd::StudentControl {
                student: student.as_str().into(),
                control: Box::new(control),
                cause: crate::room::ControlCause::Action,
            },
        )
        .await;
    }
}

/// What one student's part of an action changed.
pub(super) struct Changed {
    control: Option<StudentControl>,
    /// Whether they are owed the action's frame.
    frame: bool,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_one(
    app: &AppState,
    exam_id: &str,
    clock: &ExamClock,
    body: &ActionBody,
    sid: &str,
    now: i64,
    roster: &crate::store::queries::Roster,
    out: &mut serde_json::Map<String, Value>,
) -> Result<Changed, ApiError> {
    let store = &app.store;
    let ts = |ms: Option<i64>| ms.map(Timestamp::from_unix_ms);
    let refused = |out: &mut serde_json::Map<String, Value>, e: &str| {
        out.insert("error".into(), json!(e));
        Changed {
            control: None,
            frame: false,
        }
    };
    let written = match body.kind {
        ActionKind::Extend => {
            let minutes = body.minutes.unwrap_or(0);
            let mut done = None;
            let r = store
                .apply_student_action(exam_id, sid, &body.id, |c| {
                    done = Some(c.clock.extend(clock, minutes, now)?);
                    Ok::<(), crate::control::Untimed>(())
                })
                .await?;
            match (r, done) {
                (Ok((c, true)), Some(e)) => {
                    out.insert(
                        "deadline".into(),
                        json!(Timestamp::from_unix_ms(e.deadline)),
                    );
                    out.insert("clamped".into(), json!(e.clamped));
                    out.insert("applied_ms".into(), json!(e.applied_ms));
                    c
                }
                (Ok((c, false)), _) => {
                    // A retry of an action that failed after this student.
                    out.insert("deadline".into(), json!(ts(c.clock.deadline(clock, now))));
                    out.insert("already_applied".into(), json!(true));
                    c
                }
                _ => return Ok(refused(out, "untimed")),
            }
        }
        ActionKind::Pause | ActionKind::Resume => {
            let pause = body.kind == ActionKind::Pause;
            let r = store
                .apply_student_action(exam_id, sid, &body.id, |c| {
                    if pause {
                        c.clock.pause(now)
                    } else {
                        c.clock.resume(now)
                    }
                })
                .await?;
            match r {
                Ok((c, fresh)) => {
                    out.insert("paused".into(), json!(pause));
                    out.insert("deadline".into(), json!(ts(c.clock.deadline(clock, now))));
                    if !fresh {
                        out.insert("already_applied".into(), json!(true));
                    }
                    c
                }
                Err(AlreadyInState::Paused) => return Ok(refused(out, "already_paused")),
                Err(AlreadyInState::Running) => return Ok(refused(out, "not_paused")),
                Err(AlreadyInState::TooManyPauses) => return Ok(refused(out, "too_many_pauses")),
            }
        }
        ActionKind::Terminate => {
            let won = store
                .finish_student(exam_id, sid, Finish::Terminated, now)
                .await?;
            out.insert("finished".into(), json!(won));
            set(store, exam_id, &body.id, sid, |c| {
                c.denied = true;
                c.deny_reason = Some("terminated".into());
            })
            .await?
        }
        ActionKind::Deny | ActionKind::Allow => {
            let deny = body.kind == ActionKind::Deny;
            if roster.contains_key(sid) {
                store.set_roster_allowed(exam_id, sid, !deny).await?;
            }
            out.insert("on_roster".into(), json!(roster.contains_key(sid)));
            if !deny {
                store.supersede_removals(exam_id, sid).await?;
            }
            set(store, exam_id, &body.id, sid, |c| {
                c.denied = deny;
                c.deny_reason = deny.then(|| "access_revoked".into());
            })
            .await?
        }
        ActionKind::ResetSession => {
            set(store, exam_id, &body.id, sid, |c| c.reset_at = Some(now)).await?
        }
        ActionKind::Message => {
            return Ok(Changed {
                control: None,
                frame: true,
            });
        }
        ActionKind::LowerHand => {
            return Ok(Changed {
                control: None,
                frame: true,
            });
        }
    };
    Ok(Changed {
        control: Some(written),
        frame: true,
    })
}

/// Changes a student's record for the action `action_id`, once: a retry
/// returns the record as the first attempt left it.
pub(super) async fn set(
    store: &crate::store::Store,
    exam_id: &str,
    action_id: &str,
    sid: &str,
    mut change: impl FnMut(&mut StudentControl),
) -> Result<StudentControl, StoreError> {
    store
        .apply_student_action(exam_id, sid, action_id, |c| {
            change(c);
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .map(|r| match r {
            Ok((c, _)) => c,
            Err(never) => match never {},
        })
}

/// The frame every target gets, for kinds whose frame is the same for all.
pub(super) fn frame_for(body: &ActionBody, from: &str, at: Timestamp) -> Option<Value> {
    let encoded = match body.kind {
        ActionKind::Message => ServerMsg::Message {
            id: &body.id,
            text: body.text.as_deref().map(str::trim).unwrap_or_default(),
            from,
            at,
            reply_to: body.reply_to.as_deref(),
        }
        .encode(),
        ActionKind::LowerHand => ServerMsg::YourHandLowered {
            id: &body.id,
            hand_id: body.hand_id.as_deref().unwrap_or_default(),
            from,
            at,
        }
        .encode(),
        ActionKind::Terminate => ServerMsg::Terminated {
            id: &body.id,
            reason: body.reason.as_deref().unwrap_or("terminated by a teacher"),
        }
        .encode(),
        ActionKind::Deny => ServerMsg::SessionInvalidated {
            reason: "access_revoked",
            id: Some(&body.id),
        }
        .encode(),
        _ => return None,
    };
    serde_json::from_str(encoded.as_str()).ok()
}

pub(super) fn stored(body: &ActionBody, caller: &Watcher, at: i64, result: &Value) -> StoredAction {
    StoredAction {
        action_id: body.id.clone(),
        kind: body.kind.as_str().into(),
        actor_sub: caller.0.sub.clone(),
        actor_name: caller.0.name.clone(),
        actor_role: caller.0.role.as_str().into(),
        at,
        payload: serde_json::to_string(body).unwrap_or_default(),
        result: Some(result.to_string()),
    }
}
