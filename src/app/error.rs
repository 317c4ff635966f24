//! The one error of the use cases: what went wrong, with a stable `error_type` per case.
//! Each surface maps it: HTTP to a status and the contract's body, MCP to a tool error.

use bahi_domain::DomainError;
use bahi_domain::rate_limit::RateDecision;

use crate::writer::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input (400): `invalid_request`, `invalid_amount`, `invalid_id`, `unknown_model`.
    #[error("{message}")]
    Invalid { error_type: &'static str, message: String },
    /// No valid credential (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential that may not do this (403): `insufficient_scope`, `human_only`,
    /// `operator_only`, `forbidden`.
    #[error("{message}")]
    Forbidden { error_type: &'static str, message: String },
    /// Nothing of that kind that the caller may see (404).
    #[error("no such {0}")]
    NotFound(String),
    /// The state forbids it (409): `conflict`, `email_taken`, `agent_revoked`, `idempotency_conflict`.
    #[error("{message}")]
    Conflict { error_type: &'static str, message: String },
    /// Money stops it (402): `insufficient_credits`, `budget_exceeded`.
    #[error("{message}")]
    PaymentRequired { error_type: &'static str, message: String },
    /// The caller's token bucket is empty (429).
    #[error("rate limit of {} requests exceeded; retry in {} s", .0.limit, .0.retry_after_seconds)]
    RateLimited(RateDecision),
    /// The node cannot take it now (503); `retry_after_seconds` when a retry soon may work.
    /// `code`: `unavailable`, or `commit_outcome_unknown` when the database connection was
    /// lost while the request's events were being committed.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String, retry_after_seconds: Option<u64> },
    /// A proxied call's upstream could not be reached or did not answer in time (502).
    #[error("{0}")]
    Upstream(String),
    /// A bug or a failing database: the detail is logged by the surface, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn invalid_request(message: impl Into<String>) -> AppError {
        AppError::Invalid { error_type: "invalid_request", message: message.into() }
    }

    pub fn unauthorized(message: impl Into<String>) -> AppError {
        AppError::Unauthorized(message.into())
    }

    pub fn forbidden(error_type: &'static str, message: impl Into<String>) -> AppError {
        AppError::Forbidden { error_type, message: message.into() }
    }

    pub fn not_found(what: &str) -> AppError {
        AppError::NotFound(what.to_owned())
    }

    pub fn conflict(error_type: &'static str, message: impl Into<String>) -> AppError {
        AppError::Conflict { error_type, message: message.into() }
    }

    /// 503 `unavailable` with `retry-after: 1`: this node cannot take it now, a retry soon may.
    pub fn unavailable(message: impl Into<String>) -> AppError {
        AppError::Unavailable { code: "unavailable", message: message.into(), retry_after_seconds: Some(1) }
    }

    pub fn internal(detail: impl std::fmt::Display) -> AppError {
        AppError::Internal(detail.to_string())
    }

    /// The HTTP status of the error: the one table every surface maps through (the MCP
    /// surface names its error class by it too, so a tool error reads as the JSON API's).
    pub fn status(&self) -> u16 {
        match self {
            AppError::Invalid { .. } => 400,
            AppError::Unauthorized(_) => 401,
            AppError::PaymentRequired { .. } => 402,
            AppError::Forbidden { .. } => 403,
            AppError::NotFound(_) => 404,
            AppError::Conflict { .. } => 409,
            AppError::RateLimited(_) => 429,
            AppError::Internal(_) => 500,
            AppError::Upstream(_) => 502,
            AppError::Unavailable { .. } => 503,
        }
    }

    /// What the caller is told: the message, except for an internal error, whose detail
    /// goes to the log (by the surface, under the request id) and never to the caller.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Internal(_) => "internal error; quote the request id when reporting it".to_owned(),
            other => other.to_string(),
        }
    }

    /// The stable type of the error, as the contract's table names it.
    pub fn error_type(&self) -> &'static str {
        match self {
            AppError::Invalid { error_type, .. }
            | AppError::Forbidden { error_type, .. }
            | AppError::Conflict { error_type, .. }
            | AppError::PaymentRequired { error_type, .. } => error_type,
            AppError::Unauthorized(_) => "unauthorized",
            AppError::NotFound(_) => "not_found",
            AppError::RateLimited(_) => "rate_limited",
            AppError::Unavailable { code, .. } => code,
            AppError::Upstream(_) => "upstream_unavailable",
            AppError::Internal(_) => "internal_error",
        }
    }
}

