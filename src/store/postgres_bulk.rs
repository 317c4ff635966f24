//! PostgreSQL: reading the log in bulk (loading at start-up, rebuilding projections) with one
//! binary `COPY … TO STDOUT` over the whole range, parsed here.
//!
//! Through sqlx's query path every row became a `PgRow` and every value went through a
//! checked `try_get`; in a profile of loading, that reader took more of bahi's CPU than the
//! JSON decoding it feeds. COPY's binary rows are a count and length-prefixed values, which
//! convert straight into `StoredEvent`s. The one statement reads one snapshot, as the SQLite
//! bulk reader's one statement does.

use bytes::{Buf, BytesMut};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::PgPool;

use super::{PageSender, StoreError, StoredEvent, hash_from_bytes};

/// The signature that opens every binary COPY stream (PostgreSQL's "COPY" page).
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The columns in the order `parse_row` reads them.
const COLUMNS: usize = 10;

fn corrupt(message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("reading the PostgreSQL log: {message}"))
}

/// Sends the events after `after` (up to and including `until`) in pages of `page_events`,
/// in order, until the head of the log as the COPY's snapshot saw it, or until the receiver
/// goes away.
pub async fn read_pages(pool: PgPool, after: i64, until: Option<i64>, page_events: usize, sender: PageSender) {
    if let Err(failure) = read_pages_inner(&pool, after, until, page_events.max(1), &sender).await {
        let _ = sender.send(Err(failure)).await;
    }
}

async fn read_pages_inner(
    pool: &PgPool,
    after: i64,
    until: Option<i64>,
    page_events: usize,
    sender: &PageSender,
) -> Result<(), StoreError> {
    let mut connection = pool.acquire().await?;
    // A COPY left unread cannot be abandoned on a connection that goes back to the pool:
    // this connection is closed when the reading ends, however it ends.
    connection.close_on_drop();
    // Without statistics (a log loaded in bulk and not yet analyzed) the planner picks a
    // bitmap scan and a sort of the whole range, which spills to disk. The primary key
    // already gives position order. `SET LOCAL` keeps the settings to this transaction,
    // also behind a pooler that hands the server connection on.
    sqlx::raw_sql(
        "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off",
    )
    .execute(&mut *connection)
    .await?;
    // Both bounds are integers formatted here; COPY takes no bind parameters.
    let statement = format!(
        "COPY (SELECT position, stream_id, stream_version, event_id, event_type, schema_version, recorded_at, payload, metadata, hash \
         FROM events WHERE position > {after} AND position <= {} ORDER BY position) TO STDOUT (FORMAT binary)",
        until.unwrap_or(i64::MAX)
    );
    let mut chunks = connection.copy_out_raw(&statement).await?;
    let mut parser = CopyParser::new(page_events);
    while let Some(chunk) = chunks.try_next().await? {
        parser.push(&chunk)?;
        for page in parser.ready.drain(..) {
            if sender.send(Ok(page)).await.is_err() {
                return Ok(());
            }
        }
    }
    drop(chunks);
    sqlx::raw_sql("COMMIT").execute(&mut *connection).await?;
    let last = parser.finish()?;
    if !last.is_empty() {
        let _ = sender.send(Ok(last)).await;
    }
    Ok(())
}

/// Parses a binary COPY stream fed in pieces into pages of events.
struct CopyParser {
    page_events: usize,
    header_read: bool,
    finished: bool,
    page: Vec<StoredEvent>,
    /// Full pages, in order, for the caller to take.
    ready: Vec<Vec<StoredEvent>>,
    /// The start of a row split across pieces, until the rest arrives.
    unparsed: BytesMut,
}

impl CopyParser {
    fn new(page_events: usize) -> CopyParser {
        CopyParser {
            page_events,
            header_read: false,
            finished: false,
            page: Vec::new(),
            ready: Vec::new(),
            unparsed: BytesMut::new(),
        }
    }

    /// Parses the next piece of the stream. PostgreSQL sends a row per message, so a row is
    /// usually parsed straight from its piece; only a row split across pieces is gathered.
    fn push(&mut self, piece: &[u8]) -> Result<(), StoreError> {
        if self.unparsed.is_empty() {
            let consumed = self.feed(piece)?;
            self.unparsed.extend_from_slice(&piece[consumed..]);
        } else {
            self.unparsed.extend_from_slice(piece);
            let gathered = std::mem::take(&mut self.unparsed);
            let consumed = self.feed(&gathered)?;
            self.unparsed = gathered;
            self.unparsed.advance(consumed);
        }
        Ok(())
    }

