//! Liveness and readiness, and the metrics text.

use serde::Serialize;

use super::Services;

/// What `/healthz` and `/readyz` say: `ok` while the node folds the log as it grows;
/// `not_ready`, naming the position and why, once it met an event it cannot fold (it then
/// answers no command: its writer cannot append after that event).
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub engine: &'static str,
    pub log_position: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.unreadable_position.is_none()
    }
}

pub fn health(services: &Services) -> Health {
    let (log_position, fault) = {
        let ledger = services.ledger.read();
        (ledger.position, ledger.fault.get().cloned())
    };
    let engine = services.store.engine();
    match fault {
        None => Health { status: "ok", engine, log_position, unreadable_position: None, reason: None },
        Some(fault) => Health {
            status: "not_ready",
            engine,
            log_position,
            unreadable_position: Some(fault.position),
            reason: Some(fault.to_string()),
        },
    }
}

/// The node's metrics in Prometheus' text format.
pub fn metrics(services: &Services) -> String {
    services.metrics.render()
}
