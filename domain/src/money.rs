//! Exact INR amounts.
//!
//! The API speaks `rust_decimal` strings with at most six decimal places (a micro-rupee);
//! internally an amount is a count of micro-rupees in an `i64`, which makes every sum exact,
//! every comparison cheap, and matches the integer column SQL stores.

use std::borrow::Cow;
use std::fmt;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// Micro-rupees in one rupee.
pub const MICROS_PER_RUPEE: i64 = 1_000_000;

/// The largest absolute amount that parses and decodes: one lakh crore rupees (10^12 INR).
/// Every amount an event carries must be within it, or the log could not be read back; it
/// leaves nine times its size of headroom in `i64` micros for sums in the fold.
pub const MAX_ABS_AMOUNT_MICROS: i64 = 1_000_000_000_000 * MICROS_PER_RUPEE;

/// The largest single amount accepted from outside: a top-up, a grant, a hold (`max_cost`).
/// One hundred crore rupees (10^9 INR).
pub const MAX_AMOUNT_MICROS: i64 = 1_000_000_000 * MICROS_PER_RUPEE;

/// The largest balance, above and below zero: a credit that would take an org's balance
/// past it is refused, and so is a usage that would take it below its negative. Equal to
/// the decoder's limit, so that every `balance_after` the writer records decodes.
pub const MAX_BALANCE_MICROS: i64 = MAX_ABS_AMOUNT_MICROS;

const _: () = assert!(MAX_AMOUNT_MICROS <= MAX_BALANCE_MICROS && MAX_BALANCE_MICROS <= MAX_ABS_AMOUNT_MICROS);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be a decimal string such as \"42.50\"")]
    NotADecimal,
    #[error("amount has more than 6 decimal places (the smallest unit is one micro-rupee)")]
    TooManyPlaces,
    #[error("amount is too large")]
    TooLarge,
    #[error("amount must be positive")]
    NotPositive,
    #[error("currency must be \"inr\"")]
    UnsupportedCurrency,
    #[error("arithmetic overflow")]
    Overflow,
}

/// An exact amount of Indian rupees. Private field: only checked constructors make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money {
    micros: i64,
}

impl Money {
    pub const ZERO: Money = Money { micros: 0 };
    /// `MAX_AMOUNT_MICROS` and `MAX_BALANCE_MICROS` as amounts, for comparing and messages.
    pub const MAX_AMOUNT: Money = Money { micros: MAX_AMOUNT_MICROS };
    pub const MAX_BALANCE: Money = Money { micros: MAX_BALANCE_MICROS };

    /// From integer micro-rupees (the SQL representation).
    pub fn from_micros(micros: i64) -> Result<Money, MoneyError> {
        if micros.checked_abs().is_none_or(|abs| abs > MAX_ABS_AMOUNT_MICROS) {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money { micros })
    }

    /// From a decimal; refuses more than six places instead of rounding silently.
    pub fn from_decimal(amount: Decimal) -> Result<Money, MoneyError> {
        let normalized = amount.normalize();
        if normalized.scale() > 6 {
            return Err(MoneyError::TooManyPlaces);
        }
        let micros = normalized.checked_mul(Decimal::from(MICROS_PER_RUPEE)).ok_or(MoneyError::TooLarge)?;
        let micros = i64::try_from(micros.trunc().mantissa() / 10i128.pow(micros.trunc().scale()))
            .map_err(|_| MoneyError::TooLarge)?;
        Money::from_micros(micros)
    }

    /// Rounds half-even to six places once; used where a computed cost meets the ledger.
    pub fn from_decimal_rounded(amount: Decimal) -> Result<Money, MoneyError> {
        let rounded = amount.round_dp_with_strategy(6, rust_decimal::RoundingStrategy::MidpointNearestEven);
        Money::from_decimal(rounded)
    }

