//! Extractors that turn every malformed request into the contract's JSON 4xx.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted anywhere (413 past it).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `Json<T>` whose rejections are API errors: 415 without a JSON content type, 413 past the
/// size limit, 400 for bad syntax, a body that does not match the schema, or a body that is
/// not a JSON object (serde reads a struct from an array too: `[null, null]` was an empty
/// agent-register, found by schemathesis).
pub struct ApiJson<T>(pub T);

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with content-type: application/json",
    )
}

/// axum's test for a JSON body: `application/json` or `application/<anything>+json`.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(subtype) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

fn map_rejection(rejection: JsonRejection) -> ApiError {
    if crate::transport::is_body_read_timeout(&rejection) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive within the body read timeout (BAHI_BODY_READ_TIMEOUT_SECONDS)",
        )
        .with_header(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type(),
        StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::invalid_request(format!("invalid request body: {}", cause(&rejection)))
        }
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {}", cause(&rejection)),
        ),
    }
}

/// What serde said about a body or query string, with the field's path when it names one,
/// without the framework's preamble: axum wraps serde's error in "Failed to ..." errors.
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while current.to_string().starts_with("Failed to") {
        match current.source() {
            Some(source) => current = source,
            None => break,
        }
    }
    current.to_string()
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(unsupported_media_type());
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| map_rejection(JsonRejection::from(rejection)))?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes).map_err(map_rejection)?;
        // Every request body is an object; serde would also read a struct from an array.
        if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid_request("invalid request body: the body must be a JSON object"));
        }
        Ok(ApiJson(value))
    }
}

/// Like `ApiJson`, but an empty body (no content, or `content-length: 0`) means the
/// default value: for endpoints whose every field is optional, such as agent-register.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<OptionalJson<T>, ApiError> {
        let declared_empty = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim() == "0");
        let has_content_type = request.headers().contains_key(axum::http::header::CONTENT_TYPE);
        if declared_empty || (!has_content_type && request.headers().get(CONTENT_LENGTH).is_none()) {
            return Ok(OptionalJson(T::default()));
        }
        ApiJson::<T>::from_request(request, state).await.map(|ApiJson(value)| OptionalJson(value))
    }
}

/// `Query<T>` whose rejection (an unknown parameter, a value of the wrong type) is the
/// contract's 400: a typo in a query string is an error, not ignored.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<ApiQuery<T>, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::invalid_request(format!("invalid query string: {}", cause(&rejection))))
    }
}