    /// Parses what it can from the start of `bytes`; returns how many bytes it used.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, StoreError> {
        let mut offset = 0;
        if !self.header_read {
            match header_length(bytes)? {
                Some(length) => {
                    self.header_read = true;
                    offset = length;
                }
                None => return Ok(0),
            }
        }
        while !self.finished {
            match parse_row(&bytes[offset..])? {
                Parsed::Incomplete => break,
                Parsed::End => {
                    self.finished = true;
                    offset += 2;
                }
                Parsed::Row(event, length) => {
                    offset += length;
                    if self.page.is_empty() {
                        self.page.reserve_exact(self.page_events);
                    }
                    self.page.push(event);
                    if self.page.len() == self.page_events {
                        self.ready.push(std::mem::take(&mut self.page));
                    }
                }
            }
        }
        if self.finished && offset < bytes.len() {
            return Err(corrupt("bytes after the COPY trailer"));
        }
        Ok(offset)
    }

    /// The last, partial page, once the stream has ended.
    fn finish(self) -> Result<Vec<StoredEvent>, StoreError> {
        if !self.finished || !self.unparsed.is_empty() {
            return Err(corrupt("the COPY stream ended without its trailer"));
        }
        Ok(self.page)
    }
}

/// The header's length once all of it is in `bytes`; `None` while more bytes are needed.
fn header_length(bytes: &[u8]) -> Result<Option<usize>, StoreError> {
    // The signature, 32 bits of flags, then the length of a header extension.
    let Some(signature) = bytes.get(..SIGNATURE.len()) else { return Ok(None) };
    if signature != SIGNATURE {
        return Err(corrupt("not a binary COPY stream"));
    }
    let Some(extension) = bytes.get(SIGNATURE.len() + 4..SIGNATURE.len() + 8) else { return Ok(None) };
    let extension = usize::try_from(u32::from_be_bytes(read_array(extension)?)).map_err(corrupt)?;
    let length = SIGNATURE.len() + 8 + extension;
    Ok((bytes.len() >= length).then_some(length))
}

enum Parsed {
    /// The row and how many bytes it took.
    Row(StoredEvent, usize),
    /// The trailer: a field count of -1.
    End,
    Incomplete,
}

/// One row from the start of `bytes`, if all of it is there.
fn parse_row(bytes: &[u8]) -> Result<Parsed, StoreError> {
    let Some(count) = bytes.get(..2) else { return Ok(Parsed::Incomplete) };
    let count = i16::from_be_bytes(read_array(count)?);
    if count == -1 {
        return Ok(Parsed::End);
    }
    if usize::try_from(count).ok() != Some(COLUMNS) {
        return Err(corrupt(format!("a row of {count} columns")));
    }
    let mut fields: [&[u8]; COLUMNS] = [&[]; COLUMNS];
    let mut offset = 2;
    for field in &mut fields {
        let Some(length) = bytes.get(offset..offset + 4) else { return Ok(Parsed::Incomplete) };
        // Every column is NOT NULL, so a length of -1 is corruption like any other.
        let length = usize::try_from(i32::from_be_bytes(read_array(length)?)).map_err(|_| corrupt("a NULL value"))?;
        offset += 4;
        let Some(value) = bytes.get(offset..offset + length) else { return Ok(Parsed::Incomplete) };
        *field = value;
        offset += length;
    }
    let [
        position,
        stream_id,
        stream_version,
        event_id,
        event_type,
        schema_version,
        recorded_at,
        payload,
        metadata,
        hash,
    ] = fields;
    let event = StoredEvent {
        position: i64::from_be_bytes(read_array(position)?),
        stream_id: text(stream_id)?,
        stream_version: i64::from_be_bytes(read_array(stream_version)?),
        event_id: text(event_id)?,
        event_type: text(event_type)?,
        schema_version: i32::from_be_bytes(read_array(schema_version)?),
        recorded_at: timestamp(i64::from_be_bytes(read_array(recorded_at)?))?,
        payload: payload.to_vec(),
        metadata: metadata.to_vec(),
        hash: hash_from_bytes(hash)?,
    };
    Ok(Parsed::Row(event, offset))
}

fn read_array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], StoreError> {
    bytes
        .get(..N)
        .and_then(|prefix| prefix.try_into().ok())
        .ok_or_else(|| corrupt(format!("a value shorter than {N} bytes")))
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(corrupt)
}

