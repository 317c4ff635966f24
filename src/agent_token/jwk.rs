//! Public EC P-256 JSON Web Keys (RFC 7517) and key sets, as published at
//! `/.well-known/jwks.json` and as supplied inline by users registering an issuer.
//!
//! Only public parts exist in these types: there is no `d` field, so a private key can
//! never be serialized through them. Input from users goes through
//! [`JwkSet::from_untrusted_json`] / [`JwkSet::from_untrusted_value`], which refuse
//! anything that is not an ES256 public key instead of silently skipping it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Most keys one issuer may hold. Real issuers publish two or three (current, next,
/// retiring); the cap bounds the work and memory a registration can cost.
pub const MAX_KEYS_PER_SET: usize = 32;

/// Longest accepted `kid`. Thumbprint kids are 43 characters; 128 leaves room for
/// other issuers' naming without letting a key id become a storage sink.
pub const MAX_KEY_ID_CHARS: usize = 128;

/// Byte length of one P-256 coordinate.
const COORDINATE_BYTES: usize = 32;

/// One public EC P-256 key. Field names are those of RFC 7517/7518.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Jwk {
    /// Always `EC`.
    pub kty: String,
    /// Always `P-256`.
    pub crv: String,
    /// base64url (no padding) of the 32-byte big-endian x coordinate.
    pub x: String,
    /// base64url (no padding) of the 32-byte big-endian y coordinate.
    pub y: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

/// A JWK set: `{"keys": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Why a JWK or JWK set was refused. Messages are written for the user who supplied it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("the JWK set is not valid JSON")]
    NotJson,
    #[error("the JWK set must be a JSON object with a `keys` array")]
    NoKeysArray,
    #[error("the JWK set has no keys; supply at least one public key")]
    Empty,
    #[error("the JWK set has {count} keys; at most {MAX_KEYS_PER_SET} are accepted")]
    TooManyKeys { count: usize },
    #[error("keys[{index}]: {reason}")]
    InvalidKey { index: usize, reason: String },
    #[error("keys[{index}]: kid {kid:?} is used by another key of the set")]
    DuplicateKeyId { index: usize, kid: String },
}

impl Jwk {
    /// The public key of a P-256 point, with `alg: ES256` and `use: sig` set so that
    /// consumers of our JWKS do not have to guess.
    pub fn from_public_key(public_key: &p256::PublicKey, kid: Option<String>) -> Jwk {
        let point = public_key.to_encoded_point(false);
        // An uncompressed encoding of a valid public key always carries both
        // coordinates; the identity point cannot be a `PublicKey`.
        let x = point.x().map(|x| URL_SAFE_NO_PAD.encode(x)).unwrap_or_default();
        let y = point.y().map(|y| URL_SAFE_NO_PAD.encode(y)).unwrap_or_default();
        Jwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x,
            y,
            kid,
            alg: Some("ES256".to_owned()),
            key_use: Some("sig".to_owned()),
        }
    }

    /// RFC 7638 thumbprint: base64url of SHA-256 over the required members in
    /// lexicographic order with no whitespace. Used as the `kid` of bahi's own keys, so
    /// a key id is derived from the key and can never name two different keys.
    pub fn thumbprint(&self) -> String {
        // The members are fixed ASCII or base64url, so no JSON escaping is needed.
        let canonical = format!(r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#, self.crv, self.kty, self.x, self.y);
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// Checks that this is an ES256 public key whose point lies on P-256 and returns the
    /// point in uncompressed SEC1 form (`04 || x || y`). The reason is a sentence for
    /// the user.
    pub fn validate(&self) -> Result<[u8; 65], String> {
        if self.kty != "EC" {
            return Err(format!("kty must be \"EC\" (only ES256 keys are accepted), found {}", quoted(&self.kty)));
        }
        if self.crv != "P-256" {
            return Err(format!("crv must be \"P-256\" (only ES256 keys are accepted), found {}", quoted(&self.crv)));
        }
        if let Some(alg) = &self.alg
            && alg != "ES256"
        {
            return Err(format!("alg must be \"ES256\" when present, found {}", quoted(alg)));
        }
        if let Some(key_use) = &self.key_use
            && key_use != "sig"
        {
            return Err(format!("use must be \"sig\" when present, found {}", quoted(key_use)));
        }
        if let Some(kid) = &self.kid
            && (kid.is_empty() || kid.chars().count() > MAX_KEY_ID_CHARS)
        {
            return Err(format!("kid must be 1 to {MAX_KEY_ID_CHARS} characters"));
        }
        let mut point = [0_u8; 65];
        point[0] = 0x04;
        decode_coordinate("x", &self.x, &mut point[1..33])?;
        decode_coordinate("y", &self.y, &mut point[33..65])?;
        if p256::PublicKey::from_sec1_bytes(&point).is_err() {
            return Err("x and y are not a point on the P-256 curve".to_owned());
        }
        Ok(point)
    }
}

impl JwkSet {
    /// Parses a JWK set supplied by a user (text form).
    pub fn from_untrusted_json(text: &str) -> Result<JwkSet, JwkError> {
        let value: Value = serde_json::from_str(text).map_err(|_| JwkError::NotJson)?;
        JwkSet::from_untrusted_value(&value)
    }

    /// Parses a JWK set supplied by a user, e.g. the `jwks` member of a request body.
    /// Every key must be an ES256 public key with a unique `kid` (tokens name their key
    /// by `kid`, and a key without one could never be selected); private key material
    /// (`d`) is refused rather than dropped, because whoever pasted it has leaked it
    /// and should know.
    pub fn from_untrusted_value(value: &Value) -> Result<JwkSet, JwkError> {
        let keys = value
            .as_object()
            .and_then(|object| object.get("keys"))
            .and_then(Value::as_array)
            .ok_or(JwkError::NoKeysArray)?;
        if keys.is_empty() {
            return Err(JwkError::Empty);
        }
        if keys.len() > MAX_KEYS_PER_SET {
            return Err(JwkError::TooManyKeys { count: keys.len() });
        }
        let mut parsed = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let jwk = parse_untrusted_key(key).map_err(|reason| JwkError::InvalidKey { index, reason })?;
            parsed.push(jwk);
        }
        let set = JwkSet { keys: parsed };
        set.validate()?;
        Ok(set)
    }

    /// Checks every key (see [`Jwk::validate`]), that each has a unique `kid`, and the
    /// size cap. Applied to every set a verifier is given, whatever its origin.
    pub fn validate(&self) -> Result<(), JwkError> {
        if self.keys.is_empty() {
            return Err(JwkError::Empty);
        }
        if self.keys.len() > MAX_KEYS_PER_SET {
            return Err(JwkError::TooManyKeys { count: self.keys.len() });
        }
        for (index, key) in self.keys.iter().enumerate() {
            key.validate().map_err(|reason| JwkError::InvalidKey { index, reason })?;
            let Some(kid) = &key.kid else {
                return Err(JwkError::InvalidKey {
                    index,
                    reason: "kid is missing; tokens name their signing key by kid".to_owned(),
                });
            };
            if self.keys[..index].iter().any(|earlier| earlier.kid.as_deref() == Some(kid)) {
                return Err(JwkError::DuplicateKeyId { index, kid: kid.clone() });
            }
        }
        Ok(())
    }

    /// The key with this `kid`, if any.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|key| key.kid.as_deref() == Some(kid))
    }
}

