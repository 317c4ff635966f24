//! The SQL projection runner: folds committed events into the read-model tables of
//! `bahi_projections`, a page at a time, each page in one transaction with its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use bahi_domain::Event;
use bahi_projections::batch::{PlannedPage, Planner, plan};
use bahi_projections::{PROJECTIONS, Projection, SqlOperation};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::projection_feed::ProjectionFeed;
use crate::store::{EventStore, Store, StoreError};

/// Events folded per transaction by the live runner; each transaction costs a fixed amount
/// besides its rows. Measured under authorize+usage load (bench http, SQLite, quiet machine)
/// when SQLite pages still took turns with the writer's commits: pages of 200 gave
/// 6.4-6.8k pairs/s (p99 30 ms), 1000 gave 7.9-8.1k (p99 45 ms), 2000 no more throughput and
/// p99 65 ms. Since then SQLite pages are written to a file of their own.
pub const PROJECTION_PAGE: i64 = 1000;
/// Events per page that `bahi rebuild` reads from the log and plans: it runs without a writer
/// waiting on a lock, so large pages and multi-row statements of hundreds of rows. PostgreSQL
/// once planned runs of 100,000 events together, each table's rows of a run sorted by key
/// (8.9-9.9 s for a million gateway events against 11.0-11.7 s page by page). Since its
/// rebuild builds the busiest keys after the rows, pages are as fast (6.9-7.9 s against
/// 7.3-8.1 s) in less than half the memory (154-185 MB against 408-428 MB; BENCHMARKS.md).
pub const REBUILD_PAGE: i64 = crate::store::MAX_READ_PAGE;
/// How often the runner looks for events other nodes appended, without a notification.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// After a commit, the runner waits this long before folding, so that one projection
/// transaction covers many writer batches. On SQLite both take the one write lock; folding
/// after every batch made the writer queue behind the runner (measured: authorize at 64
/// connections fell from 7.0k/s to 3.9k/s, p99 from 34 ms to 190 ms).
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Planned pages read ahead of the one being written: reading and decoding page N+1
/// overlaps writing page N (two cores), and memory stays bounded.
const PAGES_AHEAD: usize = 2;

/// Brings every SQL projection up to the head of the log in pages of `PROJECTION_PAGE`
/// events. Returns the lowest checkpoint.
pub async fn catch_up_projections(store: &Store, metrics: Option<&Metrics>) -> Result<i64, StoreError> {
    catch_up(store, metrics, PROJECTION_PAGE, None).await
}

/// As `catch_up_projections`, but the events that `feed` holds right after the projections'
/// checkpoint are taken from it instead of being read back from the log and decoded; the
/// rest (events the feed dropped for room, or that another node appended) are read as
/// usual. The live runner of a node whose writer fills `feed` uses this.
pub async fn catch_up_projections_from_feed(
    store: &Store,
    metrics: Option<&Metrics>,
    feed: &ProjectionFeed,
) -> Result<i64, StoreError> {
    catch_up(store, metrics, PROJECTION_PAGE, Some(feed)).await
}

/// How far one run over a group of projections got.
enum Progress {
    /// The log has no event after this position.
    Head(i64),
    /// The group reached the checkpoint of the projections ahead of it.
    Joined,
    /// Another runner moved a checkpoint first; read them again.
    Lost,
}

/// Brings every SQL projection up to the head of the log, `page_events` events per
/// transaction. Projections at the same checkpoint advance together: each page is read and
/// decoded once for all of them, and their rows and checkpoints are written in one
/// transaction. A projection behind the others is brought up to them first.
pub async fn catch_up_projections_in_pages(
    store: &Store,
    metrics: Option<&Metrics>,
    page_events: i64,
) -> Result<i64, StoreError> {
    catch_up(store, metrics, page_events, None).await
}

