//! Report periods: half-open UTC intervals `[from, until)`. A date given as the end of a
//! period includes that whole day, so `from=2026-01-01&to=2026-01-31` is all of January.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use crate::ReportError;

/// `[from, until)`; either side may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Period {
    pub const ALL: Period = Period { from: None, until: None };
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

/// A strict `YYYY-MM-DD`.
pub fn parse_date(what: &'static str, text: &str) -> Result<NaiveDate, ReportError> {
    let bad = || ReportError::BadDate { what, text: text.to_owned(), also: "" };
    // chrono accepts some looser forms (e.g. single-digit months); statements do not.
    if text.len() != 10 {
        return Err(bad());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())
}

/// A bound of an attribution period: RFC 3339 (an instant) or a date. A date as the start
/// means its midnight; as the end, the next midnight (the day is included).
pub fn parse_bound(what: &'static str, text: &str, is_end: bool) -> Result<DateTime<Utc>, ReportError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let date = parse_date(what, text).map_err(|_| ReportError::BadDate {
        what,
        text: text.to_owned(),
        also: " or an RFC 3339 time",
    })?;
    if is_end {
        let next = date.succ_opt().ok_or(ReportError::BadDate { what, text: text.to_owned(), also: "" })?;
        Ok(midnight(next))
    } else {
        Ok(midnight(date))
    }
}

/// A statement's period from its two dates, both included.
pub fn statement_period(from: &str, to: &str) -> Result<(NaiveDate, NaiveDate, Period), ReportError> {
    let from_date = parse_date("from", from)?;
    let to_date = parse_date("to", to)?;
    if from_date > to_date {
        return Err(ReportError::FromAfterTo);
    }
    let until = to_date.succ_opt().ok_or(ReportError::BadDate { what: "to", text: to.to_owned(), also: "" })?;
    Ok((from_date, to_date, Period { from: Some(midnight(from_date)), until: Some(midnight(until)) }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_strict_and_to_includes_its_day() {
        let (_, _, period) = statement_period("2026-01-01", "2026-01-31").unwrap();
        assert_eq!(period.from.unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(period.until.unwrap().to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!(statement_period("2026-02-01", "2026-01-31"), Err(ReportError::FromAfterTo));
        for bad in ["2026-1-01", "2026-02-30", "yesterday", "", "2026-01-01T00:00:00Z", "20260101"] {
            assert!(statement_period(bad, "2026-12-31").is_err(), "{bad:?}");
        }
        assert!(statement_period("2026-01-01", "2026-01-01").is_ok());
    }

    #[test]
    fn bounds_accept_rfc3339_or_dates() {
        let start = parse_bound("from", "2026-03-04T05:06:07+05:30", false).unwrap();
        assert_eq!(start.to_rfc3339(), "2026-03-03T23:36:07+00:00");
        let end = parse_bound("to", "2026-03-04", true).unwrap();
        assert_eq!(end.to_rfc3339(), "2026-03-05T00:00:00+00:00");
        assert!(parse_bound("to", "next week", true).is_err());
    }
}
