//! What the data pages (usage, audit, statements) share: their query strings, read the way
//! the JSON API reads its own (a bad one is a 400 page, never a 5xx), a period of whole days,
//! the money and times of a use case's JSON answer, and the pages of a long table.

use bahi_domain::Money;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ConsoleError;
use super::format::{Moment, inr};

/// Rows of a table on one page.
pub const PAGE_ROWS: usize = 50;

/// The page's query string as `T`; unknown parameters are ignored, a malformed one is a 400.
pub fn parse_query<T: DeserializeOwned + Default>(raw: Option<&str>) -> Result<T, ConsoleError> {
    match raw {
        None | Some("") => Ok(T::default()),
        Some(text) => serde_html_form::from_str(text)
            .map_err(|error| ConsoleError::bad_form(format!("the address's query is malformed: {error}"))),
    }
}

/// A form's empty field is the same as none.
pub fn given(value: Option<&String>) -> Option<&str> {
    value.map(|text| text.trim()).filter(|text| !text.is_empty())
}

/// `name` as a date `YYYY-MM-DD`.
pub fn parse_date(name: &str, text: &str) -> Result<NaiveDate, ConsoleError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| ConsoleError::bad_form(format!("{name} must be a date as YYYY-MM-DD")))
}

/// Whole days, both included.
#[derive(Debug, Clone, Copy)]
pub struct Days {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Days {
    /// The days `from` to `to` as given, else the `default_days` up to `today`; at most
    /// `max_days` of them.
    pub fn from_params(
        from: Option<&str>,
        to: Option<&str>,
        today: NaiveDate,
        default_days: u64,
        max_days: i64,
    ) -> Result<Days, ConsoleError> {
        let to = to.map(|text| parse_date("to", text)).transpose()?.unwrap_or(today);
        let from = match from {
            Some(text) => parse_date("from", text)?,
            None => to.checked_sub_days(chrono::Days::new(default_days.saturating_sub(1))).unwrap_or(to),
        };
        if from > to {
            return Err(ConsoleError::bad_form("from must not be after to"));
        }
        if (to - from).num_days() >= max_days {
            return Err(ConsoleError::bad_form(format!("choose a period of at most {max_days} days")));
        }
        Ok(Days { from, to })
    }

    pub fn count(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }
}

/// The money at `value` (`{"currency": "inr", "amount": "…"}`); absent is zero.
pub fn money(value: &Value) -> Result<Money, ConsoleError> {
    if value.is_null() {
        return Ok(Money::ZERO);
    }
    serde_json::from_value(value.clone()).map_err(|error| ConsoleError::internal(format!("money {value}: {error}")))
}

/// An amount as pages show it (`inr`) and its exact text, for `<data value>` and downloads.
#[derive(Debug, Clone)]
pub struct Amount {
    pub shown: String,
    pub exact: String,
}

impl Amount {
    pub fn of(money: Money) -> Amount {
        Amount { shown: inr(money), exact: money.to_string() }
    }

    pub fn at(value: &Value) -> Result<Amount, ConsoleError> {
        Ok(Amount::of(money(value)?))
    }
}

/// The time at `value`, an RFC 3339 string.
pub fn moment(value: &Value) -> Option<Moment> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text).ok().map(|time| Moment::of(time.with_timezone(&Utc)))
}

pub fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or_default()
}

/// A link to `path` with the query `params` (empty ones left out).
pub fn link<T: Serialize>(path: &str, params: &T) -> String {
    match serde_html_form::to_string(params) {
        Ok(query) if !query.is_empty() => format!("{path}?{query}"),
        _ => path.to_owned(),
    }
}

/// One page of a table: which rows, and where the pages around it are.
#[derive(Debug, Clone)]
pub struct Pager {
    pub page: usize,
    pub pages: usize,
    pub previous: Option<String>,
    pub next: Option<String>,
}

/// The rows of page `page` (1-based) of `rows`; `link_to(page)` is the address of a page.
pub fn paginate<T>(
    rows: Vec<T>,
    page: usize,
    link_to: impl Fn(usize) -> String,
) -> Result<(Vec<T>, Pager), ConsoleError> {
    let pages = rows.len().div_ceil(PAGE_ROWS).max(1);
    if page == 0 || page > pages {
        return Err(ConsoleError::bad_form(format!("page must be between 1 and {pages}")));
    }
    let rows: Vec<T> = rows.into_iter().skip((page - 1) * PAGE_ROWS).take(PAGE_ROWS).collect();
    let pager = Pager {
        page,
        pages,
        previous: (page > 1).then(|| link_to(page - 1)),
        next: (page < pages).then(|| link_to(page + 1)),
    };
    Ok((rows, pager))
}