    /// Parses the API's decimal string strictly: optional minus, digits, optional point and
    /// one to six digits. No exponent, no plus sign, no spaces, no thousands separators.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let (negative, unsigned) = match text.as_bytes() {
            [b'-', rest @ ..] => (true, rest),
            bytes => (false, bytes),
        };
        let (whole, fraction) = match unsigned.iter().position(|&byte| byte == b'.') {
            Some(point) => (&unsigned[..point], Some(&unsigned[point + 1..])),
            None => (unsigned, None),
        };
        let digits_only = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
        if !digits_only(whole) || fraction.is_some_and(|f| !digits_only(f)) {
            return Err(MoneyError::NotADecimal);
        }
        let fraction = fraction.unwrap_or_default();
        if fraction.len() > 6 {
            return Err(MoneyError::TooManyPlaces);
        }
        if whole.len() > 13 {
            return Err(MoneyError::TooLarge);
        }
        // At most 13 + 6 digits: below 10^19, exact in a u64 (every event of a gateway's
        // log carries several amounts, so this is plain integer arithmetic, no Decimal).
        let digits = |part: &[u8]| part.iter().fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
        const SCALE: [u64; 7] = [1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];
        let magnitude = digits(whole) * MICROS_PER_RUPEE as u64 + digits(fraction) * SCALE[fraction.len()];
        let magnitude = i64::try_from(magnitude).map_err(|_| MoneyError::TooLarge)?;
        Money::from_micros(if negative { -magnitude } else { magnitude })
    }

    /// Parses and requires a strictly positive amount (top-ups, grants, prices, holds).
    pub fn parse_positive(text: &str) -> Result<Money, MoneyError> {
        let money = Money::parse(text)?;
        if money.micros <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(money)
    }

    pub fn micros(self) -> i64 {
        self.micros
    }

    pub fn amount(self) -> Decimal {
        Decimal::new(self.micros, 6).normalize()
    }

    pub fn is_positive(self) -> bool {
        self.micros > 0
    }

    pub fn is_negative(self) -> bool {
        self.micros < 0
    }

    /// A sum within `i64`. It may exceed `MAX_ABS_AMOUNT_MICROS` (the fold's lifetime totals
    /// do): whatever goes into an event is bounded by `decide` against the limits above.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.micros.checked_add(other.micros).map(|micros| Money { micros }).ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.micros.checked_sub(other.micros).map(|micros| Money { micros }).ok_or(MoneyError::Overflow)
    }

    pub fn min(self, other: Money) -> Money {
        if self <= other { self } else { other }
    }
}

/// Formats with at least two decimal places ("42.50", "0.000001", "-3.00"), the way INR
/// amounts are read, and never more than six.
impl fmt::Display for Money {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.micros < 0 { "-" } else { "" };
        let abs = self.micros.unsigned_abs();
        let whole = abs / MICROS_PER_RUPEE as u64;
        let fraction = abs % MICROS_PER_RUPEE as u64;
        let mut fraction_text = format!("{fraction:06}");
        while fraction_text.len() > 2 && fraction_text.ends_with('0') {
            fraction_text.pop();
        }
        write!(formatter, "{sign}{whole}.{fraction_text}")
    }
}

#[derive(Serialize, Deserialize)]
struct MoneyObject<'a> {
    currency: &'a str,
    amount: String,
}

/// The two shapes money may take: a bare decimal string, or the money object. The text is
/// borrowed from the input where the input allows it (a JSON string without escapes), so
/// decoding an amount allocates nothing: every event of a gateway's log carries several.
enum Input<'de> {
    Text(Cow<'de, str>),
    Object { currency: Cow<'de, str>, amount: Cow<'de, str> },
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum MoneyField {
    Currency,
    Amount,
    #[serde(other)]
    Other,
}

/// A string, borrowed from the input when it can be.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        crate::ids::borrowed_text(deserializer).map(Text)
    }
}

struct InputVisitor;

