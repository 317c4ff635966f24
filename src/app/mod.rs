//! The use cases: one function per action (register, create a key, revoke, mint a token,
//! authorize, settle, top up, read a statement, ...), each taking the node's `Services`,
//! the caller (a `Principal`, an `Operator` or a `Reader`) and a request, and answering with
//! a view or an `AppError`. HTTP handlers (and later MCP tools, console pages and the proxy)
//! only extract, call one of these and map the answer; they never read the ledger, the
//! store or the clock themselves.
//!
//! Layering: surfaces → `app` → (writer, ledger, store, identity, limits) → domain.

pub mod accounts;
pub mod agents;
pub mod audit;
pub mod billing;
pub mod error;
pub mod forward_auth;
pub mod health;
pub mod humans;
pub mod issuers;
pub mod keys;
pub mod models;
pub mod principal;
pub mod proxy;
pub mod schema;
pub mod statements;
pub mod time;

use std::sync::Arc;

use bahi_domain::Command;
use chrono::{DateTime, Utc};

pub use error::{AppError, AppResult};
pub use principal::{AgentRef, CredentialKind, Operator, Presented, Principal, Reader};

use crate::clock::{OffsetClock, SharedClock};
use crate::config::ServerConfig;
use crate::identity::Identity;
use crate::ledger::{Actor, Idempotency, Ledger, SharedLedger};
use crate::limits::{KeyUses, RateLimiter};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::writer::{CommandContext, Outcome, Writer};

tokio::task_local! {
    /// The id of the request being served, kept in the events' metadata and in logs. The
    /// surface sets it for the request's task.
    pub static REQUEST_ID: String;
}

/// The id of the request this task serves, or empty outside one.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The node's handles, shared by every use case.
pub struct Services {
    pub writer: Writer,
    pub ledger: SharedLedger,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
    pub store: Store,
    pub rate_limiter: Arc<RateLimiter>,
    pub key_uses: Arc<KeyUses>,
    pub identity: Arc<Identity>,
    /// Where every decision by time reads the time.
    pub clock: SharedClock,
    /// Set only under `bahi serve --test-clock`: the clock a test moves forward.
    pub test_clock: Option<Arc<OffsetClock>>,
    /// The inference proxy's upstream client and limits.
    pub proxy: Arc<proxy::ProxyRuntime>,
}

impl Services {
    /// The time, to the microsecond: what the log keeps, so that what a caller is told is
    /// what is stored and read back.
    pub fn now(&self) -> DateTime<Utc> {
        bahi_domain::chain::truncate_to_micros(self.clock.now())
    }

    /// Submits a command on behalf of `actor`, under the current request's id.
    pub async fn submit(&self, command: Command, actor: Actor) -> AppResult<Outcome> {
        self.submit_idempotent(command, actor, None).await
    }

    pub async fn submit_idempotent(
        &self,
        command: Command,
        actor: Actor,
        idempotency: Option<Idempotency>,
    ) -> AppResult<Outcome> {
        let context = CommandContext { actor: Some(actor), request_id: Some(current_request_id()), idempotency };
        Ok(self.writer.submit(command, context).await?)
    }

    /// What `find` finds in this node's read model; on a miss, what it finds once the read
    /// model holds the log up to its head. On PostgreSQL another node may have made the
    /// thing a moment ago, and a 404 or 401 is final to a client: only a miss at the head
    /// may answer so. A hit costs nothing more; a miss, one trip through the writer.
    pub async fn find_at_head<T>(&self, find: impl Fn(&Ledger) -> Option<T>) -> AppResult<Option<T>> {
        let found = find(&self.ledger.read());
        if found.is_some() {
            return Ok(found);
        }
        self.writer.reach_head().await?;
        Ok(find(&self.ledger.read()))
    }

    /// Moves the test clock forward (`bahi serve --test-clock` only; the operator alone).
    pub fn advance_test_clock(&self, operator: &Operator, seconds: i64) -> AppResult<DateTime<Utc>> {
        operator.require_operator("moving the test clock")?;
        let clock = self.test_clock.as_ref().ok_or_else(|| AppError::not_found("test clock"))?;
        clock.advance(seconds).map_err(AppError::invalid_request)
    }
}
