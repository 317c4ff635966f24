//! The single writer: commands arrive over a bounded channel; the writer drains a batch,
//! decides each command against its authoritative in-memory state, assigns positions,
//! chains hashes and commits the whole batch in one transaction, then answers every caller.
//! A batch that fails to commit fails every caller in it and the writer's state is reset to
//! the committed read model, so nothing is half-applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bahi_domain::chain::{format_recorded_at, truncate_to_micros};
use bahi_domain::ids::EventId;
use bahi_domain::{Command, DomainError, decide};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::ledger::{
    Actor, CommittedEvent, EventMetadata, FoldError, Idempotency, Ledger, LoadedEvent, LogFault, SharedLedger,
    check_reads_back, decode_stored,
};
use crate::metrics::Metrics;
use crate::projection_feed::ProjectionFeed;
use crate::store::{EventStore, LoadPage, LogLock, Reach, Store, StoreError, StoredEvent};

/// Commands waiting for the writer; past this, submitters wait (back-pressure).
pub const QUEUE_CAPACITY: usize = 8192;
/// Commands decided and committed together at most.
pub const MAX_BATCH: usize = 1024;
/// How long a submitter waits for room in the queue before giving up with 503.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at one batch when another node moved the log head in between. After the first
/// loss the writer holds the append lock (PostgreSQL), under which it cannot lose again; the
/// rest are for a node that appends without the lock (an older version, mid-upgrade).
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
    /// Another node held the append lock past its wait (or, appending without it, kept
    /// appending first `MAX_APPEND_ATTEMPTS` times): nothing was appended, and a retry
    /// decides again at the new head.
    #[error("other nodes held the log; nothing was recorded, retry shortly")]
    Contended,
    /// The database could not be reached: nothing was appended, and a retry decides again.
    #[error("the database cannot be reached right now; nothing was recorded, retry shortly: {0}")]
    Unavailable(String),
    /// The connection to the database was lost while the batch was being committed: it may
    /// or may not be in the log. A retry decides again at the head of the log, so a command
    /// that carries an idempotency key (or a usage report its call id) is recorded once.
    #[error("the database connection was lost while committing; the outcome is unknown: {0}")]
    OutcomeUnknown(String),
    #[error("the ledger could not commit: {0}")]
    Store(String),
    /// An event `decide` produced would not read back through the log's decoder: a bug, not
    /// bad input (input is bounded before it gets here). Nothing was appended.
    #[error("refused to record an event that does not read back: {0}")]
    Unreadable(String),
    /// This node met an event of the log it cannot fold, so it cannot append after it.
    #[error("this node is not ready: {0}")]
    NotReady(LogFault),
}

struct Submission {
    /// None asks for no decision: it is answered once this node's read model holds the log
    /// up to a head read after it arrived (`Writer::reach_head`).
    command: Option<Command>,
    context: CommandContext,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// The handle every request uses to reach the writer.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Submission>,
    appended: Arc<AtomicI64>,
}

impl Writer {
    /// The position up to which this node's writer has committed the log, folded or not.
    /// The log tailer skips notifications at or below it: they are this node's own commits,
    /// or another node's that this writer caught up on before committing past them.
    pub fn appended_head(&self) -> Arc<AtomicI64> {
        self.appended.clone()
    }

    pub async fn submit(&self, command: Command, context: CommandContext) -> Result<Outcome, WriteError> {
        self.send(Some(command), context).await
    }

    /// Returns once this node's read model holds every event committed, on any node, before
    /// the call. A request that misses something in memory waits for this before answering
    /// that it does not exist: on PostgreSQL it may have been made on another node a moment
    /// ago. Every caller in one batch shares one read of the log head.
    pub async fn reach_head(&self) -> Result<(), WriteError> {
        self.send(None, CommandContext::default()).await.map(|_| ())
    }

