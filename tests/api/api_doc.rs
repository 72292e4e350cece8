//! The REST API does what its OpenAPI document says: one test per
//! disagreement schemathesis found (issue 13, items 8 and 12), each
//! checking both sides, the answer and the document. The CI's schemathesis
//! run (`.ci/schemathesis`) looks for new ones.

use examwatch::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The `{"error": {"code", ...}}` of an answer, with its status.
async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON error body");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// The documented statuses of one operation.
fn statuses(doc: &Value, path: &str, method: &str) -> Vec<String> {
    let mut s: Vec<String> = doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} in the document"))
        .keys()
        .cloned()
        .collect();
    s.sort();
    s
}

#[tokio::test]
async fn counts_agree_in_create_get_and_list() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["math", "bio"]);
    // Created open, then a student joins (no student joins an exam that
    // does not exist: PROTOCOL.md 1.2).
    let created: Value = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "math", "title": "Algebra", "phase": "in_progress"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let zero = json!({"active": 0, "idle": 0, "submitted": 0, "disconnected": 0});
    assert_eq!(created["counts"], zero, "create: {created}");
    let (_s1, _) = app.student("math", "s1").await;
    let one = json!({"active": 1, "idle": 0, "submitted": 0, "disconnected": 0});
    let got = app.get_json("/v1/exams/math", &teacher).await;
    assert_eq!(got["counts"], one, "get: {got}");
    // An exam without a room has stored counts in the list too, not null.
    let r = app
        .api(Method::POST, "/v1/exams", &teacher)
        .json(&json!({"id": "bio", "title": "Cells"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let list = app.get_json("/v1/exams", &teacher).await;
    let counts_of = |id: &str| {
        list["exams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["counts"].clone())
    };
    assert_eq!(counts_of("math"), Some(one), "list: {list}");
    assert_eq!(
        counts_of("bio"),
        Some(json!({"active": 0, "idle": 0, "submitted": 0, "disconnected": 0})),
        "list: {list}"
    );
}

#[tokio::test]
async fn the_document_states_every_limit_and_status() {
    let app = spawn_app().await;
    let doc: Value = reqwest::get(app.http("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    let exam = &schemas["NewExam"]["properties"];
    assert_eq!(exam["id"]["pattern"], "^[A-Za-z0-9._-]{1,64}$");
    assert_eq!(exam["id"]["maxLength"], 64);
    assert_eq!(exam["title"]["maxLength"], 200);
    assert_eq!(exam["title"]["minLength"], 1);
    assert!(
        exam["title"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains(r"\x00-\x1f\x7f-\x9f")),
        "title pattern: {}",
        exam["title"]
    );
    assert_eq!(exam["starts_at"]["format"], "date-time");
    let entry = &schemas["RosterEntry"]["properties"];
    assert_eq!(entry["student_id"]["maxLength"], 128);
    assert_eq!(entry["name"]["maxLength"], 200);
    // `counts` is an object with four numbers, never null.
    assert_eq!(
        schemas["Exam"]["properties"]["counts"]["$ref"],
        "#/components/schemas/Counts"
    );
    assert!(
        schemas["Exam"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("counts"))
    );
    let timeline = &doc["paths"]["/v1/exams/{id}/timeline"]["get"];
    let limit = timeline["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit parameter");
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 1000);
    assert!(statuses(&doc, "/v1/exams/{id}/timeline", "get").contains(&"422".to_owned()));
    for (path, method) in [
        ("/v1/exams", "post"),
        ("/v1/exams/{id}/roster", "put"),
        ("/v1/tickets", "post"),
    ] {
        let s = statuses(&doc, path, method);
        for code in ["413", "415", "422"] {
            assert!(s.contains(&code.to_owned()), "{method} {path}: {s:?}");
        }
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_a_wrong_type_415() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["math"]);
    let big = format!(
        r#"{{"id":"math","title":"{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let r = app
        .api(Method::POST, "/v1/exams", &teacher)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
    );
    for path in ["/v1/exams", "/v1/tickets"] {
        let r = app
            .api(Method::POST, path, &teacher)
            .header("content-type", "text/plain")
            .body(r#"{"id":"math","title":"Algebra","exam_id":"math"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(r).await,
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type".into()
            ),
            "{path}"
        );
    }
}

#[tokio::test]
async fn starts_at_takes_any_rfc3339_offset() {
    let app = spawn_app().await;
    let teacher = app.token("t1", Role::Teacher, &["a", "b", "c", "d"]);
    let create = |id: &str, starts_at: &str| {
        app.api(Method::POST, "/v1/exams", &teacher)
            .json(&json!({"id": id, "title": "T", "starts_at": starts_at}))
            .send()
    };
    for (id, sent, shown) in [
        ("a", "2026-12-01T11:00:00+02:00", "2026-12-01T09:00:00Z"),
        ("b", "2026-12-01T03:30:00-05:30", "2026-12-01T09:00:00Z"),
        // Fractions of a second are kept (deadlines are computed from them).
        ("c", "2026-12-01t09:00:00.250z", "2026-12-01T09:00:00.250Z"),
    ] {
        let r = create(id, sent).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{sent}");
        let exam = app.get_json(&format!("/v1/exams/{id}"), &teacher).await;
        assert_eq!(exam["starts_at"], shown, "{sent}");
        assert_eq!(exam["opens_at"], shown, "{sent}");
    }
    for bad in [
        "2026-12-01T09:00:00",
        "2026-12-01 09:00:00Z",
        "2026-12-01T09:00:00+2:00",
        "1969-12-31T23:59:59Z",
    ] {
        let r = create("d", bad).await.unwrap();
        assert_eq!(
            error_of(r).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field".into()),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_stated_limits_are_the_enforced_ones() {
    let app = spawn_app().await;
    let teacher = app.token("root", Role::Admin, &[]);
    let create = |body: Value| {
        app.api(Method::POST, "/v1/exams", &teacher)
            .json(&body)
            .send()
    };
    let long_id = "a".repeat(65);
    for body in [
        json!({"id": long_id, "title": "T"}),
        json!({"id": "a b", "title": "T"}),
        json!({"id": "x", "title": "a\u{7}b"}),
        json!({"id": "x", "title": "   "}),
        json!({"id": "x", "title": "é".repeat(201)}),
        json!({"id": "x", "title": "T", "roster": [{"student_id": "s\u{85}", "name": "n"}]}),
    ] {
        let r = create(body.clone()).await.unwrap();
        assert_eq!(
            error_of(r).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field".into()),
            "{body}"
        );
    }
    // At the limits themselves: accepted (200 two-byte characters is 400 bytes).
    let r = create(json!({"id": "a".repeat(64), "title": "é".repeat(200),
        "roster": [{"student_id": "é".repeat(128), "name": "é".repeat(200)}]}))
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // What JSON Schema calls valid: `90.0` is an integer, null settings
    // are allowed (`{}`).
    let r = create(json!({"id": "f", "title": "T", "duration_minutes": 90.0, "settings": null}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let exam: Value = r.json().await.unwrap();
    assert_eq!(
        (&exam["duration_minutes"], &exam["settings"]),
        (&json!(90), &json!({}))
    );
    for body in [
        json!({"id": "g", "title": "T", "duration_minutes": 1.5}),
        json!({"id": "g", "title": "T", "settings": []}),
    ] {
        let r = create(body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    for limit in ["0", "1001"] {
        let r = app
            .api(
                Method::GET,
                &format!("/v1/exams/{}/timeline?limit={limit}", "a".repeat(64)),
                &teacher,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(r).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field".into()),
            "limit={limit}"
        );
    }
}
