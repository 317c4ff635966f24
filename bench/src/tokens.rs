//! Throughput of the agent-token hot paths, for `bahi-bench credentials`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use bahi_domain::claims::{AgentClaims, AgentMode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use bahi::agent_token::JwkSet;
use bahi::agent_token::SigningKey;
use bahi::agent_token::{IssuerKind, TrustedIssuer, Verifier};

/// Operations between clock reads, so reading the clock does not weigh on the figures.
const BATCH: u64 = 64;

/// Fixed instant the benchmark tokens are valid at; verification takes time as input.
const NOW_EPOCH_SECONDS: i64 = 1_700_000_000;

const ISSUER: &str = "https://bahi.bench";

/// Measures, on the calling thread, for about `duration` each, and returns
/// `(name, operations per second)`:
/// - `aws_lc_es256_verify_baseline`: bare aws-lc-rs ECDSA P-256 SHA-256 verification
///   of a fixed token-sized message, the floor every other verify figure sits above;
/// - `token_verify_uncached`: full verification of distinct tokens (parse, issuer and
///   key lookup, signature, claim checks, cache insert); minting them is not timed;
/// - `token_verify_cached`: verification of a token already in the cache;
/// - `token_mint`: signing a token with a fresh `jti`.
pub fn bench(duration: Duration) -> Vec<(String, f64)> {
    // Fixed bytes form a valid scalar, so these cannot fail; a failure is a bug here.
    let signing_key = SigningKey::from_random_bytes([0x5a; 32]).expect("fixed benchmark key bytes are a valid scalar");
    let verifier = Verifier::new();
    verifier
        .upsert_issuer(TrustedIssuer {
            registration_id: "embedded".to_owned(),
            issuer: ISSUER.to_owned(),
            audience: Some("bahi".to_owned()),
            kind: IssuerKind::Embedded,
            keys: JwkSet { keys: vec![signing_key.public_jwk()] },
        })
        .expect("the benchmark key set is valid");
    let mint = |serial: u64| signing_key.sign(&claims(serial)).expect("benchmark claims are well formed");

    let sample = mint(0);
    let (signed_part, signature_segment) = sample.rsplit_once('.').expect("a minted token has a signature segment");
    let signature = URL_SAFE_NO_PAD.decode(signature_segment).expect("minted signatures are base64url");
    let public_point = signing_key.public_jwk().validate().expect("own public key is valid");
    let baseline = timed_rate(duration, || {
        let started = Instant::now();
        let verified = (0..BATCH)
            .filter(|_| {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public_point)
                    .verify(black_box(signed_part.as_bytes()), &signature)
                    .is_ok()
            })
            .count();
        (verified as u64, started.elapsed())
    });

    let mut serial = 1_u64;
    let uncached = timed_rate(duration, || {
        let tokens: Vec<String> = (0..BATCH)
            .map(|_| {
                serial += 1;
                mint(serial)
            })
            .collect();
        let started = Instant::now();
        // Only successes count, so a broken verifier shows as a zero rate.
        let verified = tokens.iter().filter(|token| verifier.verify(token, NOW_EPOCH_SECONDS).is_ok()).count();
        (verified as u64, started.elapsed())
    });

    let cached_token = mint(0);
    black_box(verifier.verify(&cached_token, NOW_EPOCH_SECONDS).is_ok());
    let cached = timed_rate(duration, || {
        let started = Instant::now();
        let verified =
            (0..BATCH).filter(|_| verifier.verify(black_box(&cached_token), NOW_EPOCH_SECONDS).is_ok()).count();
        (verified as u64, started.elapsed())
    });

    let minting = timed_rate(duration, || {
        let started = Instant::now();
        for _ in 0..BATCH {
            serial += 1;
            black_box(mint(serial));
        }
        (BATCH, started.elapsed())
    });

    vec![
        ("aws_lc_es256_verify_baseline".to_owned(), baseline),
        ("token_verify_uncached".to_owned(), uncached),
        ("token_verify_cached".to_owned(), cached),
        ("token_mint".to_owned(), minting),
    ]
}

fn claims(serial: u64) -> AgentClaims {
    AgentClaims {
        iss: ISSUER.to_owned(),
        aud: "bahi".to_owned(),
        sub: "agt_bench".to_owned(),
        org: "org_bench".to_owned(),
        act_for: "usr_bench".to_owned(),
        mode: AgentMode::Delegated,
        scope: "inference audit:read".to_owned(),
        iat: NOW_EPOCH_SECONDS,
        nbf: NOW_EPOCH_SECONDS,
        exp: NOW_EPOCH_SECONDS + 600,
        jti: format!("tok_bench{serial:016}"),
    }
}

/// Runs `batch` (which returns operations done and the time they took, excluding any
/// untimed setup) until the timed total reaches `duration`, at least once.
#[allow(clippy::float_arithmetic)] // a rate for humans to read, not money
fn timed_rate(duration: Duration, mut batch: impl FnMut() -> (u64, Duration)) -> f64 {
    let mut operations = 0_u64;
    let mut elapsed = Duration::ZERO;
    loop {
        let (done, took) = batch();
        operations += done;
        elapsed += took;
        if elapsed >= duration {
            break;
        }
    }
    // Guards the division on a clock too coarse to see one batch.
    operations as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rate_is_positive() {
        let rates = bench(Duration::from_millis(5));
        let names: Vec<&str> = rates.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["aws_lc_es256_verify_baseline", "token_verify_uncached", "token_verify_cached", "token_mint"]
        );
        for (name, rate) in rates {
            assert!(rate > 0.0, "{name}: {rate}");
        }
    }
}
