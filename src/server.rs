//! Starting and stopping a node: open and migrate the store, fold the log into memory,
//! start the writer and the projection runner, serve HTTP, and on SIGTERM or Ctrl-C stop
//! accepting, finish in-flight requests, drain the writer, and bring projections to the head.

use std::sync::Arc;

use anyhow::Context;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::Services;
use crate::clock::{OffsetClock, SharedClock, SystemClock};
use crate::config::ServerConfig;
use crate::http::{self, AppState};
use bahi_domain::Command;

use crate::identity::{Identity, new_signing_key};
use crate::ledger::{Ledger, SharedLedger};
use crate::limits::{KeyUses, RateLimiter, flush_key_uses};
use crate::metrics::Metrics;
use crate::projection_feed::ProjectionFeed;
use crate::store::{EventStore, Store};
use crate::writer::{CommandContext, Writer};
use crate::writer::{load_shared, writer};
use crate::{projector, tailer};

/// Opens the store, applies migrations, and folds the whole log into a fresh ledger.
pub async fn open_and_load(database_url: &str) -> anyhow::Result<(Store, SharedLedger)> {
    let store = Store::open(database_url).await.with_context(|| format!("opening {database_url}"))?;
    store.migrate().await.context("applying migrations")?;
    let shared: SharedLedger = Arc::new(RwLock::new(Ledger::new()));
    // A log that does not load stops the start-up, naming the position: serving from the
    // part before it would answer stale balances and could append nothing after it.
    let position = load_shared(&store, &shared)
        .await
        .context("loading the event log failed, so the server does not start (`bahi verify` checks the whole log)")?;
    tracing::info!(engine = store.engine(), position, "event log loaded");
    Ok((store, shared))
}

/// Binds the listen address: first thing at start, so that a busy port stops `bahi serve`
/// before it creates anything (a database, a key file).
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))
}

/// Serves on a bound listener until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(listener: TcpListener, database_url: &str, config: ServerConfig) -> anyhow::Result<()> {
    serve_on(listener, database_url, config, shutdown_signal()).await
}

