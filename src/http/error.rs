//! One error type for the HTTP surface: a stable table of error codes and statuses, and
//! the one body shape of docs/api.md for every one of them: `type` is the status's class in
//! OpenAI's and Anthropic's words, `code` bahi's precise reason.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bahi_domain::rate_limit::RateDecision;
use serde_json::json;

use crate::app::AppError;

pub use crate::app::{REQUEST_ID, current_request_id};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// The precise, stable reason (`insufficient_credits`); the body's `code`.
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), headers: Vec::new() }
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
                "type": crate::transport::error_class(self.status.as_u16()),
                "code": self.code,
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

impl From<AppError> for ApiError {
    fn from(error: AppError) -> ApiError {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error_type = error.error_type();
        match error {
            AppError::RateLimited(decision) => rate_limited(&decision),
            AppError::Unavailable { message, retry_after_seconds, .. } => {
                let error = ApiError::new(status, error_type, message);
                match retry_after_seconds.and_then(|seconds| HeaderValue::from_str(&seconds.to_string()).ok()) {
                    Some(value) => error.with_header(axum::http::header::RETRY_AFTER, value),
                    None => error,
                }
            }
            AppError::Internal(detail) => ApiError::internal(detail),
            other => ApiError::new(status, error_type, other.public_message()),
        }
    }
}

fn number_header(value: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&value.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// The `x-ratelimit-*` headers of a decision (and `retry-after` when refused).
pub fn rate_limit_headers(decision: &RateDecision) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (HeaderName::from_static("x-ratelimit-limit"), number_header(decision.limit)),
        (HeaderName::from_static("x-ratelimit-remaining"), number_header(decision.remaining)),
        (HeaderName::from_static("x-ratelimit-reset"), number_header(decision.reset_at_seconds)),
    ];
    if !decision.allowed {
        headers.push((axum::http::header::RETRY_AFTER, number_header(decision.retry_after_seconds)));
    }
    headers
}

fn rate_limited(decision: &RateDecision) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("rate limit of {} requests exceeded; retry in {} s", decision.limit, decision.retry_after_seconds),
    );
    error.headers = rate_limit_headers(decision);
    error
}

pub type ApiResult<T> = Result<T, ApiError>;