async fn catch_up(
    store: &Store,
    metrics: Option<&Metrics>,
    page_events: i64,
    feed: Option<&ProjectionFeed>,
) -> Result<i64, StoreError> {
    loop {
        let checkpoints = read_checkpoints(store).await?;
        let from = checkpoints.iter().copied().min().unwrap_or(0);
        let group: Vec<&'static Projection> = PROJECTIONS
            .iter()
            .zip(&checkpoints)
            .filter(|(_, checkpoint)| **checkpoint == from)
            .map(|(projection, _)| projection)
            .collect();
        let until = checkpoints.iter().copied().filter(|checkpoint| *checkpoint > from).min();
        // The feed serves only projections that are all at one checkpoint; one behind the
        // others is brought up to them from the log first.
        let from = match feed {
            Some(feed) if until.is_none() => {
                match advance_from_feed(store, metrics, &group, from, page_events, feed).await? {
                    Some(position) => position,
                    None => continue,
                }
            }
            _ => from,
        };
        match advance(store, metrics, group, from, until, page_events).await? {
            Progress::Head(position) => {
                if let Some(metrics) = metrics {
                    for (projection, checkpoint) in PROJECTIONS.iter().zip(&checkpoints) {
                        metrics.record_projection(projection.name, (*checkpoint).max(position));
                    }
                }
                return Ok(position);
            }
            Progress::Joined | Progress::Lost => {}
        }
    }
}

/// `bahi rebuild`: empties every SQL projection and replays the whole log into it, page by
/// page in one transaction. Returns the position the projections reached.
///
/// On SQLite that transaction is on the read-model file. Its dirty pages stay in a large page
/// cache until the commit, so each is written to the WAL once; in pages of REBUILD_PAGE events
/// each transaction wrote again every page it touched, and on a gateway-shaped log (random
/// call ids) that was most of the tree every time (BENCHMARKS.md). On PostgreSQL the new
/// tables are built aside and swapped in at the end. On both engines secondary indexes (and
/// on PostgreSQL the keys of the tables written by plain inserts) are built from sorted keys
/// after the rows. Readers see the old read models until the commit, never a half-built one.
pub async fn rebuild_projections(store: &Store) -> Result<i64, StoreError> {
    let (sender, receiver) = mpsc::channel(PAGES_AHEAD);
    let group: Vec<&'static Projection> = PROJECTIONS.iter().collect();
    let planner = Planner::from_empty_tables();
    let reader = tokio::spawn(read_and_plan(store.clone(), group, 0, None, REBUILD_PAGE, planner, sender));
    let rebuilt = match store {
        Store::Sqlite(sqlite) => sqlite.rebuild_projections(receiver).await,
        Store::Postgres(postgres) => postgres.rebuild_projections(receiver).await,
    };
    reader.abort();
    rebuilt
}

/// Advances `group` (all at `from`) page by page until the head of the log or `until`.
async fn advance(
    store: &Store,
    metrics: Option<&Metrics>,
    group: Vec<&'static Projection>,
    from: i64,
    until: Option<i64>,
    page_events: i64,
) -> Result<Progress, StoreError> {
    let names: Vec<&'static str> = group.iter().map(|projection| projection.name).collect();
    let (sender, mut receiver) = mpsc::channel(PAGES_AHEAD);
    let planner = Planner::default();
    let reader = tokio::spawn(read_and_plan(store.clone(), group, from, until, page_events, planner, sender));
    let mut position = from;
    let outcome = loop {
        let Some(page) = receiver.recv().await else {
            break Ok(if until.is_some_and(|until| position >= until) {
                Progress::Joined
            } else {
                Progress::Head(position)
            });
        };
        let page: PlannedPage = match page {
            Ok(page) => page,
            Err(error) => break Err(error),
        };
        match store.apply_projections(&names, position, page.batches, page.last_position).await {
            Ok(true) => position = page.last_position,
            Ok(false) => break Ok(Progress::Lost),
            Err(error) => break Err(error),
        }
        record_positions(metrics, &names, position);
    };
    // Whatever the reader still holds is stale once we stop.
    reader.abort();
    outcome
}

