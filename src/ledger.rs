//! The in-memory fold of the log: domain `State` plus the bookkeeping the writer needs to
//! append (head position and hash, stream versions, idempotency records).
//!
//! Two copies exist per node: the writer's, which includes the batch being decided, and the
//! node's shared read model (`SharedLedger`), which holds committed events only and serves
//! the hot path. Both are folded by the same `Ledger::fold`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bahi_domain::chain::GENESIS_HASH;
use bahi_domain::state::FastMap;
use bahi_domain::state::evolve_taking;
use bahi_domain::{Event, State, evolve};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::store::{RowRef, StoreError, StoredEvent};

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
    /// Set when the log holds an event after `position` that this node cannot fold (one that
    /// does not decode): the node cannot advance past it, so it reports not ready and its
    /// writer refuses commands instead of failing each one against the database. One cell
    /// shared by every clone (the writer's ledger is a clone of the node's), so the writer
    /// sees at once what the tailer met; the first fault stays, as the row cannot change.
    pub fault: Arc<OnceLock<LogFault>>,
}

/// An event of the log this node cannot fold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFault {
    pub position: i64,
    pub reason: String,
}

impl std::fmt::Display for LogFault {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "the event log cannot be read at position {}: {}", self.position, self.reason)
    }
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
        if !self.is_next(stored.position)? {
            return Ok(());
        }
        evolve(&mut self.state, &committed.event);
        self.advance(stored.position, stored.hash, Cow::Borrowed(&stored.stream_id), stored.stream_version);
        if let Some(idempotency) = idempotency {
            self.record_idempotency(idempotency, committed);
        }
        Ok(())
    }

    /// Folds an event read by loading, which has no further use for it: the text the state
    /// keeps is taken out of the event instead of copied (`evolve_taking`), and a new
    /// stream's id out of `loaded`. An event that carries an idempotency key is folded whole,
    /// because its record keeps a copy of it.
    pub fn fold_loaded(&mut self, loaded: &mut LoadedEvent) -> Result<(), FoldError> {
        if !self.is_next(loaded.committed.position)? {
            return Ok(());
        }
        match &loaded.idempotency {
            Some(idempotency) => {
                evolve(&mut self.state, &loaded.committed.event);
                self.record_idempotency(idempotency, &loaded.committed);
            }
            None => evolve_taking(&mut self.state, &mut loaded.committed.event),
        }
        let stream_id = Cow::Owned(std::mem::take(&mut loaded.stream_id));
        self.advance(loaded.committed.position, loaded.hash, stream_id, loaded.stream_version);
        Ok(())
    }

    /// Whether the event at `position` is the next to fold: false for one folded already, an
    /// error for one past a gap.
    fn is_next(&self, position: i64) -> Result<bool, FoldError> {
        if position <= self.position {
            return Ok(false);
        }
        if position != self.position + 1 {
            return Err(FoldError::OutOfOrder { expected_previous: self.position, found: position });
        }
        Ok(true)
    }

    /// The head and the stream's version after folding an event. The stream's id is owned
    /// where the caller can give it up (loading), so that a new stream's id is moved into the
    /// map rather than copied.
    fn advance(&mut self, position: i64, hash: [u8; 32], stream_id: Cow<'_, str>, stream_version: i64) {
        self.position = position;
        self.head_hash = hash;
        // Most events continue a stream already known (a call's usage follows its
        // authorization); only a new stream's id goes into the map.
        match self.stream_versions.get_mut(stream_id.as_ref()) {
            Some(version) => *version = stream_version,
            None => {
                self.stream_versions.insert(stream_id.into_owned(), stream_version);
            }
        }
    }

    fn record_idempotency(&mut self, idempotency: &Idempotency, committed: &CommittedEvent) {
        self.idempotency
            .entry(idempotency.key.clone())
            .or_insert_with(|| IdempotencyRecord { request_hash: idempotency.request_hash, events: Vec::new() })
            .events
            .push(committed.clone());
    }
}

/// An event as loading decodes it, with what folding it needs of its row.
#[derive(Debug)]
pub struct LoadedEvent {
    pub committed: CommittedEvent,
    pub idempotency: Option<Idempotency>,
    pub stream_id: String,
    pub stream_version: i64,
    pub hash: [u8; 32],
}

impl LoadedEvent {
    /// Decodes a stored row, which it consumes (its stream id moves in, the rest is freed).
    pub fn from_stored(stored: StoredEvent) -> Result<LoadedEvent, FoldError> {
        let (committed, idempotency) = decode_stored(&stored)?;
        Ok(LoadedEvent {
            committed,
            idempotency,
            stream_id: stored.stream_id,
            stream_version: stored.stream_version,
            hash: stored.hash,
        })
    }

