//! The embedded issuer's ES256 signing key.
//!
//! `p256` turns caller-supplied random bytes into a key and gives its JWK coordinates;
//! signing goes through jsonwebtoken's aws-lc-rs backend (docs/design.md, "Credentials").

use std::fmt;

use bahi_domain::claims::{AgentClaims, ClaimsError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, SecretDocument};

use super::jwk::Jwk;
use super::seal::{SealError, seal, unseal};

/// Why a signing key could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// About one draw in 2^32: the bytes are zero or not below the P-256 group order.
    #[error(
        "the random bytes are not a valid P-256 private key (zero or not below the group order); \
         draw new bytes and retry"
    )]
    InvalidScalar,
    #[error("the private key is not a PKCS#8 DER encoded P-256 key")]
    InvalidPkcs8,
    #[error("could not encode the private key as PKCS#8")]
    Encoding,
    #[error("could not unseal the private key: {0}")]
    Unseal(#[from] SealError),
    #[error("the unsealed private key has kid {actual:?}, not the expected {expected:?}")]
    KeyIdMismatch { expected: String, actual: String },
}

/// Why a token could not be signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("refusing to sign malformed claims: {0}")]
    Claims(#[from] ClaimsError),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A P-256 private key with its RFC 7638 thumbprint as `kid`.
///
/// `Debug` shows the kid only; the private key is wiped from memory on drop (both the
/// PKCS#8 document and jsonwebtoken's copy zeroize themselves).
pub struct SigningKey {
    kid: String,
    private_pkcs8: SecretDocument,
    encoding_key: EncodingKey,
    public_jwk: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Makes a key from 32 random bytes drawn by the caller (the domain takes no
    /// randomness of its own, and tests need determinism). On
    /// [`KeyError::InvalidScalar`] draw again.
    pub fn from_random_bytes(random_bytes: [u8; 32]) -> Result<SigningKey, KeyError> {
        let random_bytes = Zeroizing::new(random_bytes);
        let secret = p256::SecretKey::from_slice(random_bytes.as_slice()).map_err(|_| KeyError::InvalidScalar)?;
        SigningKey::from_secret(&secret)
    }

    /// Loads a key from its PKCS#8 DER form, e.g. as returned by [`unseal`].
    pub fn from_pkcs8_der(private_pkcs8: &[u8]) -> Result<SigningKey, KeyError> {
        let secret = p256::SecretKey::from_pkcs8_der(private_pkcs8).map_err(|_| KeyError::InvalidPkcs8)?;
        SigningKey::from_secret(&secret)
    }

    /// Loads a key sealed with [`SigningKey::seal`], checking it is the key `kid` names.
    pub fn from_sealed(sealed: &[u8], key_encryption_key: &[u8; 32], kid: &str) -> Result<SigningKey, KeyError> {
        let private_pkcs8 = unseal(sealed, key_encryption_key, kid)?;
        let key = SigningKey::from_pkcs8_der(&private_pkcs8)?;
        // The kid is authenticated as associated data already; this guards against a
        // record that sealed one key under another key's kid.
        if key.kid != kid {
            return Err(KeyError::KeyIdMismatch { expected: kid.to_owned(), actual: key.kid });
        }
        Ok(key)
    }

    fn from_secret(secret: &p256::SecretKey) -> Result<SigningKey, KeyError> {
        // Re-encoding gives one canonical PKCS#8 form whatever the input looked like.
        let private_pkcs8 = secret.to_pkcs8_der().map_err(|_| KeyError::Encoding)?;
        let anonymous = Jwk::from_public_key(&secret.public_key(), None);
        let kid = anonymous.thumbprint();
        let public_jwk = Jwk { kid: Some(kid.clone()), ..anonymous };
        let encoding_key = EncodingKey::from_ec_der(private_pkcs8.as_bytes());
        Ok(SigningKey { kid, private_pkcs8, encoding_key, public_jwk })
    }

    /// The RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as published in `/.well-known/jwks.json`: `kty`, `crv`, `x`, `y`,
    /// `kid`, `alg: ES256`, `use: sig`. Never `d`.
    pub fn public_jwk(&self) -> Jwk {
        self.public_jwk.clone()
    }

    /// The private key in PKCS#8 DER. Only for sealing or a key file: never log it.
    pub fn private_pkcs8_der(&self) -> &[u8] {
        self.private_pkcs8.as_bytes()
    }

    /// Encrypts the private key for storage in the event log (see [`seal`]).
    pub fn seal(&self, key_encryption_key: &[u8; 32], nonce: [u8; 12]) -> Result<Vec<u8>, SealError> {
        seal(self.private_pkcs8.as_bytes(), key_encryption_key, nonce, &self.kid)
    }

    /// Signs the claims as a compact JWS with header `{"typ":"JWT","alg":"ES256","kid":..}`.
    /// Claims that break the rules of docs/api.md are refused, so a minting bug shows up
    /// here rather than as tokens every verifier refuses.
    pub fn sign(&self, claims: &AgentClaims) -> Result<String, SignError> {
        claims.check_shape()?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding_key).map_err(|error| SignError::Signing(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bahi_domain::claims::AgentMode;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn claims() -> AgentClaims {
        AgentClaims {
            iss: "https://bahi.test".into(),
            aud: "bahi".into(),
            sub: "agt_1".into(),
            org: "org_1".into(),
            act_for: "usr_1".into(),
            mode: AgentMode::Delegated,
            scope: "inference".into(),
            iat: 1_000,
            nbf: 1_000,
            exp: 1_600,
            jti: "tok_1".into(),
        }
    }

    #[test]
    fn invalid_scalars_are_an_error_not_a_panic() {
        assert_eq!(SigningKey::from_random_bytes([0; 32]).unwrap_err(), KeyError::InvalidScalar);
        // 0xff..ff is above the P-256 group order.
        assert_eq!(SigningKey::from_random_bytes([0xff; 32]).unwrap_err(), KeyError::InvalidScalar);
        assert!(SigningKey::from_random_bytes([1; 32]).is_ok());
    }

    #[test]
    fn kid_is_the_thumbprint_and_the_jwk_is_public_only() {
        let key = SigningKey::from_random_bytes([1; 32]).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(key.kid(), jwk.thumbprint());
        assert_eq!(jwk.kid.as_deref(), Some(key.kid()));
        let json = serde_json::to_value(&jwk).unwrap();
        assert!(json.get("d").is_none());
        assert_eq!(json["alg"], "ES256");
        // Same bytes, same key, same kid; different bytes, different kid.
        assert_eq!(SigningKey::from_random_bytes([1; 32]).unwrap().kid(), key.kid());
        assert_ne!(SigningKey::from_random_bytes([2; 32]).unwrap().kid(), key.kid());
        assert_eq!(format!("{key:?}"), format!("SigningKey {{ kid: {:?}, .. }}", key.kid()));
    }

    #[test]
    fn header_names_alg_typ_and_kid() {
        let key = SigningKey::from_random_bytes([3; 32]).unwrap();
        let token = key.sign(&claims()).unwrap();
        let header_segment = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_segment).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": key.kid()}));
    }

    #[test]
    fn refuses_to_sign_malformed_claims() {
        let key = SigningKey::from_random_bytes([3; 32]).unwrap();
        let mut bad = claims();
        bad.jti = "123".into();
        assert!(matches!(key.sign(&bad), Err(SignError::Claims(_))));
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let key = SigningKey::from_random_bytes([4; 32]).unwrap();
        let again = SigningKey::from_pkcs8_der(key.private_pkcs8_der()).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(SigningKey::from_pkcs8_der(b"not a key").unwrap_err(), KeyError::InvalidPkcs8);
    }

    #[test]
    fn sealed_key_reopens_only_with_its_key_encryption_key_and_kid() {
        let key = SigningKey::from_random_bytes([5; 32]).unwrap();
        let key_encryption_key = [9; 32];
        let sealed = key.seal(&key_encryption_key, [1; 12]).unwrap();
        let reopened = SigningKey::from_sealed(&sealed, &key_encryption_key, key.kid()).unwrap();
        assert_eq!(reopened.kid(), key.kid());
        assert_eq!(reopened.private_pkcs8_der(), key.private_pkcs8_der());
        assert_eq!(
            SigningKey::from_sealed(&sealed, &[8; 32], key.kid()).unwrap_err(),
            KeyError::Unseal(SealError::Open)
        );
        let other = SigningKey::from_random_bytes([6; 32]).unwrap();
        assert_eq!(
            SigningKey::from_sealed(&sealed, &key_encryption_key, other.kid()).unwrap_err(),
            KeyError::Unseal(SealError::Open)
        );
        // A key sealed under a kid that is not its own is caught after opening.
        let mislabelled = seal(key.private_pkcs8_der(), &key_encryption_key, [2; 12], other.kid()).unwrap();
        assert!(matches!(
            SigningKey::from_sealed(&mislabelled, &key_encryption_key, other.kid()),
            Err(KeyError::KeyIdMismatch { .. })
        ));
    }
}
