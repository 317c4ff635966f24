//! Prefixed identifiers (`org_…`, `key_…`). Parse, don't validate: an id value is proof that
//! its text has the right prefix and alphabet.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted id body; generated ids use 22 characters (128 random bits).
pub const MAX_ID_BODY_LENGTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} id: expected \"{prefix}\" followed by 1 to 64 letters and digits")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Base62 of a big-endian byte string, fixed width for a given input length so that every
/// id or key of one kind has the same length.
pub fn base62(bytes: &[u8]) -> String {
    // Width: ceil(bits / log2(62)); 62^width >= 256^len.
    let width = (bytes.len() * 8 * 1000).div_ceil(5954);
    if bytes.len() <= 16 {
        // Every id (16 random bytes) takes this path: one u128 instead of a byte-wise long
        // division per digit, which showed in the writer's profile (an event id per event).
        let mut number = bytes.iter().fold(0u128, |number, &byte| (number << 8) | u128::from(byte));
        let mut digits = vec![0u8; width];
        for digit in digits.iter_mut().rev() {
            *digit = BASE62[(number % 62) as usize];
            number /= 62;
        }
        return ascii_digits(digits);
    }
    long_base62(bytes, width)
}

/// 62^8, below 2^48: a remainder shifted left by a byte still fits in a u64.
const BASE62_POWER_8: u64 = 218_340_105_584_896;

fn long_base62(bytes: &[u8], width: usize) -> String {
    // Long division of the big-endian number by 62^8 per pass, eight digits from each
    // remainder: a key's 32 bytes take 6 passes instead of 43 divisions by 62 per byte.
    let mut number: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while digits.len() < width {
        let mut remainder: u64 = 0;
        for byte in number.iter_mut() {
            let accumulator = (remainder << 8) | u64::from(*byte);
            *byte = (accumulator / BASE62_POWER_8) as u8;
            remainder = accumulator % BASE62_POWER_8;
        }
        for _ in 0..8 {
            if digits.len() == width {
                break;
            }
            digits.push(BASE62[(remainder % 62) as usize]);
            remainder /= 62;
        }
    }
    digits.reverse();
    ascii_digits(digits)
}

/// Base-62 digits as text: they are ASCII by construction.
fn ascii_digits(digits: Vec<u8>) -> String {
    String::from_utf8(digits).unwrap_or_else(|error| unreachable!("base-62 digits are ASCII: {error}"))
}

/// The 16 bytes of a new id: milliseconds since the Unix epoch (48 bits, big-endian), then 80
/// random bits, as in UUIDv7. Base62 keeps the order of fixed-width big-endian numbers, so
/// ids sort by creation time, and every index keyed by an id (the SQLite `streams` table, the
/// PostgreSQL stream index, the read models) grows at its end instead of dirtying a random
/// page per new id. 80 random bits per millisecond keep ids unguessable; ids are names, not
/// secrets (keys and tokens carry their own 256 random bits).
pub fn time_ordered_bytes(unix_millis: i64, random: [u8; 10]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_millis.clamp(0, (1 << 48) - 1).to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random);
    bytes
}

pub fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Longest accepted body of a call id. New call ids are plain ids; older logs hold sealed
/// ones, which carried the call's binding, and those stay readable.
pub const MAX_CALL_ID_BODY_LENGTH: usize = 1_024;

/// A plain id body, or the unpadded base64url body of a sealed call id.
fn is_call_id_body(body: &str) -> bool {
    if body.len() <= MAX_ID_BODY_LENGTH {
        is_base62(body)
    } else {
        body.len() <= MAX_CALL_ID_BODY_LENGTH
            && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

fn is_id_body(body: &str) -> bool {
    body.len() <= MAX_ID_BODY_LENGTH && is_base62(body)
}

/// A string from a deserializer, borrowed from the input where the input allows it (a JSON
/// string without escapes), so that reading text that is parsed and copied anyway does not
/// allocate a `String` first.
pub(crate) fn borrowed_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Cow<'de, str>, D::Error> {
    deserializer.deserialize_str(TextVisitor)
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(text))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(text))
    }
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        define_id!($(#[$doc])* $name, $prefix, $kind, is_id_body);
    };
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal, $valid_body:path) => {
        $(#[$doc])*
        // Shared text: an id is copied into many places of the in-memory state (a call's id
        // keys its map entry, its hold expiry and its retention), and a clone is a reference
        // count, not an allocation.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn parse(text: &str) -> Result<$name, IdError> {
                let error = IdError { kind: $kind, prefix: $prefix };
                let body = text.strip_prefix($prefix).ok_or(error.clone())?;
                if body.is_empty() || !$valid_body(body) {
                    return Err(error);
                }
                Ok($name(Arc::from(text)))
            }

            /// A new id from 16 caller-supplied random bytes (the domain draws no randomness).
            pub fn from_random(random: [u8; 16]) -> $name {
                $name(Arc::from(format!("{}{}", $prefix, base62(&random))))
            }

            /// An id from text the caller built itself in this id's alphabet (e.g. a sealed
            /// call id); checked like any parsed id.
            pub fn from_body(body: &str) -> Result<$name, IdError> {
                $name::parse(&format!("{}{}", $prefix, body))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Sound because the derived `Hash`, `Eq` and `Ord` are those of the text: the fold
        // looks an id up by the text an event carries (an attribution's `agent_id`) without
        // parsing it into an id of its own first, which allocated on every usage event.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = borrowed_text(deserializer)?;
                $name::parse(&text).map_err(de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<$name, IdError> {
                $name::parse(text)
            }
        }
    };
}