    async fn send(&self, command: Option<Command>, context: CommandContext) -> Result<Outcome, WriteError> {
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

/// Batches waiting to be published and answered; past this the writer waits.
const PUBLISH_QUEUE: usize = 4;

/// What the writer hands to the publisher, in log order.
// A batch lives here only until the publisher takes it; boxing it would allocate per batch.
#[allow(clippy::large_enum_variant)]
enum Publication {
    /// A committed batch: fold it into the shared read model, then answer its callers.
    Committed(Batch),
    /// A batch that appended nothing (every command refused or replayed): answer it.
    Answer(Batch),
    /// Answered once everything sent before it is published and answered.
    Barrier(oneshot::Sender<()>),
}

/// Everything the writer task owns.
pub struct WriterTask {
    store: Store,
    ledger: Ledger,
    shared: SharedLedger,
    receiver: mpsc::Receiver<Submission>,
    metrics: Arc<Metrics>,
    committed: watch::Sender<i64>,
    appended: Arc<AtomicI64>,
    /// The publisher task's queue: folding committed batches into the shared read model and
    /// answering their callers runs there, on the other core, while the writer decides the
    /// next batch.
    publisher: mpsc::Sender<Publication>,
    publisher_receiver: Option<mpsc::Receiver<Publication>>,
    random: StdRng,
    /// Where the publisher hands committed events to the live projection runner, if one runs.
    feed: Option<Arc<ProjectionFeed>>,
    /// The last clock reading and its `format_recorded_at` text, so that the text is built
    /// once per reading rather than once per event.
    last_reading: (DateTime<Utc>, String),
    /// Where `now` comes from: the node's one clock.
    clock: SharedClock,
}

/// Creates the writer over a ledger already loaded from the log. The returned task must be
/// spawned; it ends when every `Writer` handle is dropped, after draining the queue.
pub fn writer(
    store: Store,
    shared: SharedLedger,
    metrics: Arc<Metrics>,
    committed: watch::Sender<i64>,
    clock: SharedClock,
) -> (Writer, WriterTask) {
    let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let (publisher, publisher_receiver) = mpsc::channel(PUBLISH_QUEUE);
    let ledger = shared.read().clone();
    let appended = Arc::new(AtomicI64::new(ledger.position));
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    let task = WriterTask {
        store,
        ledger,
        shared,
        receiver,
        metrics,
        committed,
        appended: appended.clone(),
        publisher,
        publisher_receiver: Some(publisher_receiver),
        random: StdRng::from_os_rng(),
        feed: None,
        clock,
        last_reading: (epoch, format_recorded_at(epoch)),
    };
    (Writer { sender, appended }, task)
}

enum Pending {
    Answered(Result<Outcome, WriteError>),
    Appended(std::ops::Range<usize>),
}

/// A batch: its submissions in arrival order and, for each, an answer or the range of events
/// it appends, plus the rows to append with their decoded events and idempotency records.
struct Batch {
    /// The log position the batch was decided after: the compare-and-swap expectation.
    expected_head: i64,
    submissions: Vec<Submission>,
    pending: Vec<Pending>,
    rows: Vec<StoredEvent>,
    committed: Vec<CommittedEvent>,
    idempotency: Vec<Option<Idempotency>>,
    /// Earlier attempts at these commands that lost the head to another node.
    attempts: usize,
    /// Whether every command was decided after a catch-up to a log head read after it
    /// arrived. A batch that appends is checked against the head by the compare-and-swap;
    /// one that appends nothing (refusals, replays) and is not known to be at the head has
    /// the head read before it is answered, so that no node refuses on a stale view.
    at_head: bool,
    /// The append lock, held from the catch-up that follows a lost race until this batch is
    /// appended: everything in it is decided at the head, and its append cannot lose.
    log_lock: Option<LogLock>,
}

impl Batch {
    fn new(expected_head: i64, attempts: usize) -> Batch {
        Batch {
            expected_head,
            submissions: Vec::new(),
            pending: Vec::new(),
            rows: Vec::new(),
            committed: Vec::new(),
            idempotency: Vec::new(),
            attempts,
            at_head: false,
            log_lock: None,
        }
    }
}

/// The append of one batch, running on its own task so that the writer can decide the next
/// batch while the database commits this one. Nothing of the next batch is answered, or
/// appended, before this one's outcome is known.
struct InFlight {
    batch: Batch,
    append: JoinHandle<Appended>,
    /// A batch that appends nothing, waiting for a read of the log head instead of an
    /// append. Nothing new is decided meanwhile, so that the writer's ledger holds no
    /// uncommitted event should it have to catch up.
    checking: bool,
}

/// What a failed store call was doing, for what its callers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Appending the batch: if the connection was lost, the batch may have been committed.
    Append,
    /// Reading the log head or catching up: nothing of the batch was sent.
    NothingToAppend,
}

/// What the append task hands back: its result, the rows (for publishing) and how long the
/// append took.
struct Appended {
    result: Result<(), StoreError>,
    rows: Vec<StoredEvent>,
    elapsed: Duration,
}

/// What `launch` did with a batch.
enum Launched {
    Appending(InFlight),
    /// Nothing to append (every command was refused or replayed): to be answered once
    /// everything before it is answered.
    NothingToAppend(Batch),
}

/// What woke the writer while a batch was in flight.
// A submission lives here for one turn of the loop; boxing it would allocate per command.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Appended(Result<Appended, tokio::task::JoinError>),
    Received(Option<Submission>),
}

