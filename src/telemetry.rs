//! Logging: human-readable lines by default, JSON lines with
//! `log.format = "json"`. `RUST_LOG` overrides `log.level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Errors name the bad setting.
pub fn init(log: &LogSettings) -> anyhow::Result<()> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => EnvFilter::try_new(&log.level)
            .map_err(|e| anyhow::anyhow!("invalid configuration: `log.level` {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // Already installed (tests, or a second call): keep the first one.
    let _ = result;
    Ok(())
}

/// Longest client-supplied field written to a log line (User-Agent, close
/// reason, Origin, the query, an exam id from the path, ...), in bytes.
/// 91,000 refused handshakes with an 8 KB User-Agent each once wrote 127 MB
/// of log in 8 s; a browser's User-Agent is 100-200 bytes.
pub const LOG_FIELD_MAX: usize = 256;

/// `s` cut to at most [`LOG_FIELD_MAX`] bytes on a char boundary, with a
/// marker saying how long it was: `Mozilla/5.0 …[truncated, 8600 bytes]`.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    clip_to(s, LOG_FIELD_MAX)
}

/// [`clip`] with another bound (for tests, and fields bounded elsewhere).
pub fn clip_to(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated, {} bytes]", &s[..end], s.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_char_boundary_with_a_marker() {
        assert_eq!(clip("curl/8.5"), "curl/8.5");
        let exact = "x".repeat(LOG_FIELD_MAX);
        assert_eq!(clip(&exact), exact.as_str());
        assert_eq!(
            clip(&"y".repeat(8600)),
            format!("{}…[truncated, 8600 bytes]", "y".repeat(LOG_FIELD_MAX))
        );
        // "é" is two bytes: a cut at byte 3 would split the second one.
        assert_eq!(clip_to("éééé", 3), "é…[truncated, 8 bytes]");
    }
}
