//! Every time a use case answers with is written one way: RFC 3339 in UTC with exactly six
//! fractional digits (microseconds, as the log stores them), whatever its value. chrono's
//! own form drops trailing zero groups, so the same field read 0, 3 or 6 digits.

use bahi_domain::chain::format_recorded_at;
use chrono::{DateTime, Utc};
use serde::Serializer;

pub fn micros<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_recorded_at(*time))
}

pub fn optional_micros<S: Serializer>(time: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => micros(time, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[derive(serde::Serialize)]
    struct Times {
        #[serde(serialize_with = "super::micros")]
        at: chrono::DateTime<chrono::Utc>,
        #[serde(serialize_with = "super::optional_micros")]
        maybe: Option<chrono::DateTime<chrono::Utc>>,
    }

    #[test]
    fn times_always_carry_six_fractional_digits() {
        let on_the_second = chrono::DateTime::parse_from_rfc3339("2026-12-31T23:59:59Z").unwrap().to_utc();
        let with_nanoseconds = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00.123456789Z").unwrap().to_utc();
        let text = serde_json::to_string(&Times { at: on_the_second, maybe: Some(with_nanoseconds) }).unwrap();
        assert_eq!(text, r#"{"at":"2026-12-31T23:59:59.000000Z","maybe":"2026-01-01T00:00:00.123456Z"}"#);
        let none = serde_json::to_string(&Times { at: on_the_second, maybe: None }).unwrap();
        assert!(none.ends_with(r#""maybe":null}"#), "{none}");
    }
}