impl WriterTask {
    /// Hands every committed event to `feed` as it is published, for the live projection
    /// runner (`projector::run`), which then need not read it back from the log.
    pub fn feed_projections(mut self, feed: Arc<ProjectionFeed>) -> WriterTask {
        self.feed = Some(feed);
        self
    }

    /// Group commit, pipelined one batch deep: while batch N commits, arriving commands are
    /// decided (against a ledger that already includes N) into batch N+1, which is appended
    /// as soon as N has committed. If N fails, N's callers fail, the ledger is reset to the
    /// committed read model and N+1's commands are decided again; none of them was answered.
    pub async fn run(mut self) {
        let publisher =
            self.publisher_receiver.take().map(|receiver| tokio::spawn(publish_in_order(self.publisher(), receiver)));
        let mut open = Batch::new(self.ledger.position, 0);
        let mut in_flight: Option<InFlight> = None;
        let mut closed = false;
        loop {
            let Some(flight) = in_flight.as_mut() else {
                if open.submissions.is_empty() {
                    if closed {
                        break;
                    }
                    match self.receiver.recv().await {
                        Some(submission) => self.receive_into(&mut open, submission),
                        None => break,
                    }
                }
                self.decide_queued(&mut open, &mut closed);
                let batch = std::mem::replace(&mut open, Batch::new(self.ledger.position, 0));
                match self.launch(batch) {
                    Launched::Appending(flight) => in_flight = Some(flight),
                    Launched::NothingToAppend(batch) => self.hand_over(Publication::Answer(batch)).await,
                }
                continue;
            };
            let wake = tokio::select! {
                biased;
                appended = &mut flight.append => Wake::Appended(appended),
                received = self.receiver.recv(),
                    if !closed && !flight.checking && open.submissions.len() < MAX_BATCH => {
                    Wake::Received(received)
                }
            };
            match wake {
                Wake::Received(Some(submission)) => self.receive_into(&mut open, submission),
                Wake::Received(None) => closed = true,
                Wake::Appended(appended) => {
                    let Some(InFlight { mut batch, checking, .. }) = in_flight.take() else { continue };
                    let result = match appended {
                        Ok(Appended { result, rows, elapsed }) => {
                            batch.rows = rows;
                            if !checking {
                                self.metrics.commit_seconds.observe_micros(elapsed.as_micros() as u64);
                            }
                            result
                        }
                        Err(error) => Err(StoreError::Corrupt(format!("the append task failed: {error}"))),
                    };
                    if checking {
                        in_flight = self.checked(batch, result).await;
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            if let Some(last) = batch.rows.last() {
                                self.appended.store(last.position, Ordering::Release);
                            }
                            // Start the next append first, so the database works while this
                            // batch is published and answered.
                            self.decide_queued(&mut open, &mut closed);
                            let next = std::mem::replace(&mut open, Batch::new(self.ledger.position, 0));
                            let unappended = match self.launch(next) {
                                Launched::Appending(flight) => {
                                    in_flight = Some(flight);
                                    None
                                }
                                Launched::NothingToAppend(next) => Some(next),
                            };
                            self.record_commit(&batch);
                            self.hand_over(Publication::Committed(batch)).await;
                            if let Some(next) = unappended {
                                self.hand_over(Publication::Answer(next)).await;
                            }
                        }
                        Err(StoreError::HeadMoved { expected, actual }) if batch.attempts + 1 < MAX_APPEND_ATTEMPTS => {
                            tracing::info!(
                                expected,
                                actual,
                                "another writer appended first; catching up and deciding again"
                            );
                            let attempts = batch.attempts + 1;
                            let waiting = std::mem::replace(&mut open, Batch::new(0, 0));
                            match self.lock_and_catch_up().await {
                                Ok(log_lock) => {
                                    open = Batch::new(self.ledger.position, attempts);
                                    self.decide_again(&mut open, batch);
                                    self.decide_again(&mut open, waiting);
                                    open.at_head = true;
                                    open.log_lock = log_lock;
                                }
                                Err(error) => {
                                    // The append itself lost the race: nothing of it is in the log.
                                    self.fail(batch, error, Sent::NothingToAppend).await;
                                    open = Batch::new(self.ledger.position, 0);
                                    self.decide_again(&mut open, waiting);
                                }
                            }
                        }
                        Err(error) => {
                            self.fail(batch, error, Sent::Append).await;
                            let waiting = std::mem::replace(&mut open, Batch::new(self.ledger.position, 0));
                            self.decide_again(&mut open, waiting);
                        }
                    }
                }
            }
        }
        // Every caller is answered before the writer reports that it has stopped.
        let position = self.ledger.position;
        drop(self);
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        tracing::info!(position, "writer drained and stopped");
    }

    /// What the publisher task publishes to (also used here if that task is gone).
    fn publisher(&self) -> Publisher {
        Publisher {
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            committed: self.committed.clone(),
            feed: self.feed.clone(),
        }
    }

    /// Queues a batch for the publisher, waiting while its queue is full.
    async fn hand_over(&self, publication: Publication) {
        if let Err(mpsc::error::SendError(publication)) = self.publisher.send(publication).await {
            // The publisher only ends when the writer drops its sender; deliver here so that
            // no caller waits forever if it ever did.
            self.publisher().deliver(publication);
        }
    }

    /// Waits until every batch handed over so far is in the shared read model and answered.
    async fn barrier(&self) {
        let (done, finished) = oneshot::channel();
        self.hand_over(Publication::Barrier(done)).await;
        let _ = finished.await;
    }

    /// Decides whatever is already queued, up to the batch limit, without waiting.
    fn decide_queued(&mut self, batch: &mut Batch, closed: &mut bool) {
        while batch.submissions.len() < MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(submission) => self.receive_into(batch, submission),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    *closed = true;
                    break;
                }
            }
        }
    }

    /// Starts appending a batch that has rows, or reading the log head for one that has
    /// none and is not known to be at the head; hands back one that needs neither.
    fn launch(&mut self, mut batch: Batch) -> Launched {
        if batch.rows.is_empty() {
            // Under the append lock nobody else appends: the batch is at the head.
            if let Some(log_lock) = batch.log_lock.take() {
                tokio::spawn(log_lock.release());
                return Launched::NothingToAppend(batch);
            }
            if batch.at_head || batch.submissions.is_empty() {
                return Launched::NothingToAppend(batch);
            }
            let store = self.store.clone();
            let expected = batch.expected_head;
            let check = tokio::spawn(async move {
                let started = Instant::now();
                let result = match store.head().await {
                    Ok((actual, _)) if actual == expected => Ok(()),
                    Ok((actual, _)) => Err(StoreError::HeadMoved { expected, actual }),
                    Err(error) => Err(error),
                };
                Appended { result, rows: Vec::new(), elapsed: started.elapsed() }
            });
            return Launched::Appending(InFlight { batch, append: check, checking: true });
        }
        let store = self.store.clone();
        let expected_head = batch.expected_head;
        let rows = std::mem::take(&mut batch.rows);
        let log_lock = batch.log_lock.take();
        let append = tokio::spawn(async move {
            let started = Instant::now();
            let result = match log_lock {
                Some(log_lock) => log_lock.append(expected_head, &rows).await,
                None => store.append(expected_head, &rows).await,
            };
            Appended { result, rows, elapsed: started.elapsed() }
        });
        Launched::Appending(InFlight { batch, append, checking: false })
    }

    /// Answers a batch that appends nothing once the log head has been read. If other
    /// nodes appended since the batch was decided, their events are folded first and the
    /// batch is decided again, now at the head, and launched at once (without commands that
    /// arrived since, which could otherwise keep it waiting).
    async fn checked(&mut self, batch: Batch, result: Result<(), StoreError>) -> Option<InFlight> {
        match result {
            Ok(()) => self.hand_over(Publication::Answer(batch)).await,
            Err(StoreError::HeadMoved { actual, .. }) => match self.catch_up_to(actual).await {
                Ok(()) => {
                    let mut again = Batch::new(self.ledger.position, 0);
                    self.decide_again(&mut again, batch);
                    again.at_head = true;
                    match self.launch(again) {
                        Launched::Appending(flight) => return Some(flight),
                        Launched::NothingToAppend(again) => self.hand_over(Publication::Answer(again)).await,
                    }
                }
                Err(error) => self.fail(batch, error, Sent::NothingToAppend).await,
            },
            Err(error) => self.fail(batch, error, Sent::NothingToAppend).await,
        }
        None
    }

    /// Brings the writer's ledger, which holds no uncommitted event, to `head` or past it:
    /// the events other nodes appended are read from the log, folded, and handed to the
    /// publisher, which folds them into the shared read model in order (skipping those the
    /// tailer folded first). Far behind, the shared read model, which the tailer keeps
    /// current, is caught up and copied instead.
    async fn catch_up_to(&mut self, head: i64) -> Result<(), StoreError> {
        if head - self.ledger.position > crate::store::MAX_READ_PAGE {
            return self.catch_up().await;
        }
        while self.ledger.position < head {
            let page = self.store.read_after(self.ledger.position, crate::store::MAX_READ_PAGE).await?;
            let Some(last) = page.last().map(|row| row.position) else { break };
            let mut caught_up = Batch::new(self.ledger.position, 0);
            for row in page {
                // Like the tailer: a row this node cannot fold is kept as the node's fault
                // (`/healthz` and `/readyz` name it), and the node never appends past it.
                let node_fault = self.ledger.fault.clone();
                let fault = |error: FoldError| {
                    let _ = node_fault.set(LogFault { position: row.position, reason: error.to_string() });
                    StoreError::Corrupt(error.to_string())
                };
                let (committed, idempotency) = decode_stored(&row).map_err(fault)?;
                self.ledger.fold(&row, &committed, idempotency.as_ref()).map_err(fault)?;
                caught_up.rows.push(row);
                caught_up.committed.push(committed);
                caught_up.idempotency.push(idempotency);
            }
            self.appended.store(last, Ordering::Release);
            self.hand_over(Publication::Committed(caught_up)).await;
        }
        Ok(())
    }

    /// Decides the commands of a batch that will not be appended as it was, into `into`
    /// (after a reset or catch-up of the ledger). Their callers have not been answered.
    fn decide_again(&mut self, into: &mut Batch, batch: Batch) {
        for submission in batch.submissions {
            self.decide_into(into, submission);
        }
    }

    /// The current time as the log keeps it, and its stored text.
    fn now(&mut self) -> DateTime<Utc> {
        let now = truncate_to_micros(self.clock.now());
        if now != self.last_reading.0 {
            self.last_reading = (now, format_recorded_at(now));
        }
        now
    }

    /// Decides a command just received: the batch is no longer known to be at the head.
    fn receive_into(&mut self, batch: &mut Batch, submission: Submission) {
        batch.at_head = false;
        self.decide_into(batch, submission);
    }

    /// Decides one command against the writer's ledger and folds its events at once, so
    /// that the next command sees them.
    fn decide_into(&mut self, batch: &mut Batch, submission: Submission) {
        let Some(command) = &submission.command else {
            batch.pending.push(Pending::Answered(Ok(Outcome { events: Vec::new(), replayed: false })));
            batch.submissions.push(submission);
            return;
        };
        if let Some(idempotency) = &submission.context.idempotency
            && let Some(record) = self.ledger.idempotency.get(&idempotency.key)
        {
            batch.pending.push(Pending::Answered(if record.request_hash == idempotency.request_hash {
                Ok(Outcome { events: record.events.clone(), replayed: true })
            } else {
                Err(WriteError::IdempotencyConflict)
            }));
            batch.submissions.push(submission);
            return;
        }
        if let Some(fault) = self.ledger.fault.get() {
            batch.pending.push(Pending::Answered(Err(WriteError::NotReady(fault.clone()))));
            batch.submissions.push(submission);
            return;
        }
        let now = self.now();
        let events = match decide(&self.ledger.state, command, now) {
            Ok(events) => events,
            Err(error) => {
                self.metrics.commands_rejected.fetch_add(1, Ordering::Relaxed);
                batch.pending.push(Pending::Answered(Err(WriteError::Rejected(error))));
                batch.submissions.push(submission);
                return;
            }
        };
        let context = &submission.context;
        let metadata = EventMetadata {
            actor: context.actor.clone().unwrap_or_else(Actor::system),
            request_id: context.request_id.clone(),
            idempotency_key: context.idempotency.as_ref().map(|i| i.key.clone()),
            request_hash: context.idempotency.as_ref().map(|i| hex::encode(i.request_hash)),
        };
        // Every event of the command is checked before any is folded: a command is appended
        // whole or not at all.
        let encoded = serde_json::to_vec(&metadata).map_err(|error| error.to_string()).and_then(|metadata_bytes| {
            let payloads = events
                .iter()
                .map(|event| {
                    let payload = event.payload_bytes();
                    check_reads_back(event, &payload, &metadata_bytes, context.idempotency.as_ref()).map(|()| payload)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((metadata_bytes, payloads))
        });
        let (metadata_bytes, payloads) = match encoded {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::error!(%error, "refused to append an event that does not read back; nothing was appended");
                self.metrics.commands_rejected.fetch_add(1, Ordering::Relaxed);
                batch.pending.push(Pending::Answered(Err(WriteError::Unreadable(error))));
                batch.submissions.push(submission);
                return;
            }
        };
        let first = batch.committed.len();
        for (event, payload) in events.into_iter().zip(payloads) {
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
                payload,
                metadata: metadata_bytes.clone(),
                hash: [0; 32],
            };
            row.hash = row.expected_hash_with(&self.ledger.head_hash, &self.last_reading.1);
            let event = CommittedEvent { position: row.position, recorded_at: now, event };
            // Positions are assigned from the ledger's own position, so folding cannot be
            // out of order.
            let _ = self.ledger.fold(&row, &event, context.idempotency.as_ref());
            batch.rows.push(row);
            batch.committed.push(event);
            batch.idempotency.push(context.idempotency.clone());
        }
        batch.pending.push(Pending::Appended(first..batch.committed.len()));
        batch.submissions.push(submission);
    }

    fn record_commit(&self, batch: &Batch) {
        let rows = batch.rows.len() as u64;
        self.metrics.batch_size.observe_micros(rows * 1_000_000);
        self.metrics.events_appended.fetch_add(rows, Ordering::Relaxed);
        self.metrics.batches_committed.fetch_add(1, Ordering::Relaxed);
    }

    async fn fail(&mut self, batch: Batch, error: StoreError, sent: Sent) {
        tracing::warn!(%error, commands = batch.submissions.len(), "batch failed to commit; every command in it fails");
        self.metrics.batches_failed.fetch_add(1, Ordering::Relaxed);
        // The shared read model must hold every batch committed before this one.
        self.barrier().await;
        self.ledger = self.shared.read().clone();
        let message = error.to_string();
        let contended = matches!(error, StoreError::HeadMoved { .. } | StoreError::LogBusy);
        // The database being away is no bug: the caller is told to retry, and whether the
        // batch may be in the log. If it is, the ledger reset below does not hold it, so the
        // next append expects an old head, loses the compare-and-swap and catches up first:
        // a retry then meets the recorded outcome (an idempotency key's, a call's usage).
        let reach = error.reach();
        for submission in batch.submissions {
            let answer = match (self.ledger.fault.get(), reach) {
                (Some(fault), _) => WriteError::NotReady(fault.clone()),
                _ if contended => WriteError::Contended,
                (None, Some(Reach::Lost)) if sent == Sent::Append => WriteError::OutcomeUnknown(message.clone()),
                (None, Some(_)) => WriteError::Unavailable(message.clone()),
                (None, None) => WriteError::Store(message.clone()),
            };
            let _ = submission.reply.send(Err(answer));
        }
    }

    /// After a lost race: catches up, then takes the append lock (PostgreSQL) and folds what
    /// was appended meanwhile, so that what is decided next is decided at the head and
    /// appended before anyone else's append. The reset of the ledger, which copies it whole,
    /// is done before the lock is taken: the lock holds up every node's appends.
    async fn lock_and_catch_up(&mut self) -> Result<Option<LogLock>, StoreError> {
        self.catch_up().await?;
        let Some(log_lock) = self.store.lock_log().await? else { return Ok(None) };
        let caught_up = match self.store.head().await {
            // The ledger holds no uncommitted event after the reset: it can fold the log.
            Ok((head, _)) => self.catch_up_to(head).await,
            Err(error) => Err(error),
        };
        match caught_up {
            Ok(()) => Ok(Some(log_lock)),
            Err(error) => {
                log_lock.release().await;
                Err(error)
            }
        }
    }

    /// Folds events other nodes appended into the shared read model, then restarts the
    /// writer's ledger from it (dropping the batches that lost the race).
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        self.barrier().await;
        catch_up_shared(&self.store, &self.shared).await?;
        self.ledger = self.shared.read().clone();
        let position = self.ledger.position;
        self.metrics.log_head_position.store(position, Ordering::Relaxed);
        self.committed.send_replace(position);
        Ok(())
    }
}

