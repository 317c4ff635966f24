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
use crate::store::{PostgresStore, Store};
use crate::writer::catch_up_shared;

/// Longest time an event appended elsewhere can go unseen here when notifications fail.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub async fn run(
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
    loop {
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
        let before = shared.read().position;
        match catch_up_shared(&store, &shared).await {
            Ok(position) if position > before => {
                committed.send_replace(position);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "tailing the log failed; retrying"),
        }
    }
}
