//! PostgreSQL: reading the log in bulk (loading at start-up, rebuilding projections) with one
//! binary `COPY … TO STDOUT` over the whole range, parsed here.
//!
//! Through sqlx's query path every row became a `PgRow` and every value went through a
//! checked `try_get`; in a profile of loading, that reader took more of bahi's CPU than the
//! JSON decoding it feeds. COPY's binary rows are a count and length-prefixed values, which
//! convert straight into `StoredEvent`s (rebuilding). Loading goes further: it is sent the
//! rows' own bytes, a page of whole rows at a time (`CopiedRows`), and its decoders read each
//! event from them (`RowRef`), so no field of a row is copied into an allocation of its own
//! first. The one statement reads one snapshot, as the SQLite bulk reader's one statement
//! does.

use bytes::{Buf, BytesMut};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::PgPool;

use crate::store::{LoadPage, LoadPageSender, PageSender, StoreError, StoredEvent, hash_from_bytes};

/// The signature that opens every binary COPY stream (PostgreSQL's "COPY" page), read here
/// and written by the projections' COPYs (`postgres::batch.rs`).
pub(super) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The columns in the order `parse_row` reads them.
const COLUMNS: usize = 10;

fn corrupt(message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("reading the PostgreSQL log: {message}"))
}

/// Sends the events after `after` (up to and including `until`) in pages of `page_events`,
/// in order, until the head of the log as the COPY's snapshot saw it, or until the receiver
/// goes away.
pub async fn read_pages(pool: PgPool, after: i64, until: Option<i64>, page_events: usize, sender: PageSender) {
    let parser = CopyParser::<StoredPages>::new(page_events);
    if let Err(failure) = read_pages_inner(&pool, after, until, parser, &sender, |page| page).await {
        let _ = sender.send(Err(failure)).await;
    }
}

/// `read_pages` for loading: each page is the COPY's own bytes of its rows (`CopiedRows`),
/// parsed by the loading decoders, instead of rows allocated field by field here.
pub async fn read_copied_pages(pool: PgPool, after: i64, page_events: usize, sender: LoadPageSender) {
    let parser = CopyParser::<CopiedPages>::new(page_events);
    if let Err(failure) = read_pages_inner(&pool, after, None, parser, &sender, LoadPage::Copied).await {
        let _ = sender.send(Err(failure)).await;
    }
}

async fn read_pages_inner<B: PageBuilder, T>(
    pool: &PgPool,
    after: i64,
    until: Option<i64>,
    mut parser: CopyParser<B>,
    sender: &tokio::sync::mpsc::Sender<Result<T, StoreError>>,
    wrap: impl Fn(B::Page) -> T,
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
    while let Some(chunk) = chunks.try_next().await? {
        parser.push(&chunk)?;
        for page in parser.ready.drain(..) {
            if sender.send(Ok(wrap(page))).await.is_err() {
                return Ok(());
            }
        }
    }
    drop(chunks);
    sqlx::raw_sql("COMMIT").execute(&mut *connection).await?;
    if let Some(last) = parser.finish()? {
        let _ = sender.send(Ok(wrap(last))).await;
    }
    Ok(())
}

/// Gathers parsed rows into pages.
trait PageBuilder: Default {
    type Page;
    /// Adds a row: `row` parsed from `bytes`, its whole encoding.
    fn add(&mut self, row: &RowRef<'_>, bytes: &[u8], page_events: usize) -> Result<(), StoreError>;
    fn rows(&self) -> usize;
    /// Whether the page is full: `page_events` rows, or less when the builder bounds pages
    /// otherwise.
    fn full(&self, page_events: usize) -> bool {
        self.rows() >= page_events
    }
    fn take(&mut self) -> Self::Page;
}

/// Pages of `StoredEvent`s: every field converted and copied out of the stream.
#[derive(Default)]
struct StoredPages {
    page: Vec<StoredEvent>,
}

impl PageBuilder for StoredPages {
    type Page = Vec<StoredEvent>;

    fn add(&mut self, row: &RowRef<'_>, _bytes: &[u8], page_events: usize) -> Result<(), StoreError> {
        if self.page.is_empty() {
            self.page.reserve_exact(page_events);
        }
        self.page.push(row.to_stored()?);
        Ok(())
    }

    fn rows(&self) -> usize {
        self.page.len()
    }

    fn take(&mut self) -> Vec<StoredEvent> {
        std::mem::take(&mut self.page)
    }
}

/// Bytes reserved for the first copied page: a thousand rows of a gateway's log take about
/// 700 KB.
const FIRST_COPIED_PAGE_BYTES: usize = 1 << 20;

/// The most reserved for a copied page before its rows arrive, and the size at which a page
/// ends before its thousand rows.
const MAX_COPIED_PAGE_BYTES: usize = 16 << 20;

/// Pages of the stream's own bytes, a row after another.
#[derive(Default)]
struct CopiedPages {
    page: CopiedRows,
    /// The size of the last full page: the next is reserved a little larger at once, instead
    /// of grown by doubling (copying it each time) from nothing.
    last_page_bytes: usize,
}

impl PageBuilder for CopiedPages {
    type Page = CopiedRows;