/// The publisher: folds each committed batch into the shared read model, tells the position
/// watchers (projection runner, waiters), then answers the batch's callers, strictly in the
/// order the writer handed the batches over. Ends when the writer drops its sender.
async fn publish_in_order(publisher: Publisher, mut receiver: mpsc::Receiver<Publication>) {
    while let Some(publication) = receiver.recv().await {
        publisher.deliver(publication);
    }
}

/// What the publisher makes committed batches visible to.
struct Publisher {
    shared: SharedLedger,
    metrics: Arc<Metrics>,
    committed: watch::Sender<i64>,
    feed: Option<Arc<ProjectionFeed>>,
}

impl Publisher {
    /// Does what one publication asks: publish and answer a committed batch, answer a batch
    /// that appended nothing, or release a barrier.
    fn deliver(&self, publication: Publication) {
        match publication {
            Publication::Committed(batch) => {
                self.publish(&batch);
                answer(batch);
            }
            Publication::Answer(batch) => answer(batch),
            Publication::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }

    /// Makes a committed batch visible: the node's read model first, then the projection
    /// feed, then the position watchers (projection runner, waiters).
    fn publish(&self, batch: &Batch) {
        let mut ledger = self.shared.write();
        for ((row, event), idempotency) in batch.rows.iter().zip(&batch.committed).zip(&batch.idempotency) {
            // The rows were folded into the writer's ledger in the same order, so they follow
            // the shared ledger's position exactly.
            let _ = ledger.fold(row, event, idempotency.as_ref());
        }
        let position = ledger.position;
        drop(ledger);
        if let Some(feed) = &self.feed {
            // A copy: the events themselves move into the callers' answers.
            feed.push(batch.committed.iter().map(|committed| (committed.position, committed.event.clone())));
        }
        self.metrics.log_head_position.store(position, Ordering::Relaxed);
        self.committed.send_replace(position);
    }
}

/// Answers every caller of a batch that committed (or appended nothing). The events move
/// into the answers: the ledgers keep their own copies.
fn answer(batch: Batch) {
    let mut events = batch.committed.into_iter();
    for (submission, pending) in batch.submissions.into_iter().zip(batch.pending) {
        let result = match pending {
            Pending::Answered(result) => result,
            Pending::Appended(range) => {
                Ok(Outcome { events: events.by_ref().take(range.len()).collect(), replayed: false })
            }
        };
        let _ = submission.reply.send(result);
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
            if let Err(error) = ledger.fold_stored(row) {
                // Kept until the node stops: the row cannot change, and this node cannot
                // advance past it (`/healthz` and `/readyz` report it).
                let _ = ledger.fault.set(LogFault { position: row.position, reason: error.to_string() });
                return Err(StoreError::Corrupt(error.to_string()));
            }
        }
    }
}

