//! One error type for the HTTP surface: a stable table of error types and statuses, and
//! the one body shape of shared/api.md for every one of them.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bahi_domain::DomainError;
use serde_json::json;

use crate::writer::WriteError;

tokio::task_local! {
    /// The id of the request being handled, so that any error body can carry it.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, error_type, message: message.into(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(error_type: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, error_type, message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    /// A 500: the detail goes to the log under the request id, never to the client.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(request_id = %current_request_id(), %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; quote the request id when reporting it",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "type": self.error_type,
                "message": self.message,
                "request_id": current_request_id(),
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> ApiError {
        match &error {
            DomainError::Invalid(_) => ApiError::invalid_request(error.to_string()),
            DomainError::Money(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_amount", error.to_string()),
            DomainError::Id(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", error.to_string()),
            DomainError::NotFound(what) => ApiError::not_found(what),
            DomainError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string()),
            DomainError::Forbidden(_) => ApiError::forbidden("forbidden", error.to_string()),
            DomainError::AgentRevoked => ApiError::new(StatusCode::CONFLICT, "agent_revoked", error.to_string()),
            DomainError::InsufficientCredits { .. } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", error.to_string())
            }
            DomainError::BudgetExceeded { .. } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "budget_exceeded", error.to_string())
            }
            DomainError::UnknownModel(_) => ApiError::new(StatusCode::BAD_REQUEST, "unknown_model", error.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::Rejected(domain) => domain.into(),
            WriteError::IdempotencyConflict => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", error.to_string())
            }
            WriteError::Overloaded | WriteError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error.to_string())
                    .with_header(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            WriteError::Store(detail) | WriteError::Unreadable(detail) => ApiError::internal(detail),
            WriteError::NotReady(fault) => {
                tracing::error!(request_id = %current_request_id(), %fault, "refused a command: this node is not ready");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "this node is not ready (see /readyz); quote the request id when reporting it",
                )
            }
        }
    }
}

impl From<bahi_domain::ids::IdError> for ApiError {
    fn from(error: bahi_domain::ids::IdError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", error.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