    fn add(&mut self, _row: &RowRef<'_>, bytes: &[u8], _page_events: usize) -> Result<(), StoreError> {
        if self.page.bytes.capacity() == 0 {
            // Never more than a bound up front, whatever the page before held: a page of
            // large events (a key set, say) grows as any vector does.
            let expected = if self.last_page_bytes > 0 { self.last_page_bytes } else { FIRST_COPIED_PAGE_BYTES };
            self.page.bytes.reserve_exact((expected + expected / 8).min(MAX_COPIED_PAGE_BYTES));
        }
        self.page.bytes.extend_from_slice(bytes);
        self.page.rows += 1;
        Ok(())
    }

    fn rows(&self) -> usize {
        self.page.rows
    }

    /// A page of large events ends early: a page is held in memory whole, several at a time.
    fn full(&self, page_events: usize) -> bool {
        self.page.rows >= page_events || self.page.bytes.len() >= MAX_COPIED_PAGE_BYTES
    }

    fn take(&mut self) -> CopiedRows {
        self.last_page_bytes = self.page.bytes.len();
        std::mem::take(&mut self.page)
    }
}

/// Rows of the log as a binary COPY encodes them, one after another, each checked once by
/// the reader (complete, ten columns, none NULL). Loading sends these to its decoders, which
/// read each event from its bytes here: parsing a row into a `StoredEvent` copied five of
/// its fields into allocations of their own, and the decoders only read them.
#[derive(Debug, Default)]
pub struct CopiedRows {
    bytes: Vec<u8>,
    rows: usize,
}

impl CopiedRows {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = Result<RowRef<'_>, StoreError>> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            Some(match parse_row(rest) {
                Ok(Parsed::Row(row, length)) => {
                    rest = &rest[length..];
                    Ok(row)
                }
                // The reader put only whole rows here; anything else is a broken invariant.
                Ok(Parsed::End | Parsed::Incomplete) | Err(_) => {
                    rest = &[];
                    Err(corrupt("a copied page that does not hold whole rows"))
                }
            })
        })
    }
}

/// Parses a binary COPY stream fed in pieces into pages of events.
struct CopyParser<B: PageBuilder> {
    page_events: usize,
    header_read: bool,
    finished: bool,
    builder: B,
    /// Full pages, in order, for the caller to take.
    ready: Vec<B::Page>,
    /// The start of a row split across pieces, until the rest arrives.
    unparsed: BytesMut,
}

impl<B: PageBuilder> CopyParser<B> {
    fn new(page_events: usize) -> CopyParser<B> {
        CopyParser {
            page_events: page_events.max(1),
            header_read: false,
            finished: false,
            builder: B::default(),
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
                Parsed::Row(row, length) => {
                    self.builder.add(&row, &bytes[offset..offset + length], self.page_events)?;
                    offset += length;
                    if self.builder.full(self.page_events) {
                        self.ready.push(self.builder.take());
                    }
                }
            }
        }
        if self.finished && offset < bytes.len() {
            return Err(corrupt("bytes after the COPY trailer"));
        }
        Ok(offset)
    }

    /// The last, partial page (none when empty), once the stream has ended.
    fn finish(mut self) -> Result<Option<B::Page>, StoreError> {
        if !self.finished || !self.unparsed.is_empty() {
            return Err(corrupt("the COPY stream ended without its trailer"));
        }
        Ok((self.builder.rows() > 0).then(|| self.builder.take()))
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

enum Parsed<'a> {
    /// The row and how many bytes it took.
    Row(RowRef<'a>, usize),
    /// The trailer: a field count of -1.
    End,
    Incomplete,
}

/// One row of a binary COPY of the log, its values still the stream's bytes.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub position: i64,
    stream_id: &'a [u8],
    pub stream_version: i64,
    event_id: &'a [u8],
    event_type: &'a [u8],
    pub schema_version: i32,
    recorded_at_microseconds: i64,
    pub payload: &'a [u8],
    pub metadata: &'a [u8],
    hash: &'a [u8],
}

impl<'a> RowRef<'a> {
    pub fn stream_id(&self) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.stream_id).map_err(corrupt)
    }

    pub fn event_type(&self) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.event_type).map_err(corrupt)
    }

    pub fn recorded_at(&self) -> Result<DateTime<Utc>, StoreError> {
        timestamp(self.recorded_at_microseconds)
    }

    pub fn hash(&self) -> Result<[u8; 32], StoreError> {
        hash_from_bytes(self.hash)
    }

    fn to_stored(self) -> Result<StoredEvent, StoreError> {
        Ok(StoredEvent {
            position: self.position,
            stream_id: self.stream_id()?.to_owned(),
            stream_version: self.stream_version,
            event_id: text(self.event_id)?,
            event_type: self.event_type()?.to_owned(),
            schema_version: self.schema_version,
            recorded_at: self.recorded_at()?,
            payload: self.payload.to_vec(),
            metadata: self.metadata.to_vec(),
            hash: self.hash()?,
        })
    }
}

