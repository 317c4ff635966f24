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
use crate::store::postgres_notify_channel;
use crate::store::{PostgresStore, Store, StoreError};
use crate::writer::catch_up_shared;

/// Longest time an event appended elsewhere can go unseen here when notifications fail.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// After a failed catch-up the tailer waits, doubling from `POLL_INTERVAL` up to this,
/// before it reads again, whatever notifications arrive: an event that does not decode
/// fails every time, and each commit elsewhere would otherwise wake another attempt.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Starts the tailer when other nodes may append to this node's log (PostgreSQL); an SQLite
/// file has one writer, this node's, so there is nothing to tail.
pub fn spawn(
    store: &Store,
    shared: SharedLedger,
    committed: watch::Sender<i64>,
    appended: Arc<AtomicI64>,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    match store {
        Store::Postgres(postgres) => {
            Some(tokio::spawn(run(postgres.clone(), store.clone(), shared, committed, appended, shutdown)))
        }
        Store::Sqlite(_) => None,
    }
}

async fn run(
    postgres: PostgresStore,
    store: Store,
    shared: SharedLedger,
    committed: watch::Sender<i64>,
    appended: Arc<AtomicI64>,
    shutdown: CancellationToken,
) {
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
            retry_after = catch_up(&store, &shared, &committed).await.err().map(|error| {
                let delay = (delay * 2).min(MAX_RETRY_INTERVAL);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "tailing the log failed again");
                delay
            });
            continue;
        }
        let notified = async {
            match listener.as_mut() {
                Some(listener) => {
                    listener.recv().await.ok().and_then(|notification| notification.payload().parse().ok())
                }
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
        if let Err(error) = catch_up(&store, &shared, &committed).await {
            tracing::warn!(%error, retry_in_ms = POLL_INTERVAL.as_millis() as u64, "tailing the log failed");
            retry_after = Some(POLL_INTERVAL);
        }
    }
}

/// Folds what other nodes appended and tells the position watchers how far that got.
async fn catch_up(store: &Store, shared: &SharedLedger, committed: &watch::Sender<i64>) -> Result<(), StoreError> {
    let before = shared.read().position;
    let result = catch_up_shared(store, shared).await;
    // A failed catch-up may still have folded whole pages before the one that failed.
    let position = shared.read().position;
    if position > before {
        committed.send_replace(position);
    }
    result.map(|_| ())
}
