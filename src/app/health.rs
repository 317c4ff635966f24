//! Liveness and readiness, and the metrics text.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::Services;

/// What `/healthz` and `/readyz` say: `ok` while the node folds the log as it grows;
/// `not_ready`, naming the position and why, once it met an event it cannot fold (it then
/// answers no command: its writer cannot append after that event). `/readyz` also holds a
/// PostgreSQL node to its tailer: not ready while other nodes' events may be going unseen.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Health {
    /// `ok`, or `not_ready` (then the answer is 503).
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub engine: &'static str,
    pub log_position: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// PostgreSQL only: how the tailer of other nodes' events is doing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tailer: Option<TailerView>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TailerView {
    /// Milliseconds since the tailer last read the log (and so the database) to its end.
    pub caught_up_milliseconds_ago: Option<u64>,
    pub failures: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// A tailer that has not read the log to its end for this long makes its node not ready:
/// it polls every 250 ms, so a healthy one is never near it.
pub const READY_TAIL_MILLISECONDS: u64 = 2_000;

/// Liveness: the log is readable.
pub fn health(services: &Services) -> Health {
    let (log_position, fault) = {
        let ledger = services.ledger.read();
        (ledger.position, ledger.fault.get().cloned())
    };
    let engine = services.store.engine();
    let tailer = tailer_view(services);
    match fault {
        None => Health { status: "ok", engine, log_position, unreadable_position: None, reason: None, tailer },
        Some(fault) => Health {
            status: "not_ready",
            engine,
            log_position,
            unreadable_position: Some(fault.position),
            reason: Some(fault.to_string()),
            tailer,
        },
    }
}

/// Readiness: liveness, and on PostgreSQL a tailer that read the log to its end within
/// `READY_TAIL_MILLISECONDS` (so the database answers, and revocations made on other nodes
/// are being seen).
pub fn readiness(services: &Services) -> Health {
    let mut health = health(services);
    let tail_behind = health
        .tailer
        .as_ref()
        .is_some_and(|tailer| tailer.caught_up_milliseconds_ago.is_none_or(|millis| millis > READY_TAIL_MILLISECONDS));
    if health.status == "ok" && tail_behind {
        health.status = "not_ready";
        let last_error = health.tailer.as_ref().and_then(|tailer| tailer.last_error.clone());
        health.reason = Some(match last_error {
            Some(error) => format!("other nodes' events are not being read: {error}"),
            None => "other nodes' events have not been read yet".to_owned(),
        });
    }
    health
}

impl Health {
    /// Whether the answer is ready (200) rather than not (503).
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

fn tailer_view(services: &Services) -> Option<TailerView> {
    let tailer = &services.metrics.tailer;
    if !tailer.running.load(Ordering::Relaxed) {
        return None;
    }
    Some(TailerView {
        caught_up_milliseconds_ago: tailer.caught_up_milliseconds_ago(),
        failures: tailer.failures.load(Ordering::Relaxed),
        reconnects: tailer.reconnects.load(Ordering::Relaxed),
        last_error: tailer.last_error.lock().clone(),
    })
}

/// The node's metrics in Prometheus' text format.
pub fn metrics(services: &Services) -> String {
    services.metrics.render()
}