/// Runs a node on a bound listener until `stop` completes, then shuts down gracefully.
/// (`bahi-bench` runs nodes in-process through this.)
pub async fn serve_on(
    listener: TcpListener,
    database_url: &str,
    mut config: ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    if config.issuer.is_empty() {
        config.issuer = format!("http://{address}");
    }
    let (store, shared) = open_and_load(database_url).await?;
    let closing_store = store.clone();
    let metrics = Arc::new(Metrics::default());
    let position = shared.read().position;
    metrics.log_head_position.store(position, std::sync::atomic::Ordering::Relaxed);
    let (committed_sender, committed_receiver) = watch::channel(position);
    let test_clock = config.test_clock.then(|| Arc::new(OffsetClock::default()));
    if test_clock.is_some() {
        tracing::warn!("the test clock is on: the operator can move this node's time forward");
    }
    let clock: SharedClock = match &test_clock {
        Some(test_clock) => test_clock.clone(),
        None => Arc::new(SystemClock),
    };
    let (writer_handle, writer_task) =
        writer(store.clone(), shared.clone(), metrics.clone(), committed_sender.clone(), clock.clone());
    let feed = Arc::new(ProjectionFeed::default());
    let writer_join = tokio::spawn(writer_task.feed_projections(feed.clone()).run());
    let shutdown = CancellationToken::new();
    let projector_join =
        tokio::spawn(projector::run(store.clone(), committed_receiver, metrics.clone(), feed, shutdown.clone()));
    let tailer_join = tailer::spawn(
        &store,
        shared.clone(),
        committed_sender,
        writer_handle.appended_head(),
        metrics.clone(),
        shutdown.clone(),
    );

    let identity = Arc::new(
        Identity::new(config.key_encryption_key, config.issuer.clone(), clock.clone())
            .with_token_rules(config.token_rules),
    );
    ensure_signing_key(&identity, &shared, &writer_handle).await?;
    let refresher_join = tokio::spawn(refresh_jwks(identity.clone(), shared.clone(), shutdown.clone()));
    let key_uses = Arc::new(KeyUses::default());
    let stop_flusher = CancellationToken::new();
    let flusher_join =
        tokio::spawn(flush_key_uses(key_uses.clone(), shared.clone(), writer_handle.clone(), stop_flusher.clone()));
    let expirer_join =
        tokio::spawn(expire_holds(shared.clone(), writer_handle.clone(), clock.clone(), stop_flusher.clone()));
    let transport = config.transport;
    let proxy = Arc::new(crate::app::proxy::ProxyRuntime::new(config.proxy).context("the proxy's HTTP client")?);
    let state = AppState::new(Services {
        writer: writer_handle,
        ledger: shared,
        metrics,
        config: Arc::new(config),
        store,
        rate_limiter: Arc::new(RateLimiter::default()),
        key_uses,
        identity,
        clock,
        test_clock,
        proxy,
    });
    if state.config.operator_key_hash.is_none() {
        tracing::warn!(
            "no operator key: operator endpoints (prices, grants, gateway keys, key rotation) answer 401 \
             until the server is started with BAHI_OPERATOR_KEY"
        );
    }
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("bahi listening on http://{address}");
    tracing::info!(%address, "listening");

    let metrics = state.metrics.clone();
    // The state moves into the router: the writer stops once its last handle is dropped.
    let pages = crate::console::router(&state);
    crate::transport::serve(listener, http::router(state, pages), transport, metrics, stop).await;

    // Every request has finished and the router is gone; the key-use flusher records what
    // it holds and drops the last writer handle, so the writer drains its queue and stops.
    stop_flusher.cancel();
    flusher_join.await.context("key-use flusher")?;
    expirer_join.await.context("hold expirer")?;
    tracing::info!("draining the writer");
    writer_join.await.context("writer task")?;
    shutdown.cancel();
    projector_join.await.context("projection runner")?;
    refresher_join.await.context("JWKS refresher")?;
    if let Some(tailer) = tailer_join {
        tailer.await.context("log tailer")?;
    }
    closing_store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Gives the embedded issuer its first signing key, and checks that the current one can be
/// unsealed with this node's key-encryption key (failing start-up if not).
async fn ensure_signing_key(identity: &Identity, ledger: &SharedLedger, writer: &Writer) -> anyhow::Result<()> {
    if ledger.read().state.current_signing_key().is_none() {
        let (_, key) = new_signing_key(identity.key_encryption_key())?;
        writer
            .submit(Command::AddSigningKey { key }, CommandContext::default())
            .await
            .map_err(|error| anyhow::anyhow!("adding the first signing key: {error}"))?;
    }
    identity.signing_key(&ledger.read().state)?;
    Ok(())
}

/// How often holds are checked for expiry; an expired hold is released within this long.
const HOLD_EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Releases holds whose time is up, through the writer (each release is an event).
async fn expire_holds(ledger: SharedLedger, writer: Writer, clock: SharedClock, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HOLD_EXPIRY_INTERVAL) => {}
        }
        let now = clock.now();
        let due = ledger.read().state.hold_expiries.first_key_value().is_some_and(|(key, _)| key.time() <= now);
        if due && let Err(error) = writer.submit(Command::ExpireHolds, CommandContext::default()).await {
            tracing::warn!(%error, "expiring holds failed; the next turn retries");
        }
    }
}

/// Keeps JWK sets fetched from external issuers' `jwks_uri` fresh.
async fn refresh_jwks(identity: Arc<Identity>, ledger: SharedLedger, shutdown: CancellationToken) {
    loop {
        let issuers: Vec<_> = ledger
            .read()
            .state
            .issuers
            .values()
            .filter(|record| record.revoked_at.is_none())
            .filter_map(|record| Some((record.id.clone(), record.jwks_uri.clone()?)))
            .collect();
        identity.refresh_stale(issuers).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
