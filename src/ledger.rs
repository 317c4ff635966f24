//! The in-memory fold of the log: domain `State` plus the bookkeeping the writer needs to
//! append (head position and hash, stream versions, idempotency records).
//!
//! Two copies exist per node: the writer's, which includes the batch being decided, and the
//! node's shared read model (`SharedLedger`), which holds committed events only and serves
//! the hot path. Both are folded by the same `Ledger::fold`.

use std::sync::Arc;

use bahi_domain::chain::GENESIS_HASH;
use bahi_domain::state::FastMap;
use bahi_domain::state::evolve_taking;
use bahi_domain::{Event, State, evolve};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::store::StoredEvent;

/// Who caused an event, kept in its metadata for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: String,
    pub id: String,
}

impl Actor {
    pub fn new(kind: &str, id: impl Into<String>) -> Actor {
        Actor { kind: kind.to_owned(), id: id.into() }
    }

    pub fn anonymous(client: impl Into<String>) -> Actor {
        Actor::new("anonymous", client)
    }

    pub fn system() -> Actor {
        Actor::new("system", "bahi")
    }
}

/// The metadata stored (and hashed) beside each payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
}

/// A command's idempotency: a caller-scoped key and the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommittedEvent {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub request_hash: [u8; 32],
    pub events: Vec<CommittedEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("event at position {found} does not follow position {expected_previous}")]
    OutOfOrder { expected_previous: i64, found: i64 },
    #[error("event at position {position} does not decode: {message}")]
    Undecodable { position: i64, message: String },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub state: State,
    pub position: i64,
    pub head_hash: [u8; 32],
    pub stream_versions: FastMap<String, i64>,
    pub idempotency: FastMap<String, IdempotencyRecord>,
}

pub type SharedLedger = Arc<RwLock<Ledger>>;

fn parse_hex_32(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger { head_hash: GENESIS_HASH, ..Ledger::default() }
    }

    pub fn next_stream_version(&self, stream_id: &str) -> i64 {
        self.stream_versions.get(stream_id).copied().unwrap_or(0) + 1
    }

    /// Decodes a stored row and folds it (used when loading and tailing the log).
    pub fn fold_stored(&mut self, stored: &StoredEvent) -> Result<Option<CommittedEvent>, FoldError> {
        if stored.position <= self.position {
            return Ok(None);
        }
        let (committed, idempotency) = decode_stored(stored)?;
        self.fold(stored, &committed, idempotency.as_ref())?;
        Ok(Some(committed))
    }

    /// Folds one event whose row is `stored`. Events at or below the current position are
    /// skipped, so the same event may be offered twice (by the writer and a log tailer).
    pub fn fold(
        &mut self,
        stored: &StoredEvent,
        committed: &CommittedEvent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(), FoldError> {
        if !self.is_next(stored)? {
            return Ok(());
        }
        evolve(&mut self.state, &committed.event);
        self.advance(stored, committed, idempotency);
        Ok(())
    }

    /// `fold` for an event the caller will only drop (loading): the text the state keeps is
    /// taken out of the event instead of copied (`evolve_taking`). An event that carries an
    /// idempotency key is kept whole, because its record holds a copy of it.
    pub fn fold_taking(
        &mut self,
        stored: &StoredEvent,
        committed: &mut CommittedEvent,
        idempotency: Option<&Idempotency>,
    ) -> Result<(), FoldError> {
        if idempotency.is_some() {
            return self.fold(stored, committed, idempotency);
        }
        if !self.is_next(stored)? {
            return Ok(());
        }
        evolve_taking(&mut self.state, &mut committed.event);
        self.advance(stored, committed, None);
        Ok(())
    }

    /// Whether `stored` is the next event to fold: false for one folded already, an error
    /// for one past a gap.
    fn is_next(&self, stored: &StoredEvent) -> Result<bool, FoldError> {
        if stored.position <= self.position {
            return Ok(false);
        }
        if stored.position != self.position + 1 {
            return Err(FoldError::OutOfOrder { expected_previous: self.position, found: stored.position });
        }
        Ok(true)
    }

    /// Everything of folding an event but `evolve`: the head, the stream's version, and the
    /// idempotency record.
    fn advance(&mut self, stored: &StoredEvent, committed: &CommittedEvent, idempotency: Option<&Idempotency>) {
        self.position = stored.position;
        self.head_hash = stored.hash;
        // Most events continue a stream already known (a call's usage follows its
        // authorization); only a new stream's id is copied into the map.
        match self.stream_versions.get_mut(stored.stream_id.as_str()) {
            Some(version) => *version = stored.stream_version,
            None => {
                self.stream_versions.insert(stored.stream_id.clone(), stored.stream_version);
            }
        }
        if let Some(idempotency) = idempotency {
            self.idempotency
                .entry(idempotency.key.clone())
                .or_insert_with(|| IdempotencyRecord { request_hash: idempotency.request_hash, events: Vec::new() })
                .events
                .push(committed.clone());
        }
    }
}

/// Decodes a stored row into its event and idempotency record, without folding it: pure, so
/// that loading can decode one page while the previous one is folded.
pub fn decode_stored(stored: &StoredEvent) -> Result<(CommittedEvent, Option<Idempotency>), FoldError> {
    let event = Event::decode(&stored.event_type, stored.schema_version, &stored.payload)
        .map_err(|error| FoldError::Undecodable { position: stored.position, message: error.to_string() })?;
    // Only rows that carry an idempotency key pay for parsing their metadata.
    let idempotency = if stored.metadata.windows(16).any(|window| window == b"idempotency_key\"") {
        serde_json::from_slice::<EventMetadata>(&stored.metadata).ok().and_then(|metadata| {
            Some(Idempotency { key: metadata.idempotency_key?, request_hash: parse_hex_32(&metadata.request_hash?)? })
        })
    } else {
        None
    };
    Ok((CommittedEvent { position: stored.position, recorded_at: stored.recorded_at, event }, idempotency))
}