impl<'de> de::Visitor<'de> for InputVisitor {
    type Value = Input<'de>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a money object or a decimal string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Input<'de>, E> {
        Ok(Input::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Input<'de>, E> {
        Ok(Input::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Input<'de>, E> {
        Ok(Input::Text(Cow::Owned(text)))
    }

    /// Fields other than `currency` and `amount` are ignored, as they were when this was a
    /// derived struct; a repeated field is refused.
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Input<'de>, A::Error> {
        let (mut currency, mut amount) = (None, None);
        while let Some(field) = map.next_key::<MoneyField>()? {
            match field {
                MoneyField::Currency if currency.is_none() => currency = Some(map.next_value::<Text<'de>>()?.0),
                MoneyField::Amount if amount.is_none() => amount = Some(map.next_value::<Text<'de>>()?.0),
                MoneyField::Currency | MoneyField::Amount => return Err(de::Error::custom("duplicate money field")),
                MoneyField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        match (currency, amount) {
            (Some(currency), Some(amount)) => Ok(Input::Object { currency, amount }),
            _ => Err(de::Error::custom("money needs currency and amount")),
        }
    }
}

/// Serialized as the API's money object: `{"currency": "inr", "amount": "42.50"}`.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoneyObject { currency: "inr", amount: self.to_string() }.serialize(serializer)
    }
}

/// Accepts the money object, or a bare decimal string where a request body gives an amount
/// alone. A JSON number is refused: it may already have passed through a float.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        // A visitor of its own rather than an untagged enum: serde buffers an untagged
        // input and builds an error for each variant it tries first, which was a fifth of
        // decoding a gateway's events (perf, `bench replay`).
        let input = deserializer.deserialize_any(InputVisitor).map_err(|_| {
            de::Error::custom(
                "money must be {\"currency\": \"inr\", \"amount\": \"<decimal string>\"} or a decimal string",
            )
        })?;
        let text = match input {
            Input::Text(text) => text,
            Input::Object { currency, amount } => {
                if currency != "inr" {
                    return Err(de::Error::custom(MoneyError::UnsupportedCurrency));
                }
                amount
            }
        };
        Money::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn parses_and_formats_exactly() {
        assert_eq!(Money::parse("42.5").unwrap().micros(), 42_500_000);
        assert_eq!(Money::parse("42.5").unwrap().to_string(), "42.50");
        assert_eq!(Money::parse("0.000001").unwrap().to_string(), "0.000001");
        assert_eq!(Money::parse("-3").unwrap().to_string(), "-3.00");
        assert_eq!(Money::parse("7.123400").unwrap().to_string(), "7.1234");
    }

    #[test]
    fn refuses_bad_text() {
        for bad in ["", "1.", ".5", "1e3", "+1", " 1", "1,000", "abc", "1.2.3", "--1", "NaN"] {
            assert_eq!(Money::parse(bad), Err(MoneyError::NotADecimal), "{bad:?}");
        }
        assert_eq!(Money::parse("0.0000001"), Err(MoneyError::TooManyPlaces));
        assert_eq!(Money::parse("99999999999999"), Err(MoneyError::TooLarge));
        assert_eq!(Money::parse_positive("0"), Err(MoneyError::NotPositive));
        assert_eq!(Money::parse_positive("-1"), Err(MoneyError::NotPositive));
    }

    #[test]
    fn serde_round_trip_and_refusals() {
        let money = Money::parse("10.25").unwrap();
        let json = serde_json::to_string(&money).unwrap();
        assert_eq!(json, r#"{"currency":"inr","amount":"10.25"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
        assert_eq!(serde_json::from_str::<Money>(r#""10.25""#).unwrap(), money);
        assert!(serde_json::from_str::<Money>("10.25").is_err());
        assert!(serde_json::from_str::<Money>(r#"{"currency":"usd","amount":"1"}"#).is_err());
        // Other fields are ignored, in either order.
        let object = r#"{"amount":"10.25","note":{"a":[1]},"currency":"inr"}"#;
        assert_eq!(serde_json::from_str::<Money>(object).unwrap(), money);
        // Text that cannot be borrowed from the input: escaped, read from bytes or a reader,
        // or handed over from a `Value`.
        let escaped = r#"{"currency":"\u0069nr","amount":"1\u0030.25"}"#;
        assert_eq!(serde_json::from_str::<Money>(escaped).unwrap(), money);
        assert_eq!(serde_json::from_str::<Money>(r#""\u0031\u0030.25""#).unwrap(), money);
        assert_eq!(serde_json::from_slice::<Money>(json.as_bytes()).unwrap(), money);
        assert_eq!(serde_json::from_reader::<_, Money>(json.as_bytes()).unwrap(), money);
        assert_eq!(serde_json::from_reader::<_, Money>(&b"\"10.25\""[..]).unwrap(), money);
        assert_eq!(
            serde_json::from_value::<Money>(serde_json::json!({"currency": "inr", "amount": "10.25"})).unwrap(),
            money
        );
        assert_eq!(serde_json::from_value::<Money>(serde_json::json!("10.25")).unwrap(), money);
        // Every other shape gets the one message that names both shapes.
        for refused in [
            "10",
            "null",
            "true",
            r#"["inr","10.25"]"#,
            r#"{"amount":"10.25"}"#,
            r#"{"currency":"inr","amount":"1","amount":"2"}"#,
            r#"{"currency":"inr","amount":10}"#,
        ] {
            let error = serde_json::from_str::<Money>(refused).unwrap_err().to_string();
            assert!(error.starts_with("money must be {\"currency\": \"inr\""), "{refused}: {error}");
        }
    }

    /// The parser before its digits were read into a u64: i128 arithmetic over `str` splits.
    fn parse_before(text: &str) -> Result<Money, MoneyError> {
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unsigned, None),
        };
        let digits_only = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits_only(whole) || fraction.is_some_and(|f| !digits_only(f)) {
            return Err(MoneyError::NotADecimal);
        }
        if fraction.is_some_and(|f| f.len() > 6) {
            return Err(MoneyError::TooManyPlaces);
        }
        if whole.len() > 13 {
            return Err(MoneyError::TooLarge);
        }
        let digits = |part: &str| part.bytes().fold(0i128, |value, digit| value * 10 + i128::from(digit - b'0'));
        let fraction = fraction.unwrap_or("");
        let scale = 10i128.pow(6 - u32::try_from(fraction.len()).unwrap_or(6));
        let magnitude = digits(whole) * i128::from(MICROS_PER_RUPEE) + digits(fraction) * scale;
        let micros = if text.starts_with('-') { -magnitude } else { magnitude };
        Money::from_micros(i64::try_from(micros).map_err(|_| MoneyError::TooLarge)?)
    }

    proptest! {
        /// Any text of digits, points, signs and a few other bytes: the parser accepts and
        /// refuses as the one before it did, with the same value or error.
        #[test]
        fn parse_agrees_with_the_parser_before(text in "[-0-9.+e ]{0,24}|-?[0-9]{10,16}(\\.[0-9]{0,8})?") {
            prop_assert_eq!(Money::parse(&text), parse_before(&text), "{}", text);
        }
    }

    /// The integer parse gives what the Decimal one gave, for every string of the shape
    /// it accepts and for the lengths just past its limits.
    #[test]
    fn parse_agrees_with_decimal() {
        fn through_decimal(text: &str) -> Result<Money, MoneyError> {
            Money::from_decimal(Decimal::from_str(text).map_err(|_| MoneyError::NotADecimal)?)
        }
        proptest::proptest!(|(text in "-?[0-9]{1,13}(\\.[0-9]{1,6})?")| {
            proptest::prop_assert_eq!(Money::parse(&text), through_decimal(&text), "{}", text);
        });
        for text in ["0", "-0", "-0.000000", "007.50", "1000000000000", "1000000000000.000001", "9999999999999.999999"]
        {
            assert_eq!(Money::parse(text), through_decimal(text), "{text}");
        }
    }

    #[test]
    fn rounds_half_even_once() {
        let cost = Decimal::from_str("0.0000025").unwrap();
        assert_eq!(Money::from_decimal_rounded(cost).unwrap().micros(), 2);
        let cost = Decimal::from_str("0.0000035").unwrap();
        assert_eq!(Money::from_decimal_rounded(cost).unwrap().micros(), 4);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(micros in -MAX_ABS_AMOUNT_MICROS..=MAX_ABS_AMOUNT_MICROS) {
            let money = Money::from_micros(micros).unwrap();
            prop_assert_eq!(Money::parse(&money.to_string()).unwrap(), money);
            prop_assert_eq!(Money::from_decimal(money.amount()).unwrap(), money);
        }
    }
}
