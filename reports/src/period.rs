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

    /// The period as the whole UTC days it covers and what is left at its ends: a start
    /// that is not a midnight leaves the rest of its day, an end that is not a midnight the
    /// start of its day. Read models summed per day answer the days; only the ends need
    /// single entries. A period within two days is all ends.
    pub fn split_at_days(&self) -> DaySplit {
        let all_ends = DaySplit { days: None, ends: vec![*self] };
        let first_midnight = match self.from {
            Some(from) if !is_midnight(from) => match next_midnight(from) {
                Some(next) => Some(next),
                // The last representable day has no midnight after it: no whole day follows.
                None => return all_ends,
            },
            from => from,
        };
        let last_midnight = self.until.map(|until| midnight(until.date_naive()));
        if let (Some(first), Some(last)) = (first_midnight, last_midnight)
            && first >= last
        {
            return all_ends;
        }
        let mut ends = Vec::new();
        if let (Some(from), Some(first)) = (self.from, first_midnight)
            && from < first
        {
            ends.push(Period { from: Some(from), until: Some(first) });
        }
        if let (Some(until), Some(last)) = (self.until, last_midnight)
            && last < until
        {
            ends.push(Period { from: Some(last), until: Some(until) });
        }
        let days = DayRange {
            first: first_midnight.map(|midnight| midnight.date_naive()),
            end: last_midnight.map(|midnight| midnight.date_naive()),
        };
        DaySplit { days: Some(days), ends }
    }
}

/// Whole UTC days `[first, end)`; either side may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub first: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

/// A period as whole days and the parts of days at its ends (`Period::split_at_days`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaySplit {
    pub days: Option<DayRange>,
    pub ends: Vec<Period>,
}

fn is_midnight(time: DateTime<Utc>) -> bool {
    midnight(time.date_naive()) == time
}

/// The midnight after `time`'s day; none after the last representable day.
fn next_midnight(time: DateTime<Utc>) -> Option<DateTime<Utc>> {
    time.date_naive().succ_opt().map(midnight)
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

    fn at(text: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc))
    }

    fn day(text: &str) -> Option<NaiveDate> {
        Some(NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap())
    }

    #[test]
    fn a_period_of_dates_is_whole_days_only() {
        let (_, _, period) = statement_period("2026-01-01", "2026-01-31").unwrap();
        let split = period.split_at_days();
        assert_eq!(split.days, Some(DayRange { first: day("2026-01-01"), end: day("2026-02-01") }));
        assert!(split.ends.is_empty());
        assert_eq!(
            Period::ALL.split_at_days(),
            DaySplit { days: Some(DayRange { first: None, end: None }), ends: vec![] }
        );
    }

    #[test]
    fn the_ends_of_a_period_are_what_its_whole_days_leave() {
        let period = Period { from: at("2026-01-01T10:00:00Z"), until: at("2026-01-05T06:30:00Z") };
        let split = period.split_at_days();
        assert_eq!(split.days, Some(DayRange { first: day("2026-01-02"), end: day("2026-01-05") }));
        assert_eq!(
            split.ends,
            vec![
                Period { from: at("2026-01-01T10:00:00Z"), until: at("2026-01-02T00:00:00Z") },
                Period { from: at("2026-01-05T00:00:00Z"), until: at("2026-01-05T06:30:00Z") },
            ]
        );
        let open_end = Period { from: at("2026-01-01T10:00:00Z"), until: None }.split_at_days();
        assert_eq!(open_end.days, Some(DayRange { first: day("2026-01-02"), end: None }));
        assert_eq!(open_end.ends.len(), 1);
    }

    #[test]
    fn a_period_within_two_days_is_all_ends_never_counted_twice() {
        for (from, until) in [
            ("2026-01-01T10:00:00Z", "2026-01-01T12:00:00Z"),
            ("2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z"),
            ("2026-01-01T10:00:00Z", "2026-01-02T00:00:00Z"),
            ("2026-01-01T12:00:00Z", "2026-01-01T10:00:00Z"),
        ] {
            let period = Period { from: at(from), until: at(until) };
            let split = period.split_at_days();
            assert_eq!(split, DaySplit { days: None, ends: vec![period] }, "{from} {until}");
        }
    }

    #[test]
    fn a_period_from_the_last_representable_day_is_all_end() {
        let last = NaiveDate::MAX.and_hms_opt(12, 0, 0).unwrap().and_utc();
        let period = Period { from: Some(last), until: None };
        assert_eq!(period.split_at_days(), DaySplit { days: None, ends: vec![period] });
    }
}
