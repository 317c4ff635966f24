//! The inference proxy on HTTP: `POST /v1/chat/completions` and `POST /v1/embeddings`
//! (OpenAI's API) and `POST /v1/messages` (Anthropic's). Refusals answer in the provider's
//! own error shape, so that each SDK raises its typed error.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::AppState;
use super::auth::presented_for_proxy;
use super::error::{ApiError, current_request_id, rate_limit_headers};
use crate::app::proxy::{self, PASSED_HEADERS, PassedHeaders, Proxied, Refused, Route};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
}

async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Route::ChatCompletions).await
}

async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Route::Embeddings).await
}

async fn messages(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Route::Messages).await
}

async fn handle(state: AppState, headers: HeaderMap, body: Body, route: Route) -> Response {
    let limit = state.proxy.limits.max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            let message = format!("request body is larger than {limit} bytes");
            // The rest of the body is never read, so the connection cannot carry another
            // request: say so, or a client would send its next one into it.
            let error = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message)
                .with_header(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
            return provider_error(route, error);
        }
    };
    let presented = match presented_for_proxy(&headers) {
        Ok(presented) => presented,
        Err(error) => return provider_error(route, error),
    };
    let passed = PassedHeaders(
        PASSED_HEADERS.iter().filter_map(|name| Some((*name, headers.get(*name)?.to_str().ok()?.to_owned()))).collect(),
    );
    match proxy::proxy(state.services(), &presented, route, body, passed).await {
        Ok(proxied) => relay(proxied),
        Err(Refused { error, rate }) => {
            let mut error = ApiError::from(error);
            error.headers.extend(rate.iter().flat_map(rate_limit_headers));
            provider_error(route, error)
        }
    }
}

/// The upstream's answer, streamed to the client as it arrives.
fn relay(proxied: Proxied) -> Response {
    let chunks = futures::stream::unfold(proxied.body, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<Bytes, std::convert::Infallible>(chunk), receiver))
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = StatusCode::from_u16(proxied.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    if let Some(value) = proxied.content_type.and_then(|value| HeaderValue::from_str(&value).ok()) {
        headers.insert(axum::http::header::CONTENT_TYPE, value);
    }
    if let Some(value) = proxied.retry_after.and_then(|value| HeaderValue::from_str(&value).ok()) {
        headers.insert(axum::http::header::RETRY_AFTER, value);
    }
    if let Ok(value) = HeaderValue::from_str(proxied.call_id.as_str()) {
        headers.insert("x-bahi-call-id", value);
    }
    // A proxy in front must not hold the stream back to buffer it.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    for (name, value) in rate_limit_headers(&proxied.rate) {
        headers.insert(name, value);
    }
    response
}

/// `error` in the shape of the route's provider: OpenAI's is bahi's own; Anthropic's is
/// `{"type": "error", "error": {"type", "message"}, "request_id"}` (the id also inside
/// `error`, where bahi's own shape has it).
fn provider_error(route: Route, error: ApiError) -> Response {
    if route.provider() == bahi_domain::billing::Provider::OpenAi {
        return error.into_response();
    }
    let body = json!({
        "type": "error",
        "error": {
            "type": crate::transport::error_class(error.status.as_u16()),
            "code": error.code,
            "message": error.message,
            "request_id": current_request_id(),
        },
        "request_id": current_request_id(),
    });
    let mut response = (error.status, axum::Json(body)).into_response();
    for (name, value) in error.headers {
        response.headers_mut().insert(name, value);
    }
    response
}
