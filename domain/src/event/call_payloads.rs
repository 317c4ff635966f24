//! A direct reader for the payloads of the two events every inference call records,
//! `CallAuthorized` and `UsageRecorded`: together nearly the whole of a gateway's log.
//!
//! It reads only the exact bytes bahi's own encoder writes (serde_json's compact output, the
//! fields in declaration order) and gives up, returning `None`, at the first byte that differs:
//! whitespace, another field order, an unknown or missing field, an escape or control
//! character inside a string, a number or date it does not read itself. `Event::decode` then
//! decodes the payload with serde as before, so what is accepted, and the value read, do not
//! change; a property test compares the two on encoded and on mutated payloads.
//!
//! Why: serde_json's general parser (field-name matching, string scanning with escape
//! handling, its visitor calls) was about a third of bahi's CPU in loading a gateway's log.

use chrono::{DateTime, Utc};

use super::{CallAttribution, CallAuthorized, UsageRecorded};
use crate::billing::Price;
use crate::ids::{CallId, OrgId};
use crate::money::Money;
use crate::timestamp::parse_utc;

/// Reads a `CallAuthorized` payload written by bahi, or `None` (see the module's comment).
pub(super) fn call_authorized(payload: &str) -> Option<CallAuthorized> {
    let mut cursor = Cursor { rest: payload };
    let (call_id, org_id, attribution, model) = cursor.call_head()?;
    cursor.literal(",\"price\":{\"input_per_million\":")?;
    let input_per_million = cursor.money()?;
    cursor.literal(",\"output_per_million\":")?;
    let output_per_million = cursor.money()?;
    cursor.literal("},\"hold\":")?;
    let hold = cursor.money()?;
    cursor.literal(",\"authorized_at\":")?;
    let authorized_at = cursor.time()?;
    cursor.literal(",\"hold_expires_at\":")?;
    let hold_expires_at = cursor.time()?;
    cursor.end()?;
    Some(CallAuthorized {
        call_id,
        org_id,
        attribution,
        model,
        price: Price { input_per_million, output_per_million },
        hold,
        authorized_at,
        hold_expires_at,
    })
}

/// Reads a `UsageRecorded` payload written by bahi, or `None` (see the module's comment).
pub(super) fn usage_recorded(payload: &str) -> Option<UsageRecorded> {
    let mut cursor = Cursor { rest: payload };
    let (call_id, org_id, attribution, model) = cursor.call_head()?;
    cursor.literal(",\"input_tokens\":")?;
    let input_tokens = cursor.unsigned()?;
    cursor.literal(",\"output_tokens\":")?;
    let output_tokens = cursor.unsigned()?;
    cursor.literal(",\"status\":")?;
    let status = cursor.string()?.to_owned();
    cursor.literal(",\"cost\":")?;
    let cost = cursor.money()?;
    cursor.literal(",\"hold_released\":")?;
    let hold_released = cursor.money()?;
    cursor.literal(",\"balance_after\":")?;
    let balance_after = cursor.money()?;
    cursor.literal(",\"request_hash\":")?;
    let request_hash = cursor.string()?.to_owned();
    cursor.literal(",\"settled_at\":")?;
    let settled_at = cursor.time()?;
    cursor.end()?;
    Some(UsageRecorded {
        call_id,
        org_id,
        attribution,
        model,
        input_tokens,
        output_tokens,
        status,
        cost,
        hold_released,
        balance_after,
        request_hash,
        settled_at,
        usage_source: None,
    })
}

