//! Sealing of private signing keys, so the event log can carry them without ever holding
//! plain key material.
//!
//! AES-256-GCM (aws-lc-rs) under a 32-byte key-encryption key that lives outside the
//! database. The associated data binds the ciphertext to the key's `kid` and to this
//! format, so a sealed key cannot be replayed as another key's record.
//!
//! Sealed layout: `version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//! The nonce travels with the ciphertext so that unsealing needs only the key and kid.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use p256::elliptic_curve::zeroize::Zeroizing;

/// Bumped if the layout or the associated data ever change; old records stay readable
/// by dispatching on it.
const SEAL_FORMAT_VERSION: u8 = 1;

/// Separates these associated data from any other use of the same key-encryption key.
const ASSOCIATED_DATA_DOMAIN: &[u8] = b"bahi/agent-signing-key/v1\0";

/// The domain of a model's sealed upstream API key (bound to the model's name), so that
/// neither kind of sealed secret can be replayed as the other.
pub const UPSTREAM_KEY_DOMAIN: &[u8] = b"bahi/upstream-api-key/v1\0";

const TAG_BYTES: usize = 16;

/// Why sealing or unsealing failed. Unsealing cannot tell a wrong key from a wrong kid
/// from tampering, by design of authenticated encryption.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("could not encrypt the private key")]
    Encrypt,
    #[error("the sealed key is too short to be a sealed key")]
    TooShort,
    #[error("the sealed key has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("the sealed key does not open: wrong key-encryption key, wrong kid, or altered ciphertext")]
    Open,
}

/// Encrypts `private_pkcs8` under `key_encryption_key`, bound to `kid`. The nonce must
/// never repeat under one key-encryption key: pass 12 fresh random bytes.
pub fn seal(
    private_pkcs8: &[u8],
    key_encryption_key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    kid: &str,
) -> Result<Vec<u8>, SealError> {
    seal_in_domain(ASSOCIATED_DATA_DOMAIN, private_pkcs8, key_encryption_key, nonce, kid)
}

/// [`seal`] for another kind of secret: `domain` names the kind, `name` the one secret.
pub fn seal_in_domain(
    domain: &[u8],
    private_pkcs8: &[u8],
    key_encryption_key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    kid: &str,
) -> Result<Vec<u8>, SealError> {
    let key = aead_key(key_encryption_key)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + private_pkcs8.len() + TAG_BYTES);
    sealed.push(SEAL_FORMAT_VERSION);
    sealed.extend_from_slice(&nonce);
    // Encrypt in a separate buffer that is wiped on drop, since it holds plain key
    // material until the cipher has run. Room for the tag is reserved up front so that
    // appending it cannot reallocate and leave an unwiped copy of the key behind.
    let mut in_out = Zeroizing::new(Vec::with_capacity(private_pkcs8.len() + TAG_BYTES));
    in_out.extend_from_slice(private_pkcs8);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(associated_data(domain, SEAL_FORMAT_VERSION, kid)),
        &mut *in_out,
    )
    .map_err(|_| SealError::Encrypt)?;
    sealed.extend_from_slice(&in_out);
    Ok(sealed)
}

/// Decrypts what [`seal`] produced for the same `kid`. The plain key is wiped from
/// memory when the returned buffer drops.
pub fn unseal(sealed: &[u8], key_encryption_key: &[u8; 32], kid: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    unseal_in_domain(ASSOCIATED_DATA_DOMAIN, sealed, key_encryption_key, kid)
}

/// [`unseal`] of what [`seal_in_domain`] sealed in `domain`.
pub fn unseal_in_domain(
    domain: &[u8],
    sealed: &[u8],
    key_encryption_key: &[u8; 32],
    kid: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let Some((&version, rest)) = sealed.split_first() else {
        return Err(SealError::TooShort);
    };
    if version != SEAL_FORMAT_VERSION {
        return Err(SealError::UnknownVersion(version));
    }
    if rest.len() < NONCE_LEN + TAG_BYTES {
        return Err(SealError::TooShort);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::TooShort)?;
    let key = aead_key(key_encryption_key)?;
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let plain_length = key
        .open_in_place(nonce, Aad::from(associated_data(domain, version, kid)), &mut in_out)
        .map_err(|_| SealError::Open)?
        .len();
    in_out.truncate(plain_length);
    Ok(in_out)
}