impl From<DomainError> for AppError {
    fn from(error: DomainError) -> AppError {
        let message = error.to_string();
        match &error {
            DomainError::Invalid(_) => AppError::invalid_request(message),
            DomainError::Money(_) => AppError::Invalid { error_type: "invalid_amount", message },
            DomainError::Id(_) => AppError::Invalid { error_type: "invalid_id", message },
            DomainError::UnknownModel(_) => AppError::Invalid { error_type: "unknown_model", message },
            DomainError::NotFound(what) => AppError::not_found(what),
            DomainError::Conflict(_) => AppError::conflict("conflict", message),
            DomainError::AgentRevoked => AppError::conflict("agent_revoked", message),
            DomainError::Forbidden(_) => AppError::forbidden("forbidden", message),
            DomainError::InsufficientCredits { .. } => {
                AppError::PaymentRequired { error_type: "insufficient_credits", message }
            }
            DomainError::BudgetExceeded { .. } => AppError::PaymentRequired { error_type: "budget_exceeded", message },
        }
    }
}

impl From<WriteError> for AppError {
    fn from(error: WriteError) -> AppError {
        match error {
            WriteError::Rejected(domain) => domain.into(),
            WriteError::IdempotencyConflict => AppError::conflict("idempotency_conflict", error.to_string()),
            WriteError::Overloaded | WriteError::ShuttingDown | WriteError::Contended => {
                AppError::unavailable(error.to_string())
            }
            WriteError::Unavailable(detail) => {
                tracing::warn!(request_id = %super::current_request_id(), %detail, "the database cannot be reached; nothing was recorded");
                AppError::unavailable("the database cannot be reached right now; nothing was recorded, retry shortly")
            }
            WriteError::OutcomeUnknown(detail) => {
                tracing::warn!(request_id = %super::current_request_id(), %detail, "the database connection was lost while committing");
                AppError::Unavailable {
                    code: "commit_outcome_unknown",
                    message: "the database connection was lost while this was being committed, so it may or may not \
                              have been recorded: retry with the same Idempotency-Key (a usage report: the same call id), \
                              which answers the recorded outcome if there is one and never records it twice"
                        .to_owned(),
                    retry_after_seconds: Some(1),
                }
            }
            WriteError::Store(detail) | WriteError::Unreadable(detail) => AppError::Internal(detail),
            WriteError::NotReady(fault) => {
                tracing::error!(request_id = %super::current_request_id(), %fault, "refused a command: this node is not ready");
                AppError::Unavailable {
                    code: "unavailable",
                    message: "this node is not ready (see /readyz); quote the request id when reporting it".to_owned(),
                    retry_after_seconds: None,
                }
            }
        }
    }
}

impl From<bahi_domain::ids::IdError> for AppError {
    fn from(error: bahi_domain::ids::IdError) -> AppError {
        AppError::Invalid { error_type: "invalid_id", message: error.to_string() }
    }
}

impl From<crate::store::StoreError> for AppError {
    /// A read that failed because the database is away (restarting, a terminated backend)
    /// is 503 `unavailable` with `retry-after`, not a 500: nothing is wrong with the request
    /// or the server, and a retry once the database is back is answered.
    fn from(error: crate::store::StoreError) -> AppError {
        if error.reach().is_some() {
            tracing::warn!(request_id = %super::current_request_id(), %error, "the database cannot be reached");
            return AppError::unavailable("the database cannot be reached right now; retry shortly");
        }
        AppError::Internal(error.to_string())
    }
}
