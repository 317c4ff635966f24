//! The single writer: commands arrive over a bounded channel; the writer drains a batch,
//! decides each command against its authoritative in-memory state, assigns positions,
//! chains hashes and commits the whole batch in one transaction, then answers every caller.
//! A batch that fails to commit fails every caller in it and the writer's state is reset to
//! the committed read model, so nothing is half-applied.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bahi_domain::chain::{format_recorded_at, truncate_to_micros};
use bahi_domain::ids::EventId;
use bahi_domain::{Command, DomainError, decide};
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ledger::{Actor, CommittedEvent, EventMetadata, Idempotency, Ledger, SharedLedger};
use crate::metrics::Metrics;
use crate::store::{EventStore, Store, StoreError, StoredEvent};

/// Commands waiting for the writer; past this, submitters wait (back-pressure).
pub const QUEUE_CAPACITY: usize = 8192;
/// Commands decided and committed together at most.
pub const MAX_BATCH: usize = 1024;
/// How long a submitter waits for room in the queue before giving up with 503.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at one batch when another node moved the log head in between.
const MAX_APPEND_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub actor: Option<Actor>,
    pub request_id: Option<String>,
    pub idempotency: Option<Idempotency>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub events: Vec<CommittedEvent>,
    /// True when an idempotent retry got the stored outcome instead of new events.
    pub replayed: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error("this idempotency key was already used with a different request")]
    IdempotencyConflict,
    #[error("the writer queue is full; retry shortly")]
    Overloaded,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the ledger could not commit: {0}")]
    Store(String),
}

struct Submission {
    command: Command,
    context: CommandContext,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// The handle every request uses to reach the writer.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Submission>,
}

impl Writer {
    pub async fn submit(&self, command: Command, context: CommandContext) -> Result<Outcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        let submission = Submission { command, context, reply };
        match tokio::time::timeout(SUBMIT_TIMEOUT, self.sender.send(submission)).await {
            Err(_) => return Err(WriteError::Overloaded),
            Ok(Err(_)) => return Err(WriteError::ShuttingDown),
            Ok(Ok(())) => {}
        }
        answer.await.unwrap_or(Err(WriteError::ShuttingDown))
    }
}

/// Everything the writer task owns.
pub struct WriterTask {
    store: Store,
    ledger: Ledger,
    shared: SharedLedger,
    receiver: mpsc::Receiver<Submission>,
    metrics: Arc<Metrics>,
    committed: watch::Sender<i64>,
    random: StdRng,
}

/// Creates the writer over a ledger already loaded from the log. The returned task must be
/// spawned; it ends when every `Writer` handle is dropped, after draining the queue.
pub fn writer(
    store: Store,
    shared: SharedLedger,
    metrics: Arc<Metrics>,
    committed: watch::Sender<i64>,
) -> (Writer, WriterTask) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let ledger = shared.read().clone();
    let task = WriterTask { store, ledger, shared, receiver, metrics, committed, random: StdRng::from_os_rng() };
    (Writer { sender }, task)
}

enum Pending {
    Answered(Result<Outcome, WriteError>),
    Appended(std::ops::Range<usize>),
}

/// One batch after deciding: an answer or event range per submission, and the rows to append
/// with their decoded events and idempotency records.
#[derive(Default)]
struct DecidedBatch {
    /// The log position the batch was decided after: the compare-and-swap expectation.
    expected_head: i64,
    pending: Vec<Pending>,
    rows: Vec<StoredEvent>,
    committed: Vec<CommittedEvent>,
    idempotency: Vec<Option<Idempotency>>,
}

