//! Rate-limit windows: `second | minute | hour | day` or a duration such as `90s`, `15m`, `2h`, `1d`.

use std::time::Duration;

/// The longest window a limit may use. Counters keep fixed memory per key whatever the window,
/// so this only bounds how long a key may stay live.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// A validated window: its length and the text the policy used (kept for metric labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window {
    pub length: Duration,
    pub text: String,
}

/// The pattern the CRD schema uses for `window`; `parse` accepts exactly these strings.
pub const WINDOW_PATTERN: &str = r"^(second|minute|hour|day|[1-9][0-9]{0,8}[smhd])$";

/// Why a window is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "unknown window {0:?} (expected second, minute, hour, day or a duration such as 90s, \
         15m, 2h, 1d)"
    )]
    Unknown(String),
    #[error("window {0:?} is longer than the 7-day maximum")]
    TooLong(String),
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let secs: u64 = match text {
            "second" => 1,
            "minute" => 60,
            "hour" => 3_600,
            "day" => 86_400,
            _ => parse_duration(text).ok_or_else(|| WindowError::Unknown(text.to_owned()))?,
        };
        let length = Duration::from_secs(secs);
        if length > MAX_WINDOW {
            return Err(WindowError::TooLong(text.to_owned()));
        }
        Ok(Window {
            length,
            text: text.to_owned(),
        })
    }
}

fn parse_duration(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 9 || digits.starts_with('0') {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_durations() {
        assert_eq!(
            Window::parse("minute").unwrap().length,
            Duration::from_secs(60)
        );
        assert_eq!(
            Window::parse("90s").unwrap().length,
            Duration::from_secs(90)
        );
        assert_eq!(
            Window::parse("2h").unwrap().length,
            Duration::from_secs(7200)
        );
        assert_eq!(
            Window::parse("1d").unwrap().length,
            Duration::from_secs(86_400)
        );
        for bad in [
            "", "0s", "05m", "10", "m", "1w", "1.5h", "-1s", "minutes", "8d", "1 h",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn the_schema_pattern_agrees_with_the_parser() {
        let re = regex::Regex::new(WINDOW_PATTERN).unwrap();
        for s in ["second", "minute", "hour", "day", "90s", "15m", "2h", "7d"] {
            assert!(re.is_match(s) && Window::parse(s).is_ok(), "{s}");
        }
        for s in ["0s", "05m", "1w", "1.5h", "minutes"] {
            assert!(!re.is_match(s) && Window::parse(s).is_err(), "{s}");
        }
    }
}
