//! In-memory, per-node state that is not worth an event per request: token buckets for
//! rate limits, and the exact last use of each API key (recorded in the log at most once a
//! minute by `flush_key_uses`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::Duration;

use bahi_domain::Command;
use bahi_domain::event::RateLimit;
use bahi_domain::ids::ApiKeyId;
use bahi_domain::rate_limit::{RateDecision, TokenBucket};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::ledger::SharedLedger;
use crate::writer::{CommandContext, Writer};

/// A hash map split into shards, each behind its own mutex, so that concurrent requests for
/// different keys rarely wait for one another.
pub struct ShardedMap<K, V> {
    shards: Vec<Mutex<HashMap<K, V>>>,
    hasher: RandomState,
}

const SHARDS: usize = 64;
/// Entries per shard before stale ones are evicted; bounds memory under a flood of
/// distinct keys (client addresses, say).
const MAX_ENTRIES_PER_SHARD: usize = 16_384;

impl<K: Hash + Eq + Clone, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }
}

impl<K: Hash + Eq + Clone, V> ShardedMap<K, V> {
    fn shard(&self, key: &K) -> &Mutex<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Runs `update` on the entry for `key`, creating it with `create` first.
    pub fn with_entry<R>(&self, key: &K, create: impl FnOnce() -> V, update: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key).lock();
        if !shard.contains_key(key) && shard.len() >= MAX_ENTRIES_PER_SHARD {
            // Evicting an arbitrary entry only forgets a partly used bucket or a use that
            // is at most a minute from being recorded; both are bounded losses.
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        update(shard.entry(key.clone()).or_insert_with(create))
    }

    pub fn snapshot(&self) -> Vec<(K, V)>
    where
        V: Clone,
    {
        self.shards
            .iter()
            .flat_map(|shard| shard.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>())
            .collect()
    }

    pub fn get(&self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        self.shard(key).lock().get(key).cloned()
    }
}

/// Token buckets by subject (`key_…`, `usr_…`, `agt_…`, `ip:…`).
#[derive(Default)]
pub struct RateLimiter {
    buckets: ShardedMap<String, (RateLimit, TokenBucket)>,
}

impl RateLimiter {
    /// Takes one token from `subject`'s bucket. A changed limit starts a fresh, full bucket.
    pub fn take(&self, subject: &str, limit: RateLimit, now: DateTime<Utc>) -> RateDecision {
        let now_micros = now.timestamp_micros();
        self.buckets.with_entry(
            &subject.to_owned(),
            || (limit, TokenBucket::full(limit, now_micros)),
            |(current, bucket)| {
                if *current != limit {
                    *current = limit;
                    *bucket = TokenBucket::full(limit, now_micros);
                }
                bucket.take(limit, now_micros)
            },
        )
    }
}

/// The exact last use of each key on this node.
#[derive(Default)]
pub struct KeyUses {
    uses: ShardedMap<ApiKeyId, DateTime<Utc>>,
}

impl KeyUses {
    pub fn touch(&self, key_id: &ApiKeyId, now: DateTime<Utc>) {
        self.uses.with_entry(key_id, || now, |last| *last = (*last).max(now));
    }

    pub fn last_use(&self, key_id: &ApiKeyId) -> Option<DateTime<Utc>> {
        self.uses.get(key_id)
    }
}

/// How often in-memory key uses are compared with the log.
pub const KEY_USE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Records, through the writer, each key whose last use is a minute or more past the one
/// in the log. Runs until cancelled, then flushes once more.
pub async fn flush_key_uses(
    uses: std::sync::Arc<KeyUses>,
    ledger: SharedLedger,
    writer: Writer,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(KEY_USE_FLUSH_INTERVAL) => false,
        };
        let due: Vec<(ApiKeyId, DateTime<Utc>)> = {
            let ledger = ledger.read();
            uses.uses
                .snapshot()
                .into_iter()
                .filter(|(key_id, used_at)| {
                    ledger.state.api_keys.get(key_id).is_some_and(|key| {
                        key.revoked_at.is_none()
                            && key.last_used_at.is_none_or(|recorded| {
                                *used_at
                                    >= bahi_domain::state::shifted(
                                        recorded,
                                        bahi_domain::command::KEY_USE_RECORD_INTERVAL_SECONDS,
                                    )
                            })
                    })
                })
                .collect()
        };
        if !due.is_empty() {
            let result = writer.submit(Command::RecordKeyUses { uses: due }, CommandContext::default()).await;
            if let Err(error) = result {
                tracing::warn!(%error, "recording key uses failed; the next flush retries");
            }
        }
        if stopping {
            return;
        }
    }
}