fn parse_untrusted_key(key: &Value) -> Result<Jwk, String> {
    let Some(object) = key.as_object() else {
        return Err("each key must be a JSON object".to_owned());
    };
    // The private-key members of EC (d) and, for a clearer message, RSA and oct keys.
    for private_member in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        if object.contains_key(private_member) {
            return Err(format!(
                "contains private key material ({private_member}); supply only the public key, \
                 and treat the private key as leaked"
            ));
        }
    }
    let kty = required_string(object, "kty")?;
    if kty != "EC" {
        return Err(format!("kty must be \"EC\" (only ES256 keys are accepted), found {}", quoted(kty)));
    }
    Ok(Jwk {
        kty: kty.to_owned(),
        crv: required_string(object, "crv")?.to_owned(),
        x: required_string(object, "x")?.to_owned(),
        y: required_string(object, "y")?.to_owned(),
        kid: optional_string(object, "kid")?.map(str::to_owned),
        alg: optional_string(object, "alg")?.map(str::to_owned),
        key_use: optional_string(object, "use")?.map(str::to_owned),
    })
}

fn required_string<'a>(object: &'a Map<String, Value>, member: &str) -> Result<&'a str, String> {
    optional_string(object, member)?.ok_or_else(|| format!("{member} is missing"))
}

fn optional_string<'a>(object: &'a Map<String, Value>, member: &str) -> Result<Option<&'a str>, String> {
    match object.get(member) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("{member} must be a string")),
    }
}

fn decode_coordinate(member: &str, encoded: &str, into: &mut [u8]) -> Result<(), String> {
    let wrong = || format!("{member} must be base64url (no padding) of {COORDINATE_BYTES} bytes");
    // 32 bytes encode to 43 characters; checking first bounds the decoding work.
    if encoded.len() != 43 {
        return Err(wrong());
    }
    let decoded = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| wrong())?;
    if decoded.len() != into.len() {
        return Err(wrong());
    }
    into.copy_from_slice(&decoded);
    Ok(())
}