/// One row from the start of `bytes`, if all of it is there.
fn parse_row(bytes: &[u8]) -> Result<Parsed<'_>, StoreError> {
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
    let row = RowRef {
        position: i64::from_be_bytes(read_array(position)?),
        stream_id,
        stream_version: i64::from_be_bytes(read_array(stream_version)?),
        event_id,
        event_type,
        schema_version: i32::from_be_bytes(read_array(schema_version)?),
        recorded_at_microseconds: i64::from_be_bytes(read_array(recorded_at)?),
        payload,
        metadata,
        hash,
    };
    Ok(Parsed::Row(row, offset))
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
        let Parsed::Row(row, length) = parse_row(&bytes).unwrap() else { panic!("not a row") };
        assert_eq!(length, bytes.len());
        let event = row.to_stored().unwrap();
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
    fn parse_in_pieces<B: PageBuilder>(
        bytes: &[u8],
        piece: usize,
        page_events: usize,
    ) -> Result<Vec<B::Page>, StoreError> {
        let mut parser = CopyParser::<B>::new(page_events);
        let mut pages = Vec::new();
        for chunk in bytes.chunks(piece) {
            parser.push(chunk)?;
            pages.append(&mut parser.ready);
        }
        pages.extend(parser.finish()?);
        Ok(pages)
    }

    /// A stream of `rows` rows whose positions count from 1.
    fn numbered_stream(rows: usize) -> Vec<u8> {
        let mut out = stream(0);
        out.truncate(out.len() - 2);
        for position in 1..=rows {
            let mut row = row();
            row[6..14].copy_from_slice(&i64::try_from(position).unwrap().to_be_bytes());
            out.extend(row);
        }
        out.extend_from_slice(&(-1_i16).to_be_bytes());
        out
    }

    #[test]
    fn a_copied_page_reserves_from_the_last_one_within_a_bound() {
        let bytes = row();
        let Parsed::Row(parsed, _) = parse_row(&bytes).unwrap() else { panic!("not a row") };
        let mut pages = CopiedPages::default();
        pages.add(&parsed, &bytes, 1_000).unwrap();
        assert!(pages.page.bytes.capacity() >= FIRST_COPIED_PAGE_BYTES);
        pages.last_page_bytes = 1 << 30;
        pages.take();
        pages.last_page_bytes = 1 << 30;
        pages.add(&parsed, &bytes, 1_000).unwrap();
        assert!(pages.page.bytes.capacity() <= MAX_COPIED_PAGE_BYTES + bytes.len());
        assert!(!pages.full(1_000));
        pages.page.bytes.resize(MAX_COPIED_PAGE_BYTES, 0);
        assert!(pages.full(1_000), "a page of large rows ends before its thousand rows");
    }

    #[test]
    fn copied_pages_hold_the_same_rows_as_parsed_pages() {
        let bytes = numbered_stream(5);
        for piece in [1, 3, 7, 64, bytes.len()] {
            let parsed = parse_in_pieces::<StoredPages>(&bytes, piece, 2).unwrap();
            let copied = parse_in_pieces::<CopiedPages>(&bytes, piece, 2).unwrap();
            assert_eq!(copied.iter().map(CopiedRows::len).collect::<Vec<_>>(), [2, 2, 1]);
            let from_copies: Vec<Vec<StoredEvent>> = copied
                .iter()
                .map(|page| page.rows().map(|row| row.and_then(RowRef::to_stored)).collect::<Result<_, _>>().unwrap())
                .collect();
            assert_eq!(from_copies, parsed, "pieces of {piece} bytes");
            assert_eq!(from_copies.concat().iter().map(|event| event.position).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        }
        let broken = CopiedRows { bytes: bytes[19..40].to_vec(), rows: 1 };
        assert!(broken.rows().any(|row| row.is_err()));
    }

    #[test]
    fn a_stream_cut_anywhere_parses_into_the_same_pages() {
        let bytes = stream(5);
        for piece in 1..=bytes.len() {
            let pages = parse_in_pieces::<StoredPages>(&bytes, piece, 2).unwrap();
            assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "pieces of {piece} bytes");
        }
    }

    #[test]
    fn a_stream_without_its_trailer_or_with_bytes_after_it_is_corruption() {
        let bytes = stream(3);
        assert!(parse_in_pieces::<StoredPages>(&bytes[..bytes.len() - 2], 7, 2).is_err());
        assert!(parse_in_pieces::<StoredPages>(&bytes[..bytes.len() - 9], 7, 2).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse_in_pieces::<StoredPages>(&longer, 7, 2).is_err());
        assert!(parse_in_pieces::<StoredPages>(b"PGCOPY\nXXXXXXXXXXXXXXXX", 7, 2).is_err());
    }
}
