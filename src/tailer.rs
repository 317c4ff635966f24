//! On PostgreSQL, other nodes append too. The tailer folds their events into this node's
//! read model: woken by LISTEN/NOTIFY (one notification per commit, not per row), with
//! polling as the fallback when a notification is missed or the listener is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ledger::SharedLedger;
use crate::metrics::Metrics;
use crate::store::postgres_notify_channel;
use crate::store::{PostgresStore, Store, StoreError};
use crate::writer::catch_up_shared;

/// Longest time an event appended elsewhere can go unseen here when notifications fail.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// After a failed catch-up the tailer waits, doubling from `POLL_INTERVAL` up to this,
/// before it reads again, whatever notifications arrive: an event that does not decode
/// fails every time, and each commit elsewhere would otherwise wake another attempt.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait between catch-ups while the database cannot be reached.
pub const MAX_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the tailer when other nodes may append to this node's log (PostgreSQL); an SQLite
/// file has one writer, this node's, so there is nothing to tail.
pub fn spawn(
    store: &Store,
    shared: SharedLedger,
    committed: watch::Sender<i64>,
    appended: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    match store {
        Store::Postgres(postgres) => {
            metrics.tailer.running.store(true, Ordering::Relaxed);
            let tail = Tail { store: store.clone(), shared, committed, metrics };
            Some(tokio::spawn(run(postgres.clone(), tail, appended, shutdown)))
        }
        Store::Sqlite(_) => None,
    }
}

/// What a catch-up reads, folds into, tells, and reports to.
struct Tail {
    store: Store,
    shared: SharedLedger,
    committed: watch::Sender<i64>,
    metrics: Arc<Metrics>,
}

/// What the LISTEN task has seen: the highest head any notification named, and how many
/// times its connection was lost (each loss may have dropped notifications).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Heard {
    highest_head: i64,
    losses: u64,
}

/// Whether a wake-up needs a read of the log: only when a loss may have hidden something,
/// or when the head it names is past both what this node appended itself and what it has
/// already folded (a notification queued behind a catch-up that read past it needs none).
fn read_needed(before: Heard, now: Heard, appended: i64, folded: i64) -> bool {
    now.losses != before.losses || now.highest_head > appended.max(folded)
}

async fn run(postgres: PostgresStore, tail: Tail, appended: Arc<AtomicI64>, shutdown: CancellationToken) {
    let (heard_sender, heard) = watch::channel(Heard::default());
    let mut heard = Some(heard);
    // The listener runs in a task of its own: dropped mid-reconnect (between connecting and
    // LISTEN) by the poll below, sqlx's listener loses its notification buffer for good and
    // the node would hear nothing more.
    let listening = tokio::spawn(listen(postgres, heard_sender, tail.metrics.clone(), shutdown.clone()));
    let mut last_heard = Heard::default();
    let mut retry_after: Option<Duration> = None;
    loop {
        if let Some(delay) = retry_after {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {},
            }
            retry_after = tail.catch_up().await.err().map(|error| {
                // The backoff is for an event that fails every time; while the database is
                // away (a restart) each attempt already waits for a connection, and the
                // node should read the log as soon as it is back.
                let longest = if error.reach().is_some() { MAX_RECONNECT_INTERVAL } else { MAX_RETRY_INTERVAL };
                let delay = (delay * 2).min(longest);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "tailing the log failed again");
                delay
            });
            continue;
        }
        let woken = async {
            match heard.as_mut() {
                Some(receiver) => Some(receiver.changed().await.ok().map(|()| *receiver.borrow_and_update())),
                None => std::future::pending().await,
            }
        };
        let mut listener_ended = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            woken = woken => match woken.flatten() {
                // The LISTEN task ended (it does only at shutdown): polling carries on.
                None => listener_ended = true,
                Some(now) => {
                    let before = std::mem::replace(&mut last_heard, now);
                    let folded = tail.shared.read().position;
                    if !read_needed(before, now, appended.load(Ordering::Acquire), folded) {
                        continue;
                    }
                }
            },
            _ = tokio::time::sleep(POLL_INTERVAL) => {},
        }
        if listener_ended {
            heard = None;
            continue;
        }
        if let Err(error) = tail.catch_up().await {
            tracing::warn!(%error, retry_in_ms = POLL_INTERVAL.as_millis() as u64, "tailing the log failed");
            retry_after = Some(POLL_INTERVAL);
        }
    }
    listening.abort();
}

/// Holds the LISTEN connection, reconnecting with a bounded backoff, and publishes what it
/// hears. try_recv, not recv: recv reconnects silently, and what was sent while the
/// connection was away is lost; here each loss is counted so that the tailer reads the log
/// by position.
async fn listen(
    postgres: PostgresStore,
    heard: watch::Sender<Heard>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = POLL_INTERVAL;
    loop {
        let listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            listener = connect_listener(&postgres) => listener,
        };
        match listener {
            Ok(mut listener) => {
                backoff = POLL_INTERVAL;
                // A (re)connection is itself a loss: anything sent before LISTEN is unheard.
                heard.send_modify(|heard| heard.losses += 1);
                loop {
                    let received = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => {
                            if let Ok(head) = notification.payload().parse::<i64>() {
                                heard.send_if_modified(|heard| {
                                    let newer = head > heard.highest_head;
                                    heard.highest_head = heard.highest_head.max(head);
                                    newer
                                });
                            }
                        }
                        Ok(None) => {
                            metrics.tailer.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("the LISTEN connection was lost; catching up by position");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "LISTEN failed; polling until it reconnects");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "no LISTEN connection; polling until it connects"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {},
        }
        backoff = (backoff * 2).min(MAX_RECONNECT_INTERVAL);
    }
}

async fn connect_listener(postgres: &PostgresStore) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(postgres.pool()).await?;
    listener.listen(postgres_notify_channel()).await?;
    Ok(listener)
}

impl Tail {
    /// Folds what other nodes appended, tells the position watchers how far that got, and
    /// records the outcome for `/readyz`.
    async fn catch_up(&self) -> Result<(), StoreError> {
        let before = self.shared.read().position;
        let result = catch_up_shared(&self.store, &self.shared).await;
        // A failed catch-up may still have folded whole pages before the one that failed.
        let position = self.shared.read().position;
        if position > before {
            self.committed.send_replace(position);
        }
        match &result {
            Ok(_) => self.metrics.tailer.record_caught_up(),
            Err(error) => self.metrics.tailer.record_failure(error),
        }
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::{Heard, read_needed};

    #[test]
    fn a_notification_already_read_past_needs_no_read() {
        let before = Heard { highest_head: 10, losses: 1 };
        let now = Heard { highest_head: 12, losses: 1 };
        assert!(!read_needed(before, now, 12, 5), "this node appended up to 12 itself");
        assert!(!read_needed(before, now, 5, 12), "a catch-up already folded up to 12");
        assert!(!read_needed(before, now, 5, 15));
        assert!(read_needed(before, now, 11, 11), "12 is past both");
    }

    #[test]
    fn a_lost_connection_always_needs_a_read() {
        let before = Heard { highest_head: 10, losses: 1 };
        let now = Heard { highest_head: 10, losses: 2 };
        assert!(read_needed(before, now, 100, 100));
    }
}