/// The index of the first quote, backslash or control character in `bytes`: where a JSON
/// string without escapes ends. Eight bytes at a time: the byte-wise loop was a fifth of
/// decoding these payloads, most of whose bytes are inside strings.
fn plain_length(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().ok()?);
        let quotes = word ^ (ONES * u64::from(b'"'));
        let backslashes = word ^ (ONES * u64::from(b'\\'));
        // The classic tests for a zero byte (after the XORs: a quote or a backslash) and for a
        // byte below 0x20. A borrow can mark a byte above a true match as well, never one
        // below it, so the lowest marked byte is the first match.
        let marked = ((quotes.wrapping_sub(ONES) & !quotes)
            | (backslashes.wrapping_sub(ONES) & !backslashes)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH_BITS;
        if marked != 0 {
            return Some(offset + (marked.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    let tail = words.remainder().iter().position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
    Some(offset + tail)
}

/// The unread rest of a payload. Every method consumes what it reads, or returns `None`.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn literal(&mut self, expected: &str) -> Option<()> {
        self.rest = self.rest.strip_prefix(expected)?;
        Some(())
    }

    /// The end of the payload: the object's closing brace and nothing after it.
    fn end(&mut self) -> Option<()> {
        (self.rest == "}").then_some(())
    }

    /// A JSON string without escapes, as the text between its quotes. A backslash or a
    /// control character gives up: serde decides what those mean, or refuses them.
    fn string(&mut self) -> Option<&'a str> {
        let body = self.rest.strip_prefix('"')?;
        let length = plain_length(body.as_bytes())?;
        if body.as_bytes()[length] != b'"' {
            return None;
        }
        // The quote is ASCII, so both slices fall on character boundaries.
        self.rest = &body[length + 1..];
        Some(&body[..length])
    }

    fn optional_string(&mut self) -> Option<Option<&'a str>> {
        match self.rest.strip_prefix("null") {
            Some(rest) => {
                self.rest = rest;
                Some(None)
            }
            None => self.string().map(Some),
        }
    }

    /// A JSON integer in `u64`: digits only, no leading zero, no overflow. Anything else
    /// (a sign, a fraction, an exponent) is left to serde, which refuses it for a `u64`.
    fn unsigned(&mut self) -> Option<u64> {
        let digits = self.rest.bytes().take_while(u8::is_ascii_digit).count();
        let text = &self.rest[..digits];
        if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
            return None;
        }
        let value =
            text.bytes().try_fold(0u64, |value, digit| value.checked_mul(10)?.checked_add(u64::from(digit - b'0')))?;
        self.rest = &self.rest[digits..];
        Some(value)
    }

    /// The money object exactly as `Money` serializes it.
    fn money(&mut self) -> Option<Money> {
        self.literal("{\"currency\":\"inr\",\"amount\":")?;
        let amount = Money::parse(self.string()?).ok()?;
        self.literal("}")?;
        Some(amount)
    }

    /// A time in the one form `parse_utc` reads; any other form is left to serde.
    fn time(&mut self) -> Option<DateTime<Utc>> {
        parse_utc(self.string()?)
    }

    /// The fields both call events open with: the call, its org, its attribution, its model.
    fn call_head(&mut self) -> Option<(CallId, OrgId, CallAttribution, String)> {
        self.literal("{\"call_id\":")?;
        let call_id = CallId::parse(self.string()?).ok()?;
        self.literal(",\"org_id\":")?;
        let org_id = OrgId::parse(self.string()?).ok()?;
        self.literal(",\"attribution\":")?;
        let attribution = self.attribution()?;
        self.literal(",\"model\":")?;
        let model = self.string()?.to_owned();
        Some((call_id, org_id, attribution, model))
    }

    fn attribution(&mut self) -> Option<CallAttribution> {
        self.literal("{\"credential_kind\":")?;
        let credential_kind = self.string()?.to_owned();
        self.literal(",\"credential_id\":")?;
        let credential_id = self.string()?.to_owned();
        self.literal(",\"agent_id\":")?;
        let agent_id = self.optional_string()?.map(str::to_owned);
        self.literal(",\"agent_name\":")?;
        let agent_name = self.optional_string()?.map(str::to_owned);
        self.literal(",\"act_for\":")?;
        let act_for = self.string()?.to_owned();
        self.literal("}")?;
        Some(CallAttribution { credential_kind, credential_id, agent_id, agent_name, act_for })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::money::MAX_ABS_AMOUNT_MICROS;
    use chrono::TimeZone;
    use proptest::prelude::*;

    /// Text that needs no escape in JSON, so bahi's encoder writes it between plain quotes
    /// and the direct reader must read it.
    fn plain_text() -> BoxedStrategy<String> {
        "[a-zA-Z0-9_:. \u{e9}\u{20ac}-]{0,12}".boxed()
    }

    /// Any text, escapes and control characters included: the direct reader may give up on it.
    fn any_text() -> BoxedStrategy<String> {
        prop_oneof![plain_text(), any::<String>(), "[\"\\\\\u{0}-\u{1f}a]{0,4}"].boxed()
    }

    fn money() -> impl Strategy<Value = Money> {
        prop_oneof![(-MAX_ABS_AMOUNT_MICROS..=MAX_ABS_AMOUNT_MICROS), (0..10_000_000i64), Just(0i64),]
            .prop_map(|micros| Money::from_micros(micros).unwrap())
    }

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        // Whole seconds, milliseconds, microseconds and nanoseconds: chrono writes a fraction
        // of 0, 3, 6 or 9 digits accordingly.
        (0i64..4_102_444_800, prop_oneof![Just(0u32), 0..1_000u32, 0..1_000_000u32, 0..1_000_000_000u32]).prop_map(
            |(seconds, fraction)| {
                let nanoseconds = if fraction < 1_000 { fraction * 1_000_000 } else { fraction % 1_000_000_000 };
                Utc.timestamp_opt(seconds, nanoseconds).unwrap()
            },
        )
    }

    fn attribution(text: BoxedStrategy<String>) -> impl Strategy<Value = CallAttribution> {
        (text.clone(), text.clone(), proptest::option::of(text.clone()), proptest::option::of(text.clone()), text)
            .prop_map(|(credential_kind, credential_id, agent_id, agent_name, act_for)| CallAttribution {
                credential_kind,
                credential_id,
                agent_id,
                agent_name,
                act_for,
            })
    }

    fn call_event(text: BoxedStrategy<String>) -> impl Strategy<Value = Event> {
        let ids = (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(call, org)| (CallId::from_random(call), OrgId::from_random(org)));
        let authorized =
            (ids.clone(), attribution(text.clone()), text.clone(), money(), money(), money(), time(), time()).prop_map(
                |((call_id, org_id), attribution, model, input, output, hold, authorized_at, hold_expires_at)| {
                    Event::CallAuthorized(CallAuthorized {
                        call_id,
                        org_id,
                        attribution,
                        model,
                        price: Price { input_per_million: input, output_per_million: output },
                        hold,
                        authorized_at,
                        hold_expires_at,
                    })
                },
            );
        let usage = (
            ids,
            attribution(text.clone()),
            (text.clone(), text.clone(), text),
            (any::<u64>(), prop_oneof![Just(0u64), 0..100_000u64]),
            (money(), money(), money()),
            time(),
        )
            .prop_map(
                |(
                    (call_id, org_id),
                    attribution,
                    (model, status, request_hash),
                    (input_tokens, output_tokens),
                    (cost, hold_released, balance_after),
                    settled_at,
                )| {
                    Event::UsageRecorded(UsageRecorded {
                        call_id,
                        org_id,
                        attribution,
                        model,
                        input_tokens,
                        output_tokens,
                        status,
                        cost,
                        hold_released,
                        balance_after,
                        request_hash,
                        settled_at,
                        usage_source: None,
                    })
                },
            );
        prop_oneof![authorized, usage]
    }

    #[test]
    fn a_proxied_settlement_keeps_its_usage_source_through_the_serde_path() {
        let payload = r#"{"call_id":"call_3uQ1NtqHd5a698737sFrM7","org_id":"org_0358zaprdx37W8vExUbqvv","attribution":{"credential_kind":"api_key","credential_id":"key_0358zaprhBZoRC0gPLUUQa","agent_id":null,"agent_name":null,"act_for":"org_0358zaprdx37W8vExUbqvv"},"model":"m","input_tokens":1,"output_tokens":2,"status":"succeeded","cost":{"currency":"inr","amount":"0.10"},"hold_released":{"currency":"inr","amount":"1.00"},"balance_after":{"currency":"inr","amount":"1.90"},"request_hash":"ab","settled_at":"2026-11-23T04:37:22.246950Z","usage_source":"estimated"}"#;
        assert_eq!(usage_recorded(payload), None, "the direct reader leaves the new field to serde");
        let Ok(Event::UsageRecorded(recorded)) = Event::decode("UsageRecorded", 1, payload.as_bytes()) else {
            panic!("a proxied settlement decodes")
        };
        assert_eq!(recorded.usage_source, Some(crate::billing::UsageSource::Estimated));
        assert_eq!(Event::UsageRecorded(recorded).payload_bytes(), payload.as_bytes(), "and re-encodes to its bytes");
    }

    fn direct(event_type: &str, payload: &str) -> Option<Event> {
        match event_type {
            "CallAuthorized" => call_authorized(payload).map(Event::CallAuthorized),
            "UsageRecorded" => usage_recorded(payload).map(Event::UsageRecorded),
            _ => unreachable!(),
        }
    }

    /// serde alone, as `Event::decode` decoded before the direct reader.
    fn serde_decode(event_type: &str, payload: &str) -> Result<Event, serde_json::Error> {
        match event_type {
            "CallAuthorized" => serde_json::from_str(payload).map(Event::CallAuthorized),
            "UsageRecorded" => serde_json::from_str(payload).map(Event::UsageRecorded),
            _ => unreachable!(),
        }
    }

    #[test]
    fn reads_a_gateways_payloads_directly() {
        let payload = r#"{"call_id":"call_3uQ1NtqHd5a698737sFrM7","org_id":"org_0358zaprdx37W8vExUbqvv","attribution":{"credential_kind":"api_key","credential_id":"key_0358zaprhBZoRC0gPLUUQa","agent_id":null,"agent_name":null,"act_for":"org_0358zaprdx37W8vExUbqvv"},"model":"bench-model","input_tokens":1327,"output_tokens":477,"status":"succeeded","cost":{"currency":"inr","amount":"0.008088"},"hold_released":{"currency":"inr","amount":"1.00"},"balance_after":{"currency":"inr","amount":"999999.991912"},"request_hash":"bbf8cc53a5e37d6af76d32029e1be958","settled_at":"2026-12-04T18:50:15.599654Z"}"#;
        let read = usage_recorded(payload).unwrap();
        assert_eq!(Event::UsageRecorded(read.clone()), serde_decode("UsageRecorded", payload).unwrap());
        assert_eq!(read.cost.micros(), 8_088);
        assert_eq!(read.input_tokens, 1327);
        // The same payload with a space after a colon is left to serde, which reads it alike.
        let spaced = payload.replacen("\"model\":", "\"model\": ", 1);
        assert!(usage_recorded(&spaced).is_none());
        assert_eq!(Event::decode("UsageRecorded", 1, spaced.as_bytes()).unwrap(), Event::UsageRecorded(read));
        // A leading zero serde refuses is not read either; decode still refuses it.
        let zero = payload.replacen(":1327,", ":01327,", 1);
        assert!(usage_recorded(&zero).is_none());
        assert!(Event::decode("UsageRecorded", 1, zero.as_bytes()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn finds_where_a_plain_string_ends(bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(prop::sample::select(b"a\"\\\x00\x1f\x20\x7f\x80\xffz".to_vec()), 0..40),
        ]) {
            let expected = bytes.iter().position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20);
            prop_assert_eq!(plain_length(&bytes), expected);
        }

        /// Whatever bahi encodes, the direct reader reads back exactly, or (only for text
        /// that needs escapes) leaves to serde.
        #[test]
        fn reads_back_what_bahi_encodes(event in call_event(any_text())) {
            let payload = String::from_utf8(event.payload_bytes()).unwrap();
            let event_type = event.event_type();
            prop_assert_eq!(&serde_decode(event_type, &payload).unwrap(), &event);
            if let Some(read) = direct(event_type, &payload) {
                prop_assert_eq!(read, event.clone());
            }
            prop_assert_eq!(Event::decode(event_type, 1, payload.as_bytes()).unwrap(), event);
        }

        #[test]
        fn never_gives_up_on_plain_text(event in call_event(plain_text())) {
            let payload = String::from_utf8(event.payload_bytes()).unwrap();
            prop_assert_eq!(direct(event.event_type(), &payload), Some(event));
        }

        /// On a payload changed anywhere, whatever the direct reader accepts serde accepts
        /// as the same value; so `Event::decode` accepts and refuses what it did before.
        #[test]
        fn accepts_only_what_serde_reads_alike(
            event in call_event(plain_text()),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..4u8, prop::sample::select(
                b"{}[]\":,.0123456789-+eE \\nulltrue_aZ\x01".to_vec()
            )), 1..4),
        ) {
            let mut bytes = event.payload_bytes();
            for (at, kind, byte) in edits {
                let index = at.index(bytes.len() + 1);
                match kind {
                    0 => bytes.insert(index, byte),
                    1 if index < bytes.len() => { bytes.remove(index); }
                    2 if index < bytes.len() => bytes[index] = byte,
                    // Bytes after the end: serde refuses all but whitespace.
                    _ => bytes.push(byte),
                }
            }
            let Ok(payload) = String::from_utf8(bytes) else { return Ok(()) };
            if let Some(read) = direct(event.event_type(), &payload) {
                prop_assert_eq!(serde_decode(event.event_type(), &payload).ok(), Some(read));
            }
        }
    }
}
