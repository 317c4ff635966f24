//! The console's static files, compiled into the binary: htmx (vendored, with its
//! licence), the style sheet and the one script. No CDN: operators run offline.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::AppState;

pub const ASSETS_PATH: &str = "/console/assets/";
/// htmx's file name carries its version, so a page can let browsers keep it for a year.
pub const HTMX: &str = "htmx-2.0.11.min.js";

const FILES: &[(&str, &str, &[u8])] = &[
    (HTMX, "text/javascript; charset=utf-8", include_bytes!("../../assets/console/htmx-2.0.11.min.js")),
    ("console.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/console/console.js")),
    ("console.css", "text/css; charset=utf-8", include_bytes!("../../assets/console/console.css")),
    ("htmx-LICENSE", "text/plain; charset=utf-8", include_bytes!("../../assets/console/htmx-LICENSE")),
];

pub fn router() -> Router<AppState> {
    Router::new().route("/console/assets/{name}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    let Some((_, content_type, bytes)) = FILES.iter().find(|(file, _, _)| *file == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let cache = if name == HTMX { "public, max-age=31536000, immutable" } else { "public, max-age=300" };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        *bytes,
    )
        .into_response()
}