impl WriterTask {
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.receiver.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.receiver.try_recv() {
                    Ok(submission) => batch.push(submission),
                    Err(_) => break,
                }
            }
            self.process(&mut batch).await;
        }
        tracing::info!(position = self.ledger.position, "writer drained and stopped");
    }

    async fn process(&mut self, batch: &mut Vec<Submission>) {
        for attempt in 1..=MAX_APPEND_ATTEMPTS {
            let decided = self.decide_batch(batch);
            if decided.rows.is_empty() {
                return self.answer(batch, decided);
            }
            let started = Instant::now();
            match self.store.append(decided.expected_head, &decided.rows).await {
                Ok(()) => {
                    let rows = decided.rows.len() as u64;
                    self.metrics.commit_seconds.observe_micros(started.elapsed().as_micros() as u64);
                    self.metrics.batch_size.observe_micros(rows * 1_000_000);
                    self.metrics.events_appended.fetch_add(rows, Ordering::Relaxed);
                    self.metrics.batches_committed.fetch_add(1, Ordering::Relaxed);
                    self.publish(&decided);
                    return self.answer(batch, decided);
                }
                Err(StoreError::HeadMoved { expected, actual }) if attempt < MAX_APPEND_ATTEMPTS => {
                    tracing::info!(expected, actual, "another writer appended first; catching up and deciding again");
                    if let Err(error) = self.catch_up().await {
                        return self.fail(batch, error);
                    }
                }
                Err(error) => return self.fail(batch, error),
            }
        }
    }

    /// Decides every command of the batch in order against the writer's ledger, folding each
    /// accepted command's events at once so the next command sees them.
    fn decide_batch(&mut self, batch: &[Submission]) -> DecidedBatch {
        let now = truncate_to_micros(Utc::now());
        // Every event of the batch carries this time: format it once, not once per event.
        let now_text = format_recorded_at(now);
        let mut decided = DecidedBatch {
            expected_head: self.ledger.position,
            pending: Vec::with_capacity(batch.len()),
            ..DecidedBatch::default()
        };
        let DecidedBatch { pending, rows, committed, idempotency: row_idempotency, .. } = &mut decided;
        for submission in batch {
            if let Some(idempotency) = &submission.context.idempotency
                && let Some(record) = self.ledger.idempotency.get(&idempotency.key)
            {
                pending.push(Pending::Answered(if record.request_hash == idempotency.request_hash {
                    Ok(Outcome { events: record.events.clone(), replayed: true })
                } else {
                    Err(WriteError::IdempotencyConflict)
                }));
                continue;
            }
            let events = match decide(&self.ledger.state, &submission.command, now) {
                Ok(events) => events,
                Err(error) => {
                    self.metrics.commands_rejected.fetch_add(1, Ordering::Relaxed);
                    pending.push(Pending::Answered(Err(WriteError::Rejected(error))));
                    continue;
                }
            };
            let metadata = EventMetadata {
                actor: submission.context.actor.clone().unwrap_or_else(Actor::system),
                request_id: submission.context.request_id.clone(),
                idempotency_key: submission.context.idempotency.as_ref().map(|i| i.key.clone()),
                request_hash: submission.context.idempotency.as_ref().map(|i| hex::encode(i.request_hash)),
            };
            let metadata_bytes = serde_json::to_vec(&metadata).unwrap_or_default();
            let first = committed.len();
            for event in events {
                let mut random = [0u8; 16];
                self.random.fill_bytes(&mut random);
                let mut row = StoredEvent {
                    position: self.ledger.position + 1,
                    stream_id: event.stream_id().to_owned(),
                    stream_version: self.ledger.next_stream_version(event.stream_id()),
                    event_id: EventId::from_random(random).to_string(),
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    recorded_at: now,
                    payload: event.payload_bytes(),
                    metadata: metadata_bytes.clone(),
                    hash: [0; 32],
                };
                row.hash = row.expected_hash_with(&self.ledger.head_hash, &now_text);
                let event = CommittedEvent { position: row.position, recorded_at: now, event };
                // Positions are assigned from the ledger's own position, so folding cannot be
                // out of order.
                let _ = self.ledger.fold(&row, &event, submission.context.idempotency.as_ref());
                rows.push(row);
                committed.push(event);
                row_idempotency.push(submission.context.idempotency.clone());
            }
            pending.push(Pending::Appended(first..committed.len()));
        }
        decided
    }

    /// Makes a committed batch visible: the node's read model first, then the position
    /// watchers (projection runner, waiters).
    fn publish(&mut self, decided: &DecidedBatch) {
        let mut shared = self.shared.write();
        for ((row, event), idempotency) in decided.rows.iter().zip(&decided.committed).zip(&decided.idempotency) {
            // The rows were folded into the writer's ledger in the same order, so they
            // follow the shared ledger's position exactly.
            let _ = shared.fold(row, event, idempotency.as_ref());
        }
        let position = shared.position;
        drop(shared);
        self.metrics.log_head_position.store(position, Ordering::Relaxed);
        self.committed.send_replace(position);
    }

    /// Answers every caller. The events move into the answers: both ledgers hold their own
    /// copies already.
    fn answer(&mut self, batch: &mut Vec<Submission>, decided: DecidedBatch) {
        let mut events = decided.committed.into_iter();
        for (submission, pending) in batch.drain(..).zip(decided.pending) {
            let result = match pending {
                Pending::Answered(result) => result,
                Pending::Appended(range) => {
                    Ok(Outcome { events: events.by_ref().take(range.len()).collect(), replayed: false })
                }
            };
            let _ = submission.reply.send(result);
        }
    }

    fn fail(&mut self, batch: &mut Vec<Submission>, error: StoreError) {
        tracing::warn!(%error, commands = batch.len(), "batch failed to commit; every command in it fails");
        self.metrics.batches_failed.fetch_add(1, Ordering::Relaxed);
        self.ledger = self.shared.read().clone();
        let message = error.to_string();
        for submission in batch.drain(..) {
            let _ = submission.reply.send(Err(WriteError::Store(message.clone())));
        }
    }

    /// Folds events other nodes appended into the shared read model, then restarts the
    /// writer's ledger from it (dropping the batch that lost the race).
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        catch_up_shared(&self.store, &self.shared).await?;
        self.ledger = self.shared.read().clone();
        let position = self.ledger.position;
        self.metrics.log_head_position.store(position, Ordering::Relaxed);
        self.committed.send_replace(position);
        Ok(())
    }
}

/// Reads every event after the shared ledger's position and folds it in.
pub async fn catch_up_shared(store: &Store, shared: &SharedLedger) -> Result<i64, StoreError> {
    loop {
        let after = shared.read().position;
        let page = store.read_after(after, crate::store::MAX_READ_PAGE).await?;
        if page.is_empty() {
            return Ok(after);
        }
        let mut ledger = shared.write();
        for row in &page {
            ledger.fold_stored(row).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        }
    }
}
