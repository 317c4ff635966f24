//! Reading the times bahi writes, quickly.
//!
//! Every stored time is RFC 3339 in UTC (`2026-11-23T04:37:22.246950Z`): `recorded_at` in
//! the log's rows and the times inside event payloads, which chrono's serde support writes.
//! chrono's general parser took 10% of the instructions of loading a gateway's log (three
//! times per call). `parse_utc` reads exactly that form directly, and hands every other text
//! back to the caller, which parses it as before; so what is accepted, and the value read,
//! do not change (a property test compares the two).

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::Deserializer;
use serde::de::{Error, Visitor};

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, with 1 to 9 fraction digits, as UTC. None for
/// anything else (an offset, a leap second, a lower-case `t`, …): the caller falls back to
/// chrono, which decides whether it is valid.
pub fn parse_utc(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || *bytes.last()? != b'Z' {
        return None;
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(index, byte)| bytes[index] != byte) {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        bytes[from..to]
            .iter()
            .try_fold(0u32, |value, &byte| byte.is_ascii_digit().then(|| value * 10 + u32::from(byte - b'0')))
    };
    let year = i32::try_from(number(0, 4)?).ok()?;
    let (month, day) = (number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let nanoseconds = match &bytes[19..bytes.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let fraction = number(20, 20 + digits.len())?;
            fraction * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    // A leap second (60) is left to chrono, which represents it its own way.
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanoseconds)?;
    Some(NaiveDateTime::new(date, time).and_utc())
}

/// `#[serde(deserialize_with)]` for a `DateTime<Utc>` field: `parse_utc`, else chrono's own
/// parsing of a serialized `DateTime<Utc>` (`DateTime<FixedOffset>::from_str`).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(UtcVisitor)
}

struct UtcVisitor;

impl Visitor<'_> for UtcVisitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an RFC 3339 date and time")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        match parse_utc(text) {
            Some(time) => Ok(time),
            None => text.parse::<DateTime<FixedOffset>>().map(|time| time.to_utc()).map_err(E::custom),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What chrono makes of `text`, the way chrono's serde support reads a `DateTime<Utc>`.
    fn chrono_reads(text: &str) -> Option<DateTime<Utc>> {
        text.parse::<DateTime<FixedOffset>>().ok().map(|time| time.to_utc())
    }

    #[test]
    fn reads_the_forms_bahi_writes() {
        for text in [
            "2026-11-23T04:37:22.246950Z",
            "2026-11-23T04:37:22Z",
            "2026-11-23T04:37:22.5Z",
            "1999-12-31T23:59:59.123456789Z",
            "0000-01-01T00:00:00Z",
            "2024-02-29T00:00:00.000001Z",
        ] {
            assert_eq!(parse_utc(text), chrono_reads(text), "{text}");
            assert!(parse_utc(text).is_some(), "{text}");
        }
    }

    #[test]
    fn leaves_every_other_form_to_chrono() {
        for text in [
            "2026-11-23T04:37:22+05:30",
            "2026-11-23t04:37:22Z",
            "2026-11-23 04:37:22Z",
            "2016-12-31T23:59:60Z",
            "2026-11-23T04:37:22.1234567891Z",
            "2026-11-23T04:37:22.Z",
            "2026-02-30T04:37:22Z",
            "2026-11-23T24:00:00Z",
            "+2026-11-23T04:37:22Z",
            "２026-11-23T04:37:22Z",
            "",
        ] {
            assert_eq!(parse_utc(text), None, "{text}");
        }
    }

    #[test]
    fn deserializes_like_chrono() {
        #[derive(serde::Deserialize)]
        struct At {
            #[serde(deserialize_with = "deserialize")]
            at: DateTime<Utc>,
        }
        let read = |json: &str| serde_json::from_str::<At>(json).map(|at| at.at).ok();
        assert_eq!(read(r#"{"at":"2026-11-23T04:37:22.246950Z"}"#), chrono_reads("2026-11-23T04:37:22.246950Z"));
        assert_eq!(read(r#"{"at":"2026-11-23T10:07:22+05:30"}"#), chrono_reads("2026-11-23T04:37:22Z"));
        assert_eq!(read(r#"{"at":"yesterday"}"#), None);
        assert_eq!(read(r#"{"at":12}"#), None);
    }

    proptest! {
        /// Any text built from the characters of a timestamp: the fast path either declines
        /// or reads exactly what chrono reads.
        #[test]
        fn agrees_with_chrono_on_timestamp_like_text(
            text in "[0-9]{4}-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])[Tt ]([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?(Z|z|[+-][0-9]{2}:[0-9]{2})"
        ) {
            if let Some(time) = parse_utc(&text) {
                prop_assert_eq!(Some(time), chrono_reads(&text));
            }
        }

        /// Every time bahi can write is read back by the fast path, to the same value.
        #[test]
        fn reads_every_written_time(micros in 0i64..253_402_300_799_000_000, form in 0u32..4) {
            let time = DateTime::from_timestamp_micros(micros).unwrap();
            let written = match form {
                0 => serde_json::to_string(&time).unwrap().trim_matches('"').to_owned(),
                1 => time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                2 => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                _ => time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            prop_assert_eq!(parse_utc(&written), chrono_reads(&written));
            prop_assert!(parse_utc(&written).is_some(), "{}", written);
        }
    }
}
