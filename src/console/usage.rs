//! Usage: what the org spent per day over a period, as a bar chart drawn here as inline SVG
//! (with the same numbers in a table beside it), and by agent, model and API key. Every
//! figure is the attribution use case's (`app::audit::usage`), so it adds up to the
//! statement's usage debits of the same days.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use bahi_domain::Money;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::data::{self, Amount, Days, Pager, given, int, text};
use super::format::inr;
use super::{Chrome, ConsoleError, ConsoleSession, render};
use crate::app::Reader;
use crate::app::audit::{self, AttributionQuery};
use crate::http::AppState;

/// The default period, in days up to today, and the longest one the chart draws.
pub const DEFAULT_DAYS: u64 = 30;
pub const MAX_DAYS: i64 = 366;
/// Rows of each breakdown on the page with all three; one breakdown alone is paged.
const BREAKDOWN_TOP: usize = 10;
/// The chart's drawing area, in SVG user units.
const CHART_WIDTH: f64 = 720.0;
const CHART_TOP: f64 = 16.0;
const CHART_BOTTOM: f64 = 176.0;

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct UsageParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
}

/// The breakdowns the page offers: (group key, heading, what a row is).
const BREAKDOWNS: [(&str, &str, &str); 4] = [
    ("agent", "By agent", "Agent"),
    ("model", "By model", "Model"),
    ("api_key", "By API key", "API key"),
    ("act_for", "By who the call acted for", "Acting for"),
];

pub struct DayRow {
    pub day: String,
    pub calls: i64,
    pub cost: Amount,
}

pub struct Bar {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
    pub label: String,
}

pub struct Tick {
    pub x: String,
    pub label: String,
}

pub struct GroupRow {
    pub name: String,
    pub detail: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Amount,
}

pub struct Breakdown {
    pub key: &'static str,
    pub heading: &'static str,
    pub column: &'static str,
    pub rows: Vec<GroupRow>,
    pub total_rows: usize,
    /// The page of this breakdown alone (when more rows than shown).
    pub all_link: Option<String>,
    pub pager: Option<Pager>,
}

#[derive(Template)]
#[template(path = "console/usage.html")]
struct UsagePage {
    chrome: Chrome,
    from: String,
    to: String,
    group_by: String,
    options: Vec<(&'static str, &'static str)>,
    total: Amount,
    calls: i64,
    peak: String,
    days: Vec<DayRow>,
    bars: Vec<Bar>,
    ticks: Vec<Tick>,
    chart_label: String,
    breakdowns: Vec<Breakdown>,
    overview_link: String,
}