/// Advances `group` (all at `from`, none ahead of them) with the events `feed` holds right
/// after `from`, a page of at most `page_events` at a time, until the feed has no next event.
/// Returns the position reached, or None when another runner moved a checkpoint first.
async fn advance_from_feed(
    store: &Store,
    metrics: Option<&Metrics>,
    group: &[&'static Projection],
    from: i64,
    page_events: i64,
    feed: &ProjectionFeed,
) -> Result<Option<i64>, StoreError> {
    let names: Vec<&'static str> = group.iter().map(|projection| projection.name).collect();
    let limit = usize::try_from(page_events).unwrap_or(1).max(1);
    let mut position = from;
    loop {
        let events = feed.take_after(position, limit);
        let Some(&(last_position, _)) = events.last() else { return Ok(Some(position)) };
        let mut operations = Vec::with_capacity(events.len() * 2);
        for (at, event) in &events {
            project(group, event, *at, &mut operations);
        }
        if !store.apply_projections(&names, position, plan(operations), last_position).await? {
            return Ok(None);
        }
        position = last_position;
        record_positions(metrics, &names, position);
    }
}

/// The SQL operations of every projection of `group` for one event: the log's pages and the
/// feed's are planned alike.
fn project(group: &[&'static Projection], event: &Event, position: i64, operations: &mut Vec<SqlOperation>) {
    for projection in group {
        operations.extend((projection.apply)(event, position));
    }
}

/// Reports the projections named as at `position`.
fn record_positions(metrics: Option<&Metrics>, names: &[&'static str], position: i64) {
    if let Some(metrics) = metrics {
        for name in names {
            metrics.record_projection(name, position);
        }
    }
}

/// Reads pages after `from` (up to `until`), decodes each event once, and plans the rows
/// of every projection of the group with `planner`; sends the planned pages in order until
/// the head of the log. The receiver applies them in that order or stops, which is what lets
/// the planner carry what it knows (each org's latest balance) from one page to the next.
async fn read_and_plan(
    store: Store,
    group: Vec<&'static Projection>,
    from: i64,
    until: Option<i64>,
    page_events: i64,
    mut planner: Planner,
    sender: mpsc::Sender<Result<PlannedPage, StoreError>>,
) {
    let (page_sender, mut pages) = mpsc::channel(PAGES_AHEAD);
    let reader = store.spawn_page_reader(from, until, page_events, page_sender);
    let mut operations = Vec::new();
    while let Some(page) = pages.recv().await {
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                break;
            }
        };
        let Some(last) = page.last() else { continue };
        let last_position = last.position;
        for row in &page {
            let event = match Event::decode(&row.event_type, row.schema_version, &row.payload) {
                Ok(event) => event,
                Err(error) => {
                    let _ = sender.send(Err(StoreError::Corrupt(format!("position {}: {error}", row.position)))).await;
                    reader.abort();
                    return;
                }
            };
            project(&group, &event, row.position, &mut operations);
            for operation in operations.drain(..) {
                planner.push(operation);
            }
        }
        let planned = PlannedPage { last_position, batches: planner.take_batches() };
        if sender.send(Ok(planned)).await.is_err() {
            break;
        }
    }
    reader.abort();
}

/// Runs until cancelled, then catches up one last time so a graceful stop leaves the read
/// models at the head of the log. On PostgreSQL only the node that holds the projection lock
/// (`Leadership`) folds events into the shared read models; the others follow its
/// checkpoints, so that every node's freshness wait and lag metric stay true.
pub async fn run(
    store: Store,
    mut committed: watch::Receiver<i64>,
    metrics: Arc<Metrics>,
    feed: Arc<ProjectionFeed>,
    shutdown: CancellationToken,
) {
    let mut leadership = Leadership::new(&store);
    loop {
        let leads = leadership.leads().await;
        metrics.projection_runner.store(leads, std::sync::atomic::Ordering::Relaxed);
        let result = match leads {
            true => catch_up_projections_from_feed(&store, Some(&metrics), &feed).await,
            false => follow(&store, &metrics, &feed).await,
        };
        if let Err(error) = &result {
            tracing::warn!(%error, "projection runner failed; retrying");
            // sleep-ok: a failing database is not retried in a tight loop.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A follower whose node has committed past the checkpoints looks again soon: reads
        // on this node wait for them.
        let behind = !leads && result.is_ok_and(|position| position < *committed.borrow());
        let settle = if leads { DEBOUNCE } else { FOLLOW_POLL };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = committed.changed() => {
                if changed.is_err() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(settle) => {}
                }
            }
            _ = tokio::time::sleep(if behind { FOLLOW_POLL } else { POLL_INTERVAL }) => {}
        }
    }
    if !leadership.leads().await {
        return;
    }
    if let Err(error) = catch_up_projections_from_feed(&store, Some(&metrics), &feed).await {
        tracing::warn!(%error, "final projection catch-up failed; the next start resumes from the checkpoint");
    }
}

