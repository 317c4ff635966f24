//! Cache of verified agent tokens, keyed by SHA-256 of the token text.
//!
//! A gateway sees the same token on every call an agent makes for minutes; the cache
//! turns all but the first into a hash and a map lookup. Entries live until the token's
//! `exp` (plus leeway). The verifier stamps each entry with its issuer registration's
//! generation and ignores entries whose registration has since changed, so the cache
//! never outlives an issuer revocation or key removal.
//!
//! Sharded so concurrent gateway threads rarely wait on one lock; bounded so a flood of
//! distinct valid tokens costs a fixed amount of memory.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::verifier::VerifiedToken;

/// SHA-256 of the token text.
pub(crate) type TokenHash = [u8; 32];

const SHARD_COUNT: usize = 16;

#[derive(Clone, Debug)]
pub(crate) struct CacheEntry {
    pub(crate) token: Arc<VerifiedToken>,
    /// Generation of the issuer registration the token verified against.
    pub(crate) generation: u64,
    /// The `nbf` claim; `i64::MIN` when the token had none.
    pub(crate) not_before_epoch_seconds: i64,
    /// The clock leeway of the token's issuer.
    pub(crate) leeway_seconds: i64,
}

impl CacheEntry {
    /// Whether `now` is within the token's validity window, leeway included. Same rule as
    /// a fresh verification, so a cache hit never accepts what a miss would refuse.
    pub(crate) fn is_expired(&self, now_epoch_seconds: i64) -> bool {
        now_epoch_seconds > self.token.expires_at_epoch_seconds.saturating_add(self.leeway_seconds)
    }

    pub(crate) fn is_not_yet_valid(&self, now_epoch_seconds: i64) -> bool {
        now_epoch_seconds.saturating_add(self.leeway_seconds) < self.not_before_epoch_seconds
    }
}

pub(crate) struct TokenCache {
    shards: Box<[Mutex<HashMap<TokenHash, CacheEntry>>]>,
    capacity_per_shard: usize,
}

impl TokenCache {
    /// A cache holding at most about `capacity` tokens (rounded up to a multiple of the
    /// shard count). Zero disables caching.
    pub(crate) fn new(capacity: usize) -> TokenCache {
        let shards = (0..SHARD_COUNT).map(|_| Mutex::new(HashMap::new())).collect();
        TokenCache { shards, capacity_per_shard: capacity.div_ceil(SHARD_COUNT) }
    }

    fn shard(&self, hash: &TokenHash) -> &Mutex<HashMap<TokenHash, CacheEntry>> {
        // SHA-256 output is uniform, so its first byte spreads tokens evenly.
        &self.shards[usize::from(hash[0]) % self.shards.len()]
    }

    pub(crate) fn get(&self, hash: &TokenHash) -> Option<CacheEntry> {
        self.shard(hash).lock().get(hash).cloned()
    }

    pub(crate) fn remove(&self, hash: &TokenHash) {
        self.shard(hash).lock().remove(hash);
    }

    pub(crate) fn insert(&self, hash: TokenHash, entry: CacheEntry, now_epoch_seconds: i64) {
        if self.capacity_per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&hash).lock();
        if shard.len() >= self.capacity_per_shard && !shard.contains_key(&hash) {
            // Expired tokens go first: they can never be served again.
            shard.retain(|_, cached| !cached.is_expired(now_epoch_seconds));
            if shard.len() >= self.capacity_per_shard {
                // Still full of live tokens: drop an arbitrary eighth, so the full scan
                // above runs once per many inserts rather than on every one. A dropped
                // token is merely verified again on its next use.
                let keep = self.capacity_per_shard - self.capacity_per_shard.div_ceil(8);
                let excess = shard.len().saturating_sub(keep);
                let victims: Vec<TokenHash> = shard.keys().take(excess).copied().collect();
                for victim in &victims {
                    shard.remove(victim);
                }
            }
        }
        shard.insert(hash, entry);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bahi_domain::claims::AgentMode;

    fn entry(expires_at_epoch_seconds: i64) -> CacheEntry {
        CacheEntry {
            token: Arc::new(VerifiedToken {
                registration_id: "embedded".into(),
                issuer: "https://bahi.test".into(),
                key_id: "k".into(),
                agent_id: "agt_1".into(),
                act_for: "org_1".into(),
                org_id: "org_1".into(),
                mode: AgentMode::Autonomous,
                scopes: vec!["inference".into()],
                jti: Some("tok_1".into()),
                expires_at_epoch_seconds,
                external_issuer: false,
                used_act_claim: false,
            }),
            generation: 1,
            not_before_epoch_seconds: i64::MIN,
            leeway_seconds: 0,
        }
    }

    /// Hashes that all land in shard 0, so one shard's bound can be observed.
    fn hash(number: u16) -> TokenHash {
        let mut hash = [0_u8; 32];
        hash[1..3].copy_from_slice(&number.to_be_bytes());
        hash
    }

    #[test]
    fn stays_within_its_bound_and_evicts_expired_tokens_first() {
        let cache = TokenCache::new(SHARD_COUNT * 8);
        for number in 0..4 {
            cache.insert(hash(number), entry(100), 0);
        }
        for number in 4..8 {
            cache.insert(hash(number), entry(10_000), 0);
        }
        assert_eq!(cache.len(), 8);
        // At now = 1000 the first four are expired, so inserting into the full shard
        // removes exactly those and keeps every live token.
        cache.insert(hash(8), entry(10_000), 1_000);
        assert_eq!(cache.len(), 5);
        for number in 4..=8 {
            assert!(cache.get(&hash(number)).is_some(), "live token {number} kept");
        }
        for number in 9..100 {
            cache.insert(hash(number), entry(10_000), 1_000);
            assert!(cache.len() <= 8);
        }
        assert!(cache.get(&hash(99)).is_some(), "the newest token is always cached");
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let cache = TokenCache::new(0);
        cache.insert(hash(1), entry(10_000), 0);
        assert!(cache.get(&hash(1)).is_none());
    }

    #[test]
    fn validity_window_includes_the_leeway() {
        let cached = CacheEntry { not_before_epoch_seconds: 500, leeway_seconds: 5, ..entry(1_000) };
        assert!(!cached.is_expired(1_005));
        assert!(cached.is_expired(1_006));
        assert!(!cached.is_not_yet_valid(495));
        assert!(cached.is_not_yet_valid(494));
    }
}