/// A binary `timestamptz`: microseconds since 2000-01-01 00:00:00 UTC.
fn timestamp(microseconds: i64) -> Result<DateTime<Utc>, StoreError> {
    // One conversion from Unix microseconds: building the epoch and adding a duration to it
    // took 265 instructions a row (callgrind).
    const POSTGRES_EPOCH_UNIX_MICROSECONDS: i64 = 946_684_800 * 1_000_000;
    microseconds
        .checked_add(POSTGRES_EPOCH_UNIX_MICROSECONDS)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| corrupt(format!("a timestamp of {microseconds} microseconds")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(bytes: &[u8]) -> Vec<u8> {
        let mut out = i32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn row() -> Vec<u8> {
        let mut out = 10_i16.to_be_bytes().to_vec();
        out.extend(field(&7_i64.to_be_bytes()));
        out.extend(field(b"org_1"));
        out.extend(field(&2_i64.to_be_bytes()));
        out.extend(field(b"evt_1"));
        out.extend(field(b"OrgRegistered"));
        out.extend(field(&1_i32.to_be_bytes()));
        // 2026-12-02T00:00:00.000001Z in microseconds since 2000-01-01.
        out.extend(field(&(849_484_800_000_000_i64 + 1).to_be_bytes()));
        out.extend(field(b"{\"a\":1}"));
        out.extend(field(b"{}"));
        out.extend(field(&[9; 32]));
        out
    }

    #[test]
    fn a_row_parses_into_the_stored_event() {
        let bytes = row();
        let Parsed::Row(event, length) = parse_row(&bytes).unwrap() else { panic!("not a row") };
        assert_eq!(length, bytes.len());
        assert_eq!(event.position, 7);
        assert_eq!(event.stream_id, "org_1");
        assert_eq!(event.stream_version, 2);
        assert_eq!(event.event_type, "OrgRegistered");
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.recorded_at.to_rfc3339(), "2026-12-02T00:00:00.000001+00:00");
        assert_eq!(event.payload, b"{\"a\":1}");
        assert_eq!(event.hash, [9; 32]);
    }

    #[test]
    fn timestamps_before_and_after_the_postgres_epoch() {
        assert_eq!(timestamp(0).unwrap().to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert_eq!(timestamp(-1).unwrap().to_rfc3339(), "1999-12-31T23:59:59.999999+00:00");
        assert_eq!(timestamp(849_484_800_000_000).unwrap().to_rfc3339(), "2026-12-02T00:00:00+00:00");
        assert!(timestamp(i64::MAX).is_err());
    }

    #[test]
    fn every_truncation_of_a_row_is_incomplete_not_an_error() {
        let bytes = row();
        for end in 0..bytes.len() {
            assert!(matches!(parse_row(&bytes[..end]), Ok(Parsed::Incomplete)), "at {end} bytes");
        }
    }

    #[test]
    fn a_null_or_a_wrong_column_count_is_corruption() {
        let mut bytes = 10_i16.to_be_bytes().to_vec();
        bytes.extend((-1_i32).to_be_bytes());
        assert!(matches!(parse_row(&bytes), Err(StoreError::Corrupt(_))));
        assert!(matches!(parse_row(&3_i16.to_be_bytes()), Err(StoreError::Corrupt(_))));
        assert!(matches!(parse_row(&(-1_i16).to_be_bytes()), Ok(Parsed::End)));
    }

    fn stream(rows: usize) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0_u32.to_be_bytes());
        out.extend_from_slice(&2_u32.to_be_bytes());
        out.extend_from_slice(b"xy");
        for _ in 0..rows {
            out.extend(row());
        }
        out.extend_from_slice(&(-1_i16).to_be_bytes());
        out
    }

    /// Pushes `bytes` in pieces of `piece` bytes, as the reader does; returns the pages.
    fn parse_in_pieces(bytes: &[u8], piece: usize, page_events: usize) -> Result<Vec<Vec<StoredEvent>>, StoreError> {
        let mut parser = CopyParser::new(page_events);
        let mut pages = Vec::new();
        for chunk in bytes.chunks(piece) {
            parser.push(chunk)?;
            pages.append(&mut parser.ready);
        }
        let last = parser.finish()?;
        if !last.is_empty() {
            pages.push(last);
        }
        Ok(pages)
    }

    #[test]
    fn a_stream_cut_anywhere_parses_into_the_same_pages() {
        let bytes = stream(5);
        for piece in 1..=bytes.len() {
            let pages = parse_in_pieces(&bytes, piece, 2).unwrap();
            assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "pieces of {piece} bytes");
        }
    }

    #[test]
    fn a_stream_without_its_trailer_or_with_bytes_after_it_is_corruption() {
        let bytes = stream(3);
        assert!(parse_in_pieces(&bytes[..bytes.len() - 2], 7, 2).is_err());
        assert!(parse_in_pieces(&bytes[..bytes.len() - 9], 7, 2).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse_in_pieces(&longer, 7, 2).is_err());
        assert!(parse_in_pieces(b"PGCOPY\nXXXXXXXXXXXXXXXX", 7, 2).is_err());
    }
}
