//! The browser side, served by the server itself: the teacher dashboard
//! (`/dashboard/`), the student client library (`/client/examwatch.js`),
//! the student demo page (`/demo/student`) and the strings both pages share
//! (`/i18n/`: English and French catalogues, see web/i18n/i18n.js).
//!
//! The files under `web/` are compiled into the binary with `include_str!`,
//! so a deployment is still one file, pages are same-origin with the API and
//! the WebSocket (no CORS, no CDN), and a page can never be out of step with
//! the server it talks to. A fixed table rather than a directory walk: every
//! file served is listed here with its content type, and nothing else under
//! `web/` can leak out.
//!
//! The dashboard's icon is also served at `/favicon.ico`, where a browser
//! looks for one on pages that name none: a 404 there is a console error on
//! every page load.
//!
//! Headers: a strict Content-Security-Policy (scripts only from this
//! origin, no inline script, sockets only to this origin), `nosniff`, and
//! `Referrer-Policy: no-referrer` because the dashboard may be opened with a
//! token in its query string. Caching: `no-cache` plus a strong `ETag`, so a
//! browser revalidates cheaply and picks up a new version right after an
//! upgrade instead of mixing old and new modules.

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Redirect, Response},
    routing::{MethodRouter, get},
};

use crate::{app::AppState, http::ApiError};

/// One embedded file: URL path, content type, body.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// `asset!("dir/file", TYPE)`: the file `web/dir/file`, served at `/dir/file`.
macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_str!(concat!("../web/", $path)),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("dashboard/index.html", HTML),
    asset!("dashboard/dashboard.js", JS),
    asset!("dashboard/view.js", JS),
    asset!("dashboard/dashboard.css", CSS),
    asset!("dashboard/history.js", JS),
    asset!("dashboard/panels.js", JS),
    asset!("dashboard/hands.js", JS),
    asset!("dashboard/alerts.js", JS),
    asset!("dashboard/record.js", JS),
    asset!("dashboard/api.js", JS),
    asset!("dashboard/clock.js", JS),
    asset!("dashboard/columns.js", JS),
    asset!("dashboard/controls.js", JS),
    asset!("dashboard/dialog.js", JS),
    asset!("dashboard/header.js", JS),
    asset!("dashboard/opencount.js", JS),
    asset!("dashboard/rights.js", JS),
    asset!("dashboard/icon.svg", SVG),
    asset!("client/examwatch.js", JS),
    asset!("demo/student.html", HTML),
    asset!("demo/student.js", JS),
    asset!("demo/student.css", CSS),
    asset!("i18n/i18n.js", JS),
    asset!("i18n/en.js", JS),
    asset!("i18n/fr.js", JS),
];

/// Strong ETags, computed once per process from the embedded bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            // FNV-1a: stable across builds and platforms, enough to tell
            // two versions of a file apart.
            let hash = a.body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            HeaderValue::from_str(&format!("\"{hash:016x}\""))
                .expect("a hex string is a valid header value")
        })
        .collect()
});

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(to_dashboard))
        .route("/dashboard", get(to_dashboard))
        .route(
            "/dashboard/",
            get(|h: HeaderMap| async move { serve("dashboard/index.html", &h) }),
        )
        .route(
            "/demo/student",
            get(|h: HeaderMap| async move { serve("demo/student.html", &h) }),
        )
        .route(
            "/favicon.ico",
            get(|h: HeaderMap| async move { serve("dashboard/icon.svg", &h) }),
        )
        .route("/dashboard/{file}", files_under("dashboard"))
        .route("/client/{file}", files_under("client"))
        .route("/demo/{file}", files_under("demo"))
        .route("/i18n/{file}", files_under("i18n"))
}

/// `/` and `/dashboard` → `/dashboard/`, keeping the query: the dashboard
/// is opened with `?token=…&exam=…`, which a bare redirect would drop.
async fn to_dashboard(uri: Uri) -> Redirect {
    match uri.query() {
        Some(query) => Redirect::to(&format!("/dashboard/?{query}")),
        None => Redirect::to("/dashboard/"),
    }
}

/// GET `/{dir}/{file}`: the embedded `dir/file`, if it is in the table.
fn files_under(dir: &'static str) -> MethodRouter<AppState> {
    get(
        move |Path(file): Path<String>, h: HeaderMap| async move { serve(&format!("{dir}/{file}"), &h) },
    )
}

/// The asset at `path`, a 304 if the browser's copy is current, else 404.
fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    };
    let asset = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_listed_once_with_a_known_type() {
        let mut paths: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        for a in ASSETS {
            let ext = a.path.rsplit('.').next().unwrap_or_default();
            let expected = match ext {
                "js" => JS,
                "html" => HTML,
                "css" => CSS,
                "svg" => SVG,
                other => panic!("unexpected extension {other}"),
            };
            assert_eq!(a.content_type, expected, "{}", a.path);
            assert!(!a.body.is_empty(), "{} is empty", a.path);
        }
    }

    #[test]
    fn pages_use_no_inline_script() {
        for a in ASSETS.iter().filter(|a| a.content_type == HTML) {
            for tag in a.body.split("<script").skip(1) {
                let open = tag.split('>').next().unwrap_or_default();
                assert!(open.contains("src="), "{}: inline <script>", a.path);
            }
            let handler = a.body.match_indices(" on").any(|(i, _)| {
                let rest = &a.body[i + 3..];
                let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
                name_len > 0 && rest[name_len..].starts_with('=')
            });
            assert!(!handler, "{}: inline event handler", a.path);
        }
    }

    /// Names, questions, hand texts and announcements are other people's
    /// strings: the scripts put them in the page as text (`textContent`,
    /// `append`), so no API that parses a string as HTML or code appears in
    /// them (comment lines aside). The browser test `clean.mjs` shows the
    /// same from the outside (docs/SECURITY.md).
    #[test]
    fn scripts_never_parse_strings_as_markup_or_code() {
        const SINKS: &[&str] = &[
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "createContextualFragment",
            "DOMParser",
            "srcdoc",
            "eval(",
            "new Function",
            "setTimeout('",
            "setTimeout(\"",
        ];
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for (n, line) in a.body.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") || code.starts_with('*') || code.starts_with("/*") {
                    continue;
                }
                for sink in SINKS {
                    assert!(!code.contains(sink), "{}:{}: {sink}", a.path, n + 1);
                }
            }
        }
    }
}