fn aead_key(key_encryption_key: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    let unbound = UnboundKey::new(&AES_256_GCM, key_encryption_key).map_err(|_| SealError::Encrypt)?;
    Ok(LessSafeKey::new(unbound))
}

fn associated_data(domain: &[u8], version: u8, kid: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(domain.len() + 1 + kid.len());
    data.extend_from_slice(domain);
    data.push(version);
    data.extend_from_slice(kid.as_bytes());
    data
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KEY_ENCRYPTION_KEY: [u8; 32] = [0x42; 32];
    const NONCE: [u8; 12] = [7; 12];
    const SECRET: &[u8] = b"pretend this is a PKCS#8 document of a P-256 key";

    #[test]
    fn round_trip_and_no_plaintext_in_the_sealed_bytes() {
        let sealed = seal(SECRET, &KEY_ENCRYPTION_KEY, NONCE, "kid-1").unwrap();
        assert_eq!(sealed.len(), 1 + 12 + SECRET.len() + 16);
        assert!(!sealed.windows(8).any(|window| SECRET.windows(8).any(|part| part == window)));
        let opened = unseal(&sealed, &KEY_ENCRYPTION_KEY, "kid-1").unwrap();
        assert_eq!(opened.as_slice(), SECRET);
    }

    #[test]
    fn a_secret_sealed_in_one_domain_does_not_open_in_another() {
        let sealed = seal_in_domain(UPSTREAM_KEY_DOMAIN, SECRET, &KEY_ENCRYPTION_KEY, NONCE, "gpt-4o").unwrap();
        assert_eq!(unseal(&sealed, &KEY_ENCRYPTION_KEY, "gpt-4o"), Err(SealError::Open));
        let opened = unseal_in_domain(UPSTREAM_KEY_DOMAIN, &sealed, &KEY_ENCRYPTION_KEY, "gpt-4o").unwrap();
        assert_eq!(opened.as_slice(), SECRET);
    }

    #[test]
    fn wrong_key_encryption_key_fails() {
        let sealed = seal(SECRET, &KEY_ENCRYPTION_KEY, NONCE, "kid-1").unwrap();
        let mut other = KEY_ENCRYPTION_KEY;
        other[31] ^= 1;
        assert_eq!(unseal(&sealed, &other, "kid-1"), Err(SealError::Open));
    }

    #[test]
    fn wrong_kid_fails() {
        let sealed = seal(SECRET, &KEY_ENCRYPTION_KEY, NONCE, "kid-1").unwrap();
        assert_eq!(unseal(&sealed, &KEY_ENCRYPTION_KEY, "kid-2"), Err(SealError::Open));
    }

    #[test]
    fn every_tampered_byte_fails() {
        let sealed = seal(SECRET, &KEY_ENCRYPTION_KEY, NONCE, "kid-1").unwrap();
        // Flipping any byte after the version (nonce, ciphertext or tag) must be caught.
        for index in 1..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert_eq!(unseal(&tampered, &KEY_ENCRYPTION_KEY, "kid-1"), Err(SealError::Open), "byte {index}");
        }
        let mut other_version = sealed.clone();
        other_version[0] = 2;
        assert_eq!(unseal(&other_version, &KEY_ENCRYPTION_KEY, "kid-1"), Err(SealError::UnknownVersion(2)));
        let truncated = &sealed[..sealed.len() - 1];
        assert_eq!(unseal(truncated, &KEY_ENCRYPTION_KEY, "kid-1"), Err(SealError::Open));
        assert_eq!(unseal(&sealed[..20], &KEY_ENCRYPTION_KEY, "kid-1"), Err(SealError::TooShort));
        assert_eq!(unseal(&[], &KEY_ENCRYPTION_KEY, "kid-1"), Err(SealError::TooShort));
    }

    #[test]
    fn different_nonces_give_different_ciphertexts() {
        let first = seal(SECRET, &KEY_ENCRYPTION_KEY, NONCE, "kid-1").unwrap();
        let second = seal(SECRET, &KEY_ENCRYPTION_KEY, [8; 12], "kid-1").unwrap();
        assert_ne!(first[13..], second[13..]);
    }
}