pub async fn page(
    State(state): State<AppState>,
    session: ConsoleSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, ConsoleError> {
    let params: UsageParams = data::parse_query(raw.as_deref())?;
    let today = state.now().date_naive();
    let days =
        Days::from_params(given(params.from.as_ref()), given(params.to.as_ref()), today, DEFAULT_DAYS, MAX_DAYS)?;
    let only = match given(params.group_by.as_ref()) {
        None => None,
        Some(key) => Some(
            BREAKDOWNS
                .iter()
                .find(|(name, _, _)| *name == key)
                .ok_or_else(|| ConsoleError::bad_form("group_by must be one of agent, model, api_key or act_for"))?,
        ),
    };
    if params.page.is_some() && only.is_none() {
        return Err(ConsoleError::bad_form("page needs group_by: only one breakdown alone is paged"));
    }
    let reader = Reader::Org(Box::new(session.principal.clone()));
    let query = |group_by: &str| AttributionQuery {
        from: Some(days.from.to_string()),
        to: Some(days.to.to_string()),
        group_by: Some(group_by.to_owned()),
        org_id: None,
    };

    let by_day = audit::usage(&state, &reader, query("day")).await?;
    let (day_rows, total, calls) = day_rows(&by_day, days)?;
    let (bars, ticks, peak) = chart(&day_rows);

    let period = (days.from.to_string(), days.to.to_string());
    let chosen: Vec<_> = match only {
        Some(breakdown) => vec![*breakdown],
        None => BREAKDOWNS[..3].to_vec(),
    };
    let mut breakdowns = Vec::new();
    for (key, heading, column) in chosen {
        let answer = audit::usage(&state, &reader, query(key)).await?;
        let mut rows = group_rows(&answer, key)?;
        rows.sort_by(|left, right| right.cost.exact_money.cmp(&left.cost.exact_money));
        let rows: Vec<GroupRow> = rows.into_iter().map(|row| row.row).collect();
        let total_rows = rows.len();
        let link_to = |page: Option<usize>| {
            data::link(
                "/console/usage",
                &UsageParams {
                    from: Some(period.0.clone()),
                    to: Some(period.1.clone()),
                    group_by: Some(key.to_owned()),
                    page,
                },
            )
        };
        let breakdown = if only.is_some() {
            let (rows, pager) = data::paginate(rows, params.page.unwrap_or(1), |page| link_to(Some(page)))?;
            Breakdown { key, heading, column, rows, total_rows, all_link: None, pager: Some(pager) }
        } else {
            let all_link = (total_rows > BREAKDOWN_TOP).then(|| link_to(None));
            let rows = rows.into_iter().take(BREAKDOWN_TOP).collect();
            Breakdown { key, heading, column, rows, total_rows, all_link, pager: None }
        };
        breakdowns.push(breakdown);
    }

    let chart_label = format!(
        "Spend per day from {} to {}: {} over {} calls; the highest day {}.",
        days.from, days.to, total.shown, calls, peak
    );
    let page = UsagePage {
        chrome: session.chrome("usage"),
        from: period.0.clone(),
        to: period.1.clone(),
        group_by: only.map(|(key, _, _)| (*key).to_owned()).unwrap_or_default(),
        options: BREAKDOWNS.iter().map(|(key, heading, _)| (*key, *heading)).collect(),
        total,
        calls,
        peak,
        days: day_rows,
        bars,
        ticks,
        chart_label,
        breakdowns,
        overview_link: data::link(
            "/console/usage",
            &UsageParams { from: Some(period.0), to: Some(period.1), group_by: None, page: None },
        ),
    };
    Ok(render(&page))
}

/// Every day of the period, those without calls at zero; the total cost and calls.
fn day_rows(answer: &Value, days: Days) -> Result<(Vec<DayRow>, Amount, i64), ConsoleError> {
    let mut by_day = std::collections::HashMap::new();
    for row in answer["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        by_day.insert(text(&row["day"]), (int(&row["calls"]), data::money(&row["cost"])?));
    }
    let mut rows = Vec::new();
    let mut total = Money::ZERO;
    let mut calls = 0i64;
    for day in days.from.iter_days().take(usize::try_from(days.count()).unwrap_or_default()) {
        let key = day.to_string();
        let (day_calls, cost) = by_day.get(&key).copied().unwrap_or((0, Money::ZERO));
        total = total.checked_add(cost).map_err(|_| ConsoleError::internal("usage total overflows"))?;
        calls = calls.saturating_add(day_calls);
        rows.push(DayRow { day: key, calls: day_calls, cost: Amount::of(cost) });
    }
    Ok((rows, Amount::of(total), calls))
}

/// The bars (one a day, scaled to the highest day), a few date labels under them, and
/// the highest day's spend.
fn chart(rows: &[DayRow]) -> (Vec<Bar>, Vec<Tick>, String) {
    let amounts: Vec<f64> = rows
        .iter()
        .map(|row| row.cost.exact.parse::<rust_decimal::Decimal>().ok().and_then(|d| d.to_f64()).unwrap_or(0.0))
        .collect();
    let highest = amounts.iter().copied().fold(0.0_f64, f64::max);
    let peak_index = amounts.iter().position(|amount| *amount == highest && highest > 0.0);
    let peak = match peak_index {
        Some(index) => format!("{} on {}", rows[index].cost.shown, rows[index].day),
        None => inr(Money::ZERO),
    };
    let count = rows.len().max(1);
    let slot = CHART_WIDTH / count as f64;
    let width = (slot * 0.8).max(0.5);
    let bars = rows
        .iter()
        .zip(&amounts)
        .enumerate()
        .map(|(index, (row, amount))| {
            let height = if highest > 0.0 { (amount / highest) * (CHART_BOTTOM - CHART_TOP) } else { 0.0 };
            let height = if *amount > 0.0 { height.max(1.0) } else { 0.0 };
            Bar {
                x: format!("{:.2}", index as f64 * slot + (slot - width) / 2.0),
                y: format!("{:.2}", CHART_BOTTOM - height),
                width: format!("{width:.2}"),
                height: format!("{height:.2}"),
                label: format!("{}: {} ({} calls)", row.day, row.cost.shown, row.calls),
            }
        })
        .collect();
    let mut tick_indexes = vec![0, count / 2, count - 1];
    tick_indexes.dedup();
    let ticks = tick_indexes
        .into_iter()
        .filter(|index| *index < rows.len())
        .map(|index| {
            let x = (index as f64 * slot + slot / 2.0).clamp(36.0, CHART_WIDTH - 36.0);
            Tick { x: format!("{x:.2}"), label: rows[index].day.clone() }
        })
        .collect();
    (bars, ticks, peak)
}

struct SortableRow {
    row: GroupRow,
    cost: SortKey,
}

struct SortKey {
    exact_money: Money,
}

/// The rows of one breakdown, named for people (an agent by its name, with its id beside).
fn group_rows(answer: &Value, key: &str) -> Result<Vec<SortableRow>, ConsoleError> {
    let mut rows = Vec::new();
    for row in answer["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let value = &row[key];
        let (name, detail) = match key {
            "agent" if value.is_null() => ("no agent (API key or session)".to_owned(), String::new()),
            "agent" => {
                let id = text(&value["id"]);
                let name = text(&value["name"]);
                if name.is_empty() { (id, String::new()) } else { (name, id) }
            }
            _ if value.is_null() => ("none".to_owned(), String::new()),
            _ => (text(value), String::new()),
        };
        let cost = data::money(&row["cost"])?;
        rows.push(SortableRow {
            row: GroupRow {
                name,
                detail,
                calls: int(&row["calls"]),
                input_tokens: int(&row["input_tokens"]),
                output_tokens: int(&row["output_tokens"]),
                cost: Amount::of(cost),
            },
            cost: SortKey { exact_money: cost },
        });
    }
    Ok(rows)
}
