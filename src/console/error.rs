//! What a console request that fails shows: the login page when there is no live session,
//! a page that says what went wrong otherwise. A use case's error keeps its status and
//! message (the JSON API's); an internal error's detail is logged, never shown.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::app::{AppError, current_request_id};

#[derive(Debug)]
pub enum ConsoleError {
    /// No live session: to the login page, then back to `next`.
    LoginNeeded { next: String },
    /// A form without a valid CSRF token, or from another site.
    Csrf,
    /// A form the console cannot read.
    BadForm(String),
    /// What the use case refused.
    App(AppError),
}

impl ConsoleError {
    pub fn login_needed(path: &str) -> ConsoleError {
        ConsoleError::LoginNeeded { next: path.to_owned() }
    }

    pub fn csrf() -> ConsoleError {
        ConsoleError::Csrf
    }

    pub fn bad_form(message: impl Into<String>) -> ConsoleError {
        ConsoleError::BadForm(message.into())
    }

    pub fn internal(detail: impl std::fmt::Display) -> ConsoleError {
        ConsoleError::App(AppError::internal(detail))
    }

    /// The status and the message the page shows.
    pub fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            ConsoleError::LoginNeeded { .. } => (StatusCode::UNAUTHORIZED, "log in to continue".to_owned()),
            ConsoleError::Csrf => (
                StatusCode::FORBIDDEN,
                "this form expired or was sent from another site; reload the page and try again".to_owned(),
            ),
            ConsoleError::BadForm(message) => (StatusCode::BAD_REQUEST, message.clone()),
            ConsoleError::App(AppError::Internal(detail)) => {
                tracing::error!(request_id = %current_request_id(), %detail, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; quote the request id when reporting it".to_owned())
            }
            ConsoleError::App(error) => {
                (StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST), error.to_string())
            }
        }
    }
}

impl From<AppError> for ConsoleError {
    fn from(error: AppError) -> ConsoleError {
        ConsoleError::App(error)
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
    request_id: String,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let ConsoleError::LoginNeeded { next } = &self {
            return Redirect::to(&super::login::login_path(next)).into_response();
        }
        let (status, message) = self.status_and_message();
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message: &message,
            request_id: current_request_id(),
        };
        let html = page.render().unwrap_or_else(|_| format!("{} {}", status.as_u16(), message));
        let mut response = (status, Html(html)).into_response();
        if let ConsoleError::App(AppError::RateLimited(decision)) = &self
            && let Ok(value) = decision.retry_after_seconds.to_string().parse()
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}