/// A follower's turn: reads the projections' checkpoints, reports them as this node's, and
/// drops the fed events they cover. Returns the lowest.
async fn follow(store: &Store, metrics: &Metrics, feed: &ProjectionFeed) -> Result<i64, StoreError> {
    let checkpoints = read_checkpoints(store).await?;
    for (projection, checkpoint) in PROJECTIONS.iter().zip(&checkpoints) {
        metrics.record_projection(projection.name, *checkpoint);
    }
    let lowest = checkpoints.iter().copied().min().unwrap_or(0);
    feed.take_after(lowest, 0);
    Ok(lowest)
}

/// Every projection's checkpoint, in the order of `PROJECTIONS`.
async fn read_checkpoints(store: &Store) -> Result<Vec<i64>, StoreError> {
    let mut checkpoints = Vec::with_capacity(PROJECTIONS.len());
    for projection in PROJECTIONS {
        checkpoints.push(store.checkpoint(projection.name).await?);
    }
    Ok(checkpoints)
}

/// Which node of a PostgreSQL cluster runs the projections: the one whose dedicated session
/// holds the projection lock. Each runner folding every event raced the others page by page,
/// and the losers' work was thrown away (one node's audit projection fell 20,000 events
/// behind under load). A leader that dies or is cut off loses its session and with it the
/// lock; a paused one loses it once its session has been idle `LEADER_IDLE_TIMEOUT`. A
/// follower tries to take it every `POLL_INTERVAL`. On SQLite the one node always leads.
struct Leadership {
    pool: Option<sqlx::PgPool>,
    held: Option<Held>,
    last_try: Option<std::time::Instant>,
}

/// The session that holds the lock, kept alive by a task of its own, which says when it ends.
struct Held {
    keeper: tokio::task::JoinHandle<()>,
    alive: watch::Receiver<bool>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The keeper owns the session (a connection detached from the pool): ending it ends
        // the session, which releases the lock.
        self.keeper.abort();
    }
}

/// Arbitrary constant for the advisory lock that names the projecting node.
const PROJECTION_LOCK_KEY: i64 = 0x6261_6869_7072_6f6a;
/// How long the leader's session may sit idle before the server ends it. Its keeper pings
/// it far more often, unless the node is paused or cut off.
const LEADER_IDLE_TIMEOUT: &str = "5s";
/// How often the keeper pings the leader's session.
const KEEPER_PING: Duration = Duration::from_secs(1);
/// How soon a follower whose node has committed past the checkpoints reads them again.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

impl Leadership {
    fn new(store: &Store) -> Leadership {
        let pool = match store {
            Store::Sqlite(_) => None,
            Store::Postgres(postgres) => Some(postgres.pool().clone()),
        };
        Leadership { pool, held: None, last_try: None }
    }

    /// Whether this node runs the projections now; a follower tries to take the lock, at
    /// most once per `POLL_INTERVAL`.
    async fn leads(&mut self) -> bool {
        let Some(pool) = &self.pool else { return true };
        if let Some(held) = &self.held {
            if *held.alive.borrow() {
                return true;
            }
            tracing::warn!("this node lost the projection lock; another node may run the projections now");
            self.held = None;
        }
        if self.last_try.is_some_and(|tried| tried.elapsed() < POLL_INTERVAL) {
            return false;
        }
        self.last_try = Some(std::time::Instant::now());
        match take_projection_lock(pool).await {
            Ok(Some(held)) => {
                tracing::info!("this node runs the projections");
                self.held = Some(held);
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::debug!(%error, "could not try the projection lock");
                false
            }
        }
    }
}

/// Tries the projection lock on a session of its own; None when another node holds it.
async fn take_projection_lock(pool: &sqlx::PgPool) -> Result<Option<Held>, StoreError> {
    use sqlx::Connection;
    let mut connection = pool.acquire().await?.detach();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PROJECTION_LOCK_KEY)
        .fetch_one(&mut connection)
        .await?;
    if !taken {
        let _ = connection.close().await;
        return Ok(None);
    }
    sqlx::query("SELECT set_config('idle_session_timeout', $1, false)")
        .bind(LEADER_IDLE_TIMEOUT)
        .execute(&mut connection)
        .await?;
    let (alive_sender, alive) = watch::channel(true);
    let keeper = tokio::spawn(async move {
        loop {
            // sleep-ok: the keeper's ping interval.
            tokio::time::sleep(KEEPER_PING).await;
            if let Err(error) = connection.ping().await {
                tracing::warn!(%error, "the projection lock's session ended");
                let _ = alive_sender.send(false);
                return;
            }
        }
    });
    Ok(Some(Held { keeper, alive }))
}
