//! How the console writes amounts and times. Amounts are rupees with Indian digit grouping
//! (`₹1,23,456.78`), rounded half-even to the paisa for the eye; downloads keep the exact
//! strings. Times are written in UTC in the page and turned into the viewer's zone by the
//! console's script, with the UTC time kept on hover.

use bahi_domain::Money;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

/// `₹1,23,456.78`: the amount to the paisa with Indian grouping (the last three digits,
/// then pairs); a negative amount is `-₹…`.
pub fn inr(amount: Money) -> String {
    inr_decimal(amount.amount())
}

/// As `inr`, for an amount already in rupees.
pub fn inr_decimal(amount: Decimal) -> String {
    let rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    let sign = if rounded.is_sign_negative() && !rounded.is_zero() { "-" } else { "" };
    let text = format!("{:.2}", rounded.abs());
    let (whole, paise) = text.split_once('.').unwrap_or((text.as_str(), "00"));
    format!("{sign}₹{}.{paise}", group_indian(whole))
}

/// Groups whole-rupee digits the Indian way: `12345678` → `1,23,45,678`.
fn group_indian(digits: &str) -> String {
    if digits.len() <= 3 {
        return digits.to_owned();
    }
    let (head, last_three) = digits.split_at(digits.len() - 3);
    let mut groups: Vec<&str> = Vec::new();
    let mut rest = head;
    while rest.len() > 2 {
        let (left, pair) = rest.split_at(rest.len() - 2);
        groups.push(pair);
        rest = left;
    }
    groups.push(rest);
    groups.reverse();
    format!("{},{last_three}", groups.join(","))
}

/// A time as a page shows it: `<time datetime="{iso}" title="{utc} UTC">{utc}</time>`.
#[derive(Debug, Clone)]
pub struct Moment {
    /// RFC 3339 with a `Z`, for the `datetime` attribute the script reads.
    pub iso: String,
    /// `2026-12-05 21:40:07`, shown until the script writes the viewer's zone.
    pub utc: String,
}

impl Moment {
    pub fn of(time: DateTime<Utc>) -> Moment {
        Moment {
            iso: time.to_rfc3339_opts(SecondsFormat::Secs, true),
            utc: time.format("%Y-%m-%d %H:%M:%S").to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn rupees(text: &str) -> String {
        inr_decimal(Decimal::from_str(text).expect("a decimal"))
    }

    #[test]
    fn amounts_are_grouped_the_indian_way() {
        assert_eq!(rupees("123456.78"), "₹1,23,456.78");
        assert_eq!(rupees("12345678"), "₹1,23,45,678.00");
        assert_eq!(rupees("999"), "₹999.00");
        assert_eq!(rupees("1000"), "₹1,000.00");
        assert_eq!(rupees("100000"), "₹1,00,000.00");
        assert_eq!(rupees("0"), "₹0.00");
        assert_eq!(rupees("-1234.5"), "-₹1,234.50");
    }

    #[test]
    fn amounts_round_half_even_to_the_paisa() {
        assert_eq!(rupees("0.125"), "₹0.12");
        assert_eq!(rupees("0.135"), "₹0.14");
        assert_eq!(rupees("0.000001"), "₹0.00");
        assert_eq!(rupees("-0.001"), "₹0.00");
    }

    #[test]
    fn times_keep_utc_for_the_title() {
        let time = DateTime::parse_from_rfc3339("2026-12-05T21:40:07.123456Z").expect("a time").with_timezone(&Utc);
        let moment = Moment::of(time);
        assert_eq!(moment.iso, "2026-12-05T21:40:07Z");
        assert_eq!(moment.utc, "2026-12-05 21:40:07");
    }
}