    /// Decodes a row of PostgreSQL's binary COPY, reading the event from its bytes.
    pub fn from_copied(row: &RowRef<'_>) -> Result<LoadedEvent, FoldError> {
        let corrupt = |error: StoreError| FoldError::Undecodable { position: row.position, message: error.to_string() };
        let (committed, idempotency) = decode_row(
            row.position,
            row.recorded_at().map_err(corrupt)?,
            row.event_type().map_err(corrupt)?,
            row.schema_version,
            row.payload,
            row.metadata,
        )?;
        Ok(LoadedEvent {
            committed,
            idempotency,
            stream_id: row.stream_id().map_err(corrupt)?.to_owned(),
            stream_version: row.stream_version,
            hash: row.hash().map_err(corrupt)?,
        })
    }
}

/// Decodes a stored row into its event and idempotency record, without folding it: pure, so
/// that loading can decode one page while the previous one is folded.
pub fn decode_stored(stored: &StoredEvent) -> Result<(CommittedEvent, Option<Idempotency>), FoldError> {
    decode_row(
        stored.position,
        stored.recorded_at,
        &stored.event_type,
        stored.schema_version,
        &stored.payload,
        &stored.metadata,
    )
}

/// Whether an event about to be appended reads back as itself: its payload and metadata go
/// through `decode_row`, the decoder loading, tailing and `bahi verify` use, and must give
/// the same event and idempotency record. The writer refuses an event that does not, so the
/// log never holds what it cannot read back.
pub fn check_reads_back(
    event: &Event,
    payload: &[u8],
    metadata: &[u8],
    idempotency: Option<&Idempotency>,
) -> Result<(), String> {
    let (decoded, decoded_idempotency) =
        decode_row(0, DateTime::<Utc>::UNIX_EPOCH, event.event_type(), event.schema_version(), payload, metadata)
            .map_err(|error| error.to_string())?;
    if &decoded.event != event {
        return Err(format!("event {} reads back as a different event", event.event_type()));
    }
    if decoded_idempotency.as_ref() != idempotency {
        return Err(format!("the metadata of event {} reads back with another idempotency record", event.event_type()));
    }
    Ok(())
}

/// `decode_stored` from a row's parts.
fn decode_row(
    position: i64,
    recorded_at: DateTime<Utc>,
    event_type: &str,
    schema_version: i32,
    payload: &[u8],
    metadata: &[u8],
) -> Result<(CommittedEvent, Option<Idempotency>), FoldError> {
    let event = Event::decode(event_type, schema_version, payload)
        .map_err(|error| FoldError::Undecodable { position, message: error.to_string() })?;
    // Only rows that carry an idempotency key pay for parsing their metadata.
    let idempotency = if metadata.windows(16).any(|window| window == b"idempotency_key\"") {
        serde_json::from_slice::<EventMetadata>(metadata).ok().and_then(|metadata| {
            Some(Idempotency { key: metadata.idempotency_key?, request_hash: parse_hex_32(&metadata.request_hash?)? })
        })
    } else {
        None
    };
    Ok((CommittedEvent { position, recorded_at, event }, idempotency))
}

/// Re-hashes and decodes the whole log from position 1. `Ok(count)` when intact; otherwise
/// the first position whose row does not match its chain, breaks contiguity, or does not
/// decode (with the decoder loading uses: a node could not start on such a log), and why.
pub async fn verify_log<S: crate::store::EventStore>(store: &S) -> Result<Result<i64, (i64, String)>, StoreError> {
    let mut previous_hash = bahi_domain::chain::GENESIS_HASH;
    let mut position = 0;
    loop {
        let page = store.read_after(position, crate::store::MAX_READ_PAGE).await?;
        if page.is_empty() {
            return Ok(Ok(position));
        }
        for event in &page {
            if event.position != position + 1 {
                return Ok(Err((
                    position + 1,
                    format!("position {} is missing (next stored is {})", position + 1, event.position),
                )));
            }
            let expected = event.expected_hash(&previous_hash);
            if expected != event.hash {
                return Ok(Err((
                    event.position,
                    "hash does not match the row's contents and the previous hash".into(),
                )));
            }
            if let Err(error) = decode_stored(event) {
                return Ok(Err((event.position, error.to_string())));
            }
            previous_hash = event.hash;
            position = event.position;
        }
    }
}
