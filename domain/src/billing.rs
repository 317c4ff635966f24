//! Billing arithmetic: per-call cost from token counts and the price in force, and budget
//! periods. Pure and exact: integer micro-rupees, `rust_decimal` for the one rounding.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::event::BudgetPeriod;
use crate::money::{Money, MoneyError};

/// Most tokens of either kind one call may report; bounds the cost of a single call.
pub const MAX_TOKENS_PER_CALL: u64 = 100_000_000;
/// Highest price per million tokens accepted (one crore rupees).
pub const MAX_PRICE_PER_MILLION_MICROS: i64 = 10_000_000 * 1_000_000;
/// The largest cost of one call: the most tokens each way at the highest prices (2×10^9 INR).
/// Within what decodes, so that every `cost` the writer records reads back.
pub const MAX_CALL_COST_MICROS: i64 = (2 * MAX_TOKENS_PER_CALL as i64) * (MAX_PRICE_PER_MILLION_MICROS / 1_000_000);

const _: () = assert!(MAX_CALL_COST_MICROS <= crate::money::MAX_ABS_AMOUNT_MICROS);

/// How a metered call ended, as the gateway reports it. Every status bills the tokens
/// reported: a failed or cancelled call that streamed tokens before it stopped was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl UsageStatus {
    /// The text stored in `UsageRecorded.status` (a string there: older logs hold others).
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Succeeded => "succeeded",
            UsageStatus::Failed => "failed",
            UsageStatus::Cancelled => "cancelled",
        }
    }
}

/// Where a settlement's token counts came from, when not from the gateway's report:
/// the upstream's own usage, or bahi's estimate when the upstream gave none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    Upstream,
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Upstream => "upstream",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// Whose API a model's upstream speaks: it decides the path bahi calls and the shape of
/// requests, usage and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// `upstream_base_url` includes the version (`https://api.openai.com/v1`); bahi appends
    /// `/chat/completions` or `/embeddings`.
    OpenAi,
    /// `upstream_base_url` has no version (`https://api.anthropic.com`); bahi appends `/v1/messages`.
    Anthropic,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

/// Output tokens an authorization holds for when a request names no `max_tokens` and the
/// operator set no `max_output_tokens` for the model.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_million: Money,
    pub output_per_million: Money,
}

/// cost = (input × input price + output × output price) / 1,000,000, rounded half-even to
/// six places once (never per part).
pub fn call_cost(price: &Price, input_tokens: u64, output_tokens: u64) -> Result<Money, MoneyError> {
    let numerator = i128::from(input_tokens) * i128::from(price.input_per_million.micros())
        + i128::from(output_tokens) * i128::from(price.output_per_million.micros());
    // numerator is in millionths of a micro-rupee: scale 12 in rupees.
    let exact = Decimal::try_from_i128_with_scale(numerator, 12).map_err(|_| MoneyError::TooLarge)?;
    Money::from_decimal(exact.round_dp_with_strategy(6, RoundingStrategy::MidpointNearestEven))
}

/// Which budget period `at` falls in, as a number that differs between any two periods of
/// the same kind: the day since the common era, the month since year 0, or 0 for `total`.
/// Never 0 for a day or a month of a real date, so 0 also means "no period yet". A number,
/// not a formatted date: the fold computes two of these per settled call, and formatting
/// them was an eighth of folding a gateway's log (perf, `bench replay`).
pub fn period_key(period: BudgetPeriod, at: DateTime<Utc>) -> i64 {
    match period {
        BudgetPeriod::Day => i64::from(at.num_days_from_ce()),
        BudgetPeriod::Month => i64::from(at.year()) * 12 + i64::from(at.month0()),
        BudgetPeriod::Total => 0,
    }
}

/// When the period containing `at` ends (00:00 UTC), or never for `total`.
pub fn resets_at(period: BudgetPeriod, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match period {
        BudgetPeriod::Day => {
            let next = at.date_naive().succ_opt()?;
            Some(Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?))
        }
        BudgetPeriod::Month => {
            let (year, month) = if at.month() == 12 { (at.year() + 1, 1) } else { (at.year(), at.month() + 1) };
            Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()
        }
        BudgetPeriod::Total => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn price(input: &str, output: &str) -> Price {
        Price { input_per_million: Money::parse(input).unwrap(), output_per_million: Money::parse(output).unwrap() }
    }

    #[test]
    fn hand_computed_costs() {
        // 1,234 input at ₹50/M and 567 output at ₹150/M: 0.0617 + 0.08505 = 0.14675.
        assert_eq!(call_cost(&price("50", "150"), 1234, 567).unwrap().to_string(), "0.14675");
        // 1 token at ₹0.5/M is 0.0000005: half-way, rounds to even (0.000000).
        assert_eq!(call_cost(&price("0.5", "0"), 1, 0).unwrap().micros(), 0);
        // 3 tokens at ₹0.5/M is 0.0000015: rounds to even (0.000002).
        assert_eq!(call_cost(&price("0.5", "0"), 3, 0).unwrap().micros(), 2);
        // Rounding happens once, on the sum: 1 + 1 tokens at ₹0.5/M each is exactly 0.000001.
        assert_eq!(call_cost(&price("0.5", "0.5"), 1, 1).unwrap().micros(), 1);
        assert_eq!(call_cost(&price("3.75", "15"), 1_000_000, 1_000_000).unwrap().to_string(), "18.75");
        assert_eq!(call_cost(&price("10", "10"), 0, 0).unwrap(), Money::ZERO);
    }

    #[test]
    fn periods_reset_at_midnight_utc() {
        let at = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let day_start = Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap();
        let next_year = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let month_start = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(period_key(BudgetPeriod::Day, at), period_key(BudgetPeriod::Day, day_start));
        assert_eq!(period_key(BudgetPeriod::Day, at) + 1, period_key(BudgetPeriod::Day, next_year));
        assert_eq!(period_key(BudgetPeriod::Month, at), period_key(BudgetPeriod::Month, month_start));
        assert_eq!(period_key(BudgetPeriod::Month, at) + 1, period_key(BudgetPeriod::Month, next_year));
        assert_ne!(
            period_key(BudgetPeriod::Month, at),
            period_key(BudgetPeriod::Month, at - chrono::Duration::days(365))
        );
        assert_eq!(period_key(BudgetPeriod::Total, at), period_key(BudgetPeriod::Total, next_year));
        let first_day = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
        assert_ne!(period_key(BudgetPeriod::Day, first_day), 0, "0 is no period");
        assert_ne!(period_key(BudgetPeriod::Month, first_day), 0, "0 is no period");
        assert_eq!(resets_at(BudgetPeriod::Day, at).unwrap(), Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(resets_at(BudgetPeriod::Month, at).unwrap(), Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(resets_at(BudgetPeriod::Total, at), None);
    }
}
