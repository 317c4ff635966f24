//! What the manage pages (agents, keys, credits, members, issuers) share: reading the
//! optional fields of their forms into the use cases' requests, and paging a list.
//! A field the console cannot read is a 400 page that names the field; everything else is
//! judged by the use case, as the JSON API's request would be.

use bahi_domain::Money;
use bahi_domain::credential::Scope;
use bahi_domain::event::{Budget, BudgetPeriod, RateLimit};
use chrono::{DateTime, NaiveDate, Utc};

use super::ConsoleError;
use crate::app::Principal;

/// Rows on one page of a console list.
pub const PAGE_SIZE: usize = 25;

/// A form's text field, trimmed; `None` when left empty.
pub fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|text| !text.is_empty())
}

/// An amount in rupees as typed (`1500`, `1500.50`): exact, never through a float, and
/// read as the JSON API reads a decimal string (no grouping commas: `1,5` is refused, not
/// guessed at).
pub fn money(text: &str, field: &str) -> Result<Money, ConsoleError> {
    Money::parse(text.trim())
        .map_err(|error| ConsoleError::bad_form(format!("{field}: {error} (write rupees, like 1500.50)")))
}

/// A budget from its amount and period fields; none when the amount is empty.
pub fn budget(amount: &str, period: &str) -> Result<Option<Budget>, ConsoleError> {
    let Some(amount) = optional(amount) else { return Ok(None) };
    let period = match period.trim() {
        "day" => BudgetPeriod::Day,
        "" | "month" => BudgetPeriod::Month,
        "total" => BudgetPeriod::Total,
        _ => return Err(ConsoleError::bad_form("budget period must be day, month or total")),
    };
    Ok(Some(Budget { amount: money(&amount, "budget")?, period }))
}

/// A rate limit from its two fields; none when both are empty.
pub fn rate_limit(requests: &str, interval_seconds: &str) -> Result<Option<RateLimit>, ConsoleError> {
    let (requests, interval) = (optional(requests), optional(interval_seconds));
    if requests.is_none() && interval.is_none() {
        return Ok(None);
    }
    let number = |text: Option<String>, field: &str, default: Option<u32>| -> Result<u32, ConsoleError> {
        match (text, default) {
            (None, Some(default)) => Ok(default),
            (None, None) => Err(ConsoleError::bad_form(format!("{field} is needed with a rate limit"))),
            (Some(text), _) => text
                .parse::<u32>()
                .map_err(|_| ConsoleError::bad_form(format!("{field} must be a whole number from 0 to {}", u32::MAX))),
        }
    };
    Ok(Some(RateLimit {
        requests: number(requests, "rate limit requests", None)?,
        interval_seconds: number(interval, "rate limit interval", Some(60))?,
    }))
}

/// An expiry typed as a date (`2027-01-31`, the end of that day UTC) or an RFC 3339 time.
pub fn expiry(text: &str) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    let Some(text) = optional(text) else { return Ok(None) };
    if let Ok(date) = NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        let end = date.and_hms_opt(23, 59, 59).ok_or_else(|| ConsoleError::bad_form("expiry is not a date"))?;
        return Ok(Some(end.and_utc()));
    }
    DateTime::parse_from_rfc3339(&text)
        .map(|time| Some(time.with_timezone(&Utc)))
        .map_err(|_| ConsoleError::bad_form("expiry must be a date like 2027-01-31"))
}

/// The ticked scope boxes; none ticked is `None` (the use case's default).
pub fn scopes(ticked: Vec<String>) -> Option<Vec<String>> {
    Some(ticked).filter(|ticked| !ticked.is_empty())
}

/// A scope box on a form: the scopes this session could grant.
pub struct ScopeBox {
    pub name: &'static str,
    pub id: String,
    pub checked: bool,
}

/// One box per org scope the session holds; `checked` says which start ticked.
pub fn scope_boxes(principal: &Principal, prefix: &str, checked: &[String]) -> Vec<ScopeBox> {
    Scope::ORG_DEFAULT
        .into_iter()
        .filter(|scope| principal.scopes.contains(scope))
        .map(|scope| ScopeBox {
            name: scope.as_str(),
            id: format!("{prefix}-{}", scope.as_str().replace(':', "-")),
            checked: checked.iter().any(|name| name == scope.as_str()),
        })
        .collect()
}

/// One page of an in-memory list (`page` counts from 1): the rows, and the previous and
/// next page numbers when there are such pages.
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub page: usize,
    pub previous: Option<usize>,
    pub next: Option<usize>,
}

pub fn paged<T>(all: Vec<T>, page: Option<usize>) -> Paged<T> {
    let page = page.unwrap_or(1).max(1);
    let start = (page - 1).saturating_mul(PAGE_SIZE);
    let total = all.len();
    let rows: Vec<T> = all.into_iter().skip(start).take(PAGE_SIZE).collect();
    Paged {
        rows,
        page,
        previous: (page > 1).then(|| page - 1),
        next: (start.saturating_add(PAGE_SIZE) < total).then(|| page + 1),
    }
}

/// A `?page=` query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    pub page: Option<String>,
}

impl PageQuery {
    /// The page asked for; anything but a positive number is a 400 page.
    pub fn number(&self) -> Result<Option<usize>, ConsoleError> {
        match self.page.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
            None => Ok(None),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|page| (1..=1_000_000).contains(page))
                .map(Some)
                .ok_or_else(|| ConsoleError::bad_form("page must be a positive number")),
        }
    }
}