define_id!(/// An organisation: the payer.
    OrgId, "org_", "org");
define_id!(/// A human member of an org.
    UserId, "usr_", "user");
define_id!(/// A static API key (the id, never the secret).
    ApiKeyId, "key_", "api key");
define_id!(/// An agent identity.
    AgentId, "agt_", "agent");
define_id!(/// One minted agent token (`jti`).
    TokenId, "tok_", "token");
define_id!(/// A registered external token issuer.
    IssuerId, "iss_", "issuer");
define_id!(/// One authorized inference call; older logs also hold longer, sealed ones.
    CallId, "call_", "call", is_call_id_body);
define_id!(/// One credit top-up.
    TopupId, "top_", "top-up");
define_id!(/// One event's own id.
    EventId, "evt_", "event");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_have_fixed_width() {
        let id = OrgId::from_random([255; 16]);
        assert_eq!(id.as_str().len(), 4 + 22);
        assert_eq!(OrgId::parse(id.as_str()).unwrap(), id);
        assert_eq!(OrgId::from_random([0; 16]).as_str(), "org_0000000000000000000000");
    }

    #[test]
    fn the_u128_path_agrees_with_long_division() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for length in 0..=16 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..length)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let width = (bytes.len() * 8 * 1000).div_ceil(5954);
                assert_eq!(base62(&bytes), long_base62(&bytes, width), "{bytes:?}");
            }
        }
        assert_eq!(base62(&[255; 16]), long_base62(&[255; 16], 22));
    }

    #[test]
    fn a_map_keyed_by_ids_finds_them_by_their_text() {
        let mut map = std::collections::HashMap::new();
        let id = AgentId::from_random([7; 16]);
        map.insert(id.clone(), 1);
        assert_eq!(map.get(id.as_str()), Some(&1));
        assert_eq!(map.get("agt_0000000000000000000000"), None);
        let mut ordered = std::collections::BTreeMap::new();
        ordered.insert(id.clone(), 2);
        assert_eq!(ordered.get(id.as_str()), Some(&2));
    }

    #[test]
    fn time_ordered_ids_sort_by_time() {
        let earlier = OrgId::from_random(time_ordered_bytes(1_795_000_000_000, [255; 10]));
        let later = OrgId::from_random(time_ordered_bytes(1_795_000_000_001, [0; 10]));
        assert!(earlier < later);
        assert!(earlier.as_str() < later.as_str());
        assert_eq!(&time_ordered_bytes(0x0102_0304_0506, [7; 10])[..7], &[1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in ["", "org_", "org", "key_abc", "org_abc-def", "org_abc def", "ORG_abc"] {
            assert!(OrgId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(OrgId::parse(&format!("org_{}", "a".repeat(65))).is_err());
    }

    /// The digit-by-digit long division `long_base62` replaced.
    fn base62_by_single_digits(bytes: &[u8], width: usize) -> String {
        let mut number: Vec<u8> = bytes.to_vec();
        let mut digits = Vec::with_capacity(width);
        for _ in 0..width {
            let mut remainder: u32 = 0;
            for byte in number.iter_mut() {
                let accumulator = (remainder << 8) | u32::from(*byte);
                *byte = (accumulator / 62) as u8;
                remainder = accumulator % 62;
            }
            digits.push(BASE62[remainder as usize]);
        }
        digits.reverse();
        String::from_utf8(digits).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn long_division_by_eight_digits_agrees_with_one_digit_at_a_time(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..=64)
        ) {
            let width = (bytes.len() * 8 * 1000).div_ceil(5954);
            proptest::prop_assert_eq!(long_base62(&bytes, width), base62_by_single_digits(&bytes, width));
        }
    }

    #[test]
    fn base62_width_covers_all_values() {
        for bytes in [[255u8; 32], [0; 32]] {
            assert_eq!(base62(&bytes), base62_by_single_digits(&bytes, 43));
        }
        assert_eq!(base62(&[255; 32]).len(), 43);
        assert_eq!(base62(&[0; 32]).len(), 43);
        assert_eq!(base62(&[0, 61]), "00z");
    }
}
