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

async fn run(postgres: PostgresStore, tail: Tail, appended: Arc<AtomicI64>, shutdown: CancellationToken) {
    let mut listener = match PgListener::connect_with(postgres.pool()).await {
        Ok(mut listener) => match listener.listen(postgres_notify_channel()).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "LISTEN failed; polling only");
                None
            }
        },
        Err(error) => {
            tracing::warn!(%error, "no LISTEN connection; polling only");
            None
        }
    };
    let mut retry_after: Option<Duration> = None;
    loop {
        if let Some(delay) = retry_after {
            tokio::select! {
                _ = shutdown.cancelled() => return,
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
        let notified = async {
            match listener.as_mut() {
                // try_recv, not recv: recv reconnects silently, and what was sent while the
                // connection was away is lost. Here a loss is counted, and the catch-up
                // below reads what was missed by position; the next call reconnects.
                Some(listener) => match listener.try_recv().await {
                    Ok(Some(notification)) => notification.payload().parse().ok(),
                    Ok(None) => {
                        tail.metrics.tailer.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("the LISTEN connection was lost; catching up by position");
                        None
                    }
                    Err(error) => {
                        // Not at once: a listener failing fast would spin; the poll wakes us.
                        tracing::warn!(%error, "LISTEN failed; polling until it reconnects");
                        std::future::pending::<Option<i64>>().await
                    }
                },
                None => std::future::pending::<Option<i64>>().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            head = notified => {
                // Every commit notifies, this node's own included: without this check each
                // of them cost a read of the log (measured under authorize+usage load).
                if head.is_some_and(|head| head <= appended.load(Ordering::Acquire)) {
                    continue;
                }
            },
            _ = tokio::time::sleep(POLL_INTERVAL) => {},
        }
        if let Err(error) = tail.catch_up().await {
            tracing::warn!(%error, retry_in_ms = POLL_INTERVAL.as_millis() as u64, "tailing the log failed");
            retry_after = Some(POLL_INTERVAL);
        }
    }
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