/// A user-supplied value for an error message: quoted, escaped, and cut short so an
/// error can never carry a large or control-character-laden payload.
fn quoted(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    if text.chars().count() <= MAX_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head:?}...")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn sample_key(seed: u8) -> Jwk {
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let jwk = Jwk::from_public_key(&secret.public_key(), None);
        let kid = jwk.thumbprint();
        Jwk { kid: Some(kid), ..jwk }
    }

    #[test]
    fn thumbprint_matches_rfc_7638_by_hand() {
        let key = sample_key(7);
        let canonical = format!("{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{}\",\"y\":\"{}\"}}", key.x, key.y);
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        assert_eq!(key.thumbprint(), expected);
        assert_eq!(key.thumbprint().len(), 43);
        // The thumbprint ignores optional members.
        let bare = Jwk { kid: None, alg: None, key_use: None, ..key.clone() };
        assert_eq!(bare.thumbprint(), key.thumbprint());
    }

    #[test]
    fn serializes_public_members_only_with_use_renamed() {
        let key = sample_key(3);
        let value = serde_json::to_value(JwkSet { keys: vec![key.clone()] }).unwrap();
        let member = &value["keys"][0];
        let mut names: Vec<&str> = member.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(member["use"], "sig");
        let back = JwkSet::from_untrusted_value(&value).unwrap();
        assert_eq!(back.keys, vec![key]);
    }

    #[test]
    fn refuses_non_ec_keys_with_a_clear_reason() {
        let rsa = json!({"keys": [{"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB"}]});
        let error = JwkSet::from_untrusted_value(&rsa).unwrap_err();
        assert_eq!(error.to_string(), "keys[0]: kty must be \"EC\" (only ES256 keys are accepted), found \"RSA\"");
        let okp = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "o"}]});
        assert!(matches!(JwkSet::from_untrusted_value(&okp), Err(JwkError::InvalidKey { index: 0, .. })));
    }

    #[test]
    fn refuses_other_curves_algorithms_and_uses() {
        let good = sample_key(5);
        let mut value = serde_json::to_value(&good).unwrap();
        value["crv"] = json!("P-384");
        let error = JwkSet::from_untrusted_value(&json!({"keys": [value]})).unwrap_err();
        assert!(error.to_string().contains("crv must be \"P-256\""), "{error}");

        let mut value = serde_json::to_value(&good).unwrap();
        value["alg"] = json!("ES384");
        let error = JwkSet::from_untrusted_value(&json!({"keys": [value]})).unwrap_err();
        assert!(error.to_string().contains("alg must be \"ES256\""), "{error}");

        let mut value = serde_json::to_value(&good).unwrap();
        value["use"] = json!("enc");
        let error = JwkSet::from_untrusted_value(&json!({"keys": [value]})).unwrap_err();
        assert!(error.to_string().contains("use must be \"sig\""), "{error}");
    }

    #[test]
    fn refuses_private_keys_instead_of_dropping_d() {
        let mut value = serde_json::to_value(sample_key(9)).unwrap();
        value["d"] = json!(URL_SAFE_NO_PAD.encode([9_u8; 32]));
        let error = JwkSet::from_untrusted_value(&json!({"keys": [value]})).unwrap_err();
        assert!(error.to_string().contains("private key material (d)"), "{error}");
    }

    #[test]
    fn refuses_points_off_the_curve_and_bad_coordinates() {
        let mut off_curve = sample_key(4);
        off_curve.y = URL_SAFE_NO_PAD.encode([1_u8; 32]);
        assert_eq!(off_curve.validate().unwrap_err(), "x and y are not a point on the P-256 curve");

        let mut short = sample_key(4);
        short.x = URL_SAFE_NO_PAD.encode([1_u8; 31]);
        assert!(short.validate().unwrap_err().starts_with("x must be base64url"));

        let mut padded = sample_key(4);
        padded.x.push('=');
        assert!(padded.validate().is_err());

        let mut not_base64 = sample_key(4);
        not_base64.y = "!".repeat(43);
        assert!(not_base64.validate().unwrap_err().starts_with("y must be base64url"));
    }

    #[test]
    fn refuses_missing_or_duplicate_kids_and_caps_the_set() {
        let mut nameless = serde_json::to_value(sample_key(2)).unwrap();
        nameless.as_object_mut().unwrap().remove("kid");
        let error = JwkSet::from_untrusted_value(&json!({"keys": [nameless]})).unwrap_err();
        assert!(error.to_string().contains("kid is missing"), "{error}");

        let first = sample_key(2);
        let second = Jwk { kid: first.kid.clone(), ..sample_key(3) };
        let duplicate = json!({"keys": [first, second]});
        assert!(matches!(JwkSet::from_untrusted_value(&duplicate), Err(JwkError::DuplicateKeyId { index: 1, .. })));

        let many: Vec<Jwk> = (1..=(MAX_KEYS_PER_SET as u8 + 1)).map(sample_key).collect();
        assert_eq!(
            JwkSet::from_untrusted_value(&json!({ "keys": many })),
            Err(JwkError::TooManyKeys { count: MAX_KEYS_PER_SET + 1 })
        );
        assert_eq!(JwkSet::from_untrusted_value(&json!({"keys": []})), Err(JwkError::Empty));
        assert_eq!(JwkSet::from_untrusted_value(&json!([])), Err(JwkError::NoKeysArray));
        assert_eq!(JwkSet::from_untrusted_json("{"), Err(JwkError::NotJson));
    }

    #[test]
    fn error_messages_cut_long_user_values() {
        let long = json!({"keys": [{"kty": "X".repeat(10_000)}]});
        let message = JwkSet::from_untrusted_value(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }
}