/// Pages read ahead of the dealer while loading.
const LOAD_PAGES_AHEAD: usize = 2;

/// Chunks queued for each decoder, and decoded chunks waiting to be folded, while loading.
const LOAD_CHUNKS_AHEAD: usize = 4;

/// Rows decoded as one chunk while loading. A decoded event takes several hundred bytes; a
/// whole page of 10,000 in one `Vec` was a fresh allocation of megabytes each time, grown by
/// doubling, whose pages the kernel zeroed again (43% of the decoding task in a profile).
/// Buffers of this size are reused by the allocator instead.
pub const DECODED_CHUNK: usize = 1_000;

/// A chunk of the log, decoded.
type DecodedChunk = Vec<LoadedEvent>;

/// Loads the whole log into `shared` at start-up in overlapping stages: a reader (on SQLite a
/// blocking thread of its own), a task that deals its pages out in chunks, two decoders that
/// take the chunks in turn, and this task, which folds the decoded chunks in the same turn,
/// so in log order. Decoding is the largest stage; with one decoder, loading kept 1.4-1.6
/// of the two cores busy. Returns the head.
pub async fn load_shared(store: &Store, shared: &SharedLedger) -> Result<i64, StoreError> {
    let after = shared.read().position;
    let (page_sender, mut pages) = tokio::sync::mpsc::channel(LOAD_PAGES_AHEAD);
    // PostgreSQL's pages come as its COPY sent them, already a chunk each.
    let reader = store.spawn_load_reader(after, DECODED_CHUNK, page_sender);
    let mut to_decoders = Vec::new();
    let mut decoded = Vec::new();
    let mut decoders = Vec::new();
    for _ in 0..2 {
        let (chunk_sender, chunks) = tokio::sync::mpsc::channel(LOAD_CHUNKS_AHEAD);
        let (decoded_sender, receiver) = tokio::sync::mpsc::channel(LOAD_CHUNKS_AHEAD);
        to_decoders.push(chunk_sender);
        decoded.push(receiver);
        decoders.push(tokio::spawn(decode_chunks(chunks, decoded_sender)));
    }
    let dealer = tokio::spawn(async move {
        let mut turn = 0;
        while let Some(page) = pages.recv().await {
            let chunks = match page {
                Ok(LoadPage::Stored(rows)) => {
                    let mut rows = rows.into_iter().peekable();
                    let mut chunks = Vec::new();
                    while rows.peek().is_some() {
                        chunks.push(LoadPage::Stored(rows.by_ref().take(DECODED_CHUNK).collect()));
                    }
                    chunks
                }
                Ok(copied @ LoadPage::Copied(_)) => vec![copied],
                Err(error) => {
                    // The folder meets the error at the decoder whose turn it is.
                    let _ = to_decoders[turn].send(Err(error)).await;
                    return;
                }
            };
            for chunk in chunks {
                if to_decoders[turn].send(Ok(chunk)).await.is_err() {
                    return;
                }
                turn = 1 - turn;
            }
        }
    });
    // Folded chunks are freed by a task of their own. The fold is the one stage that cannot
    // be split, and freeing a chunk's events (allocated by the reader and the decoders) was
    // a sixth of its thread in a profile of loading.
    let (spent_sender, mut spent) = tokio::sync::mpsc::channel::<DecodedChunk>(LOAD_CHUNKS_AHEAD);
    let freer = tokio::spawn(async move { while spent.recv().await.is_some() {} });
    let outcome = async {
        // Chunks were dealt in turn, so the next one in log order is always at `turn`; when
        // that decoder has nothing more, the dealer has finished.
        let mut turn = 0;
        while let Some(chunk) = decoded[turn].recv().await {
            let mut chunk: DecodedChunk = chunk?;
            {
                let mut ledger = shared.write();
                // The events are only freed after this, so the fold takes their text.
                for loaded in &mut chunk {
                    ledger.fold_loaded(loaded).map_err(|error| StoreError::Corrupt(error.to_string()))?;
                }
            }
            // Should the freer be gone, the chunk is freed here instead.
            let _ = spent_sender.send(chunk).await;
            turn = 1 - turn;
        }
        Ok::<(), StoreError>(())
    }
    .await;
    drop(spent_sender);
    let _ = freer.await;
    dealer.abort();
    for decoder in decoders {
        decoder.abort();
    }
    reader.abort();
    outcome?;
    // Anything appended while loading (another node) is folded the ordinary way.
    catch_up_shared(store, shared).await
}

/// One of the loading decoders: decodes each chunk it is given, in order; passes on an error
/// (the reader's, or the first row that does not decode) and stops.
async fn decode_chunks(
    mut chunks: mpsc::Receiver<Result<LoadPage, StoreError>>,
    decoded: mpsc::Sender<Result<DecodedChunk, StoreError>>,
) {
    let corrupt = |error: FoldError| StoreError::Corrupt(error.to_string());
    while let Some(chunk) = chunks.recv().await {
        let result = chunk.and_then(|chunk| match chunk {
            LoadPage::Stored(rows) => {
                rows.into_iter().map(|stored| LoadedEvent::from_stored(stored).map_err(corrupt)).collect()
            }
            LoadPage::Copied(rows) => {
                let mut out = Vec::with_capacity(rows.len());
                for row in rows.rows() {
                    out.push(LoadedEvent::from_copied(&row?).map_err(corrupt)?);
                }
                Ok(out)
            }
        });
        let failed = result.is_err();
        if decoded.send(result).await.is_err() || failed {
            return;
        }
    }
}
