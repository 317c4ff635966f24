//! The hash chain: `hash = SHA-256(previous_hash || canonical bytes)`.
//!
//! The canonical bytes are every column of the stored row except the hash, each
//! length-prefixed so that no two different rows share an encoding.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

/// The hash before position 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// One stored row of the log, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub recorded_at: &'a str,
    pub payload: &'a [u8],
    pub metadata: &'a [u8],
}

fn put_bytes(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

pub fn chain_hash(previous_hash: &[u8; 32], record: &RecordView<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous_hash);
    hasher.update(record.position.to_be_bytes());
    put_bytes(&mut hasher, record.stream_id.as_bytes());
    hasher.update(record.stream_version.to_be_bytes());
    put_bytes(&mut hasher, record.event_id.as_bytes());
    put_bytes(&mut hasher, record.event_type.as_bytes());
    hasher.update(record.schema_version.to_be_bytes());
    put_bytes(&mut hasher, record.recorded_at.as_bytes());
    put_bytes(&mut hasher, record.payload);
    put_bytes(&mut hasher, record.metadata);
    hasher.finalize().into()
}

/// The one text form of `recorded_at` that is hashed and stored: RFC 3339, UTC, microseconds.
pub fn format_recorded_at(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates a clock reading to what the log keeps (microseconds), so that the time a caller
/// is told equals the time that is stored and re-read.
pub fn truncate_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    // Truncating only moves a time towards the epoch within its second, so the result lies
    // in chrono's range whenever `time` does; a fallback to the untruncated time would store
    // one text and answer another.
    DateTime::from_timestamp_micros(time.timestamp_micros())
        .unwrap_or_else(|| panic!("a time truncated to microseconds left chrono's range: {time}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record<'a>(payload: &'a [u8]) -> RecordView<'a> {
        RecordView {
            position: 1,
            stream_id: "org_a",
            stream_version: 1,
            event_id: "evt_a",
            event_type: "OrgRegistered",
            schema_version: 1,
            recorded_at: "2026-01-01T00:00:00.000000Z",
            payload,
            metadata: b"{}",
        }
    }

    #[test]
    fn any_changed_byte_changes_the_hash() {
        let base = chain_hash(&GENESIS_HASH, &record(b"{\"a\":1}"));
        assert_ne!(base, chain_hash(&GENESIS_HASH, &record(b"{\"a\":2}")));
        assert_ne!(base, chain_hash(&[1; 32], &record(b"{\"a\":1}")));
        let mut moved = record(b"{\"a\":1}");
        moved.position = 2;
        assert_ne!(base, chain_hash(&GENESIS_HASH, &moved));
    }

    #[test]
    fn length_prefix_prevents_field_shifting() {
        let mut left = record(b"x");
        left.stream_id = "ab";
        left.event_id = "c";
        let mut right = record(b"x");
        right.stream_id = "a";
        right.event_id = "bc";
        assert_ne!(chain_hash(&GENESIS_HASH, &left), chain_hash(&GENESIS_HASH, &right));
    }

    #[test]
    fn recorded_at_format_is_fixed() {
        let time = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(format_recorded_at(time), "2023-11-14T22:13:20.123456Z");
    }
}
