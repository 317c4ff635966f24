//! The OpenAPI document: it is OpenAPI 3.1, it names every route the routers declare (read
//! from `src/http`'s sources, so a new route without a document entry fails here), and a
//! running server serves it at `/openapi.json` and its reference page at `/docs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{TestDatabase, TestServer, client};
use serde_json::Value;

/// What `any(handler)` stands for in the document: every method OpenAPI names.
const EVERY_METHOD: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// The string a `const NAME: &str = "..."` of the same file holds, for `.route(NAME, ...)`.
fn constant(source: &str, name: &str) -> String {
    let declaration = format!("const {name}: &str = \"");
    let start = source.find(&declaration).unwrap_or_else(|| panic!("no const {name}")) + declaration.len();
    source[start..].split('"').next().unwrap().to_owned()
}

/// Every `(METHOD, path)` declared with `.route(` or `.route_service(` in `src/http`, like
/// tests/fuzz_api.rs reads them; `route_service` (MCP) answers POST.
fn declared_routes() -> BTreeSet<(String, String)> {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        for declaration in source.split(".route_service(\"").skip(1) {
            routes.insert(("POST".to_owned(), declaration.split('"').next().unwrap().to_owned()));
        }
        for declaration in source.split(".route(").skip(1) {
            let (route, handlers) = match declaration.strip_prefix('"') {
                Some(rest) => {
                    let (route, handlers) = rest.split_once('"').unwrap();
                    (route.to_owned(), handlers)
                }
                None => {
                    let Some((name, handlers)) = declaration.split_once(',') else { continue };
                    // `.route(NAME, ...)` with a constant; anything else is prose naming `.route(`.
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                        continue;
                    }
                    (constant(&source, name), handlers)
                }
            };
            let handlers = &handlers[..handlers.find(")\n").unwrap_or(handlers.len())];
            let handlers = handlers.split(".route").next().unwrap();
            let mut methods: Vec<&str> = Vec::new();
            for method in ["get", "post", "put", "patch", "delete"] {
                if handlers.contains(&format!("{method}(")) {
                    methods.push(method);
                }
            }
            if handlers.contains("any(") {
                methods.extend(["get", "post", "put", "patch", "delete", "head", "options"]);
            }
            assert!(!methods.is_empty(), "{}: no method read for {route}", path.display());
            for method in methods {
                routes.insert((method.to_uppercase(), route.clone()));
            }
        }
    }
    routes
}

/// Every `(METHOD, path)` of the document, wildcards written as axum writes them.
fn documented_routes(document: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            // The one wildcard: OpenAPI has no `{*name}`.
            let path = path.replace("{original_path}", "{*original_path}");
            routes.insert((method.to_uppercase(), path));
        }
    }
    routes
}

#[test]
fn the_document_is_openapi_3_1_and_names_every_declared_route() {
    let document = bahi::http::openapi::document();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1."), "{}", document["openapi"]);
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());
    assert!(document["servers"].as_array().is_some_and(|servers| !servers.is_empty()));
    for scheme in ["bearer", "api_key_header", "session_cookie", "operator"] {
        assert!(document["components"]["securitySchemes"][scheme].is_object(), "security scheme {scheme}");
    }

    let declared = declared_routes();
    // The scan itself found the routes it must (a scan that reads nothing passes vacuously).
    for expected in
        [("POST", "/mcp"), ("POST", "/v1/chat/completions"), ("GET", "/v1/forward-auth"), ("GET", "/openapi.json")]
    {
        assert!(declared.contains(&(expected.0.to_owned(), expected.1.to_owned())), "scan missed {expected:?}");
    }
    let documented = documented_routes(&document);
    let missing: Vec<_> = declared.difference(&documented).collect();
    assert!(missing.is_empty(), "routes in src/http missing from the OpenAPI document: {missing:?}");
    let stale: Vec<_> = documented.difference(&declared).collect();
    assert!(stale.is_empty(), "documented routes no router declares: {stale:?}");
    assert!(
        EVERY_METHOD.iter().all(|method| documented.contains(&(method.to_string(), "/v1/forward-auth".to_owned())))
    );
}

#[test]
fn every_operation_has_a_success_and_every_error_uses_the_shared_schema() {
    let document = bahi::http::openapi::document();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_owned()), "{method} {path}: operationId {id} used twice");
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: no success");
            for (status, response) in responses {
                // Health's 503 is its own answer (not ready, and why), not an error.
                if status == "503" && (path == "/healthz" || path == "/readyz") {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Health"
                    );
                    continue;
                }
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
            // Every path parameter of the path is declared.
            for segment in path.split('/').filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}')) {
                let declared = operation["parameters"]
                    .as_array()
                    .is_some_and(|parameters| parameters.iter().any(|p| p["in"] == "path" && p["name"] == segment));
                assert!(declared, "{method} {path}: path parameter {segment} undeclared");
            }
            // Every schema reference resolves.
            let text = operation.to_string();
            for reference in text.split("\"#/components/schemas/").skip(1) {
                let name = reference.split('"').next().unwrap();
                assert!(document["components"]["schemas"][name].is_object(), "{method} {path}: dangling {name}");
            }
        }
    }
    // A request type's schema, from the code: creating a key takes scopes.
    let create_key =
        &document["paths"]["/v1/auth/account/api-keys"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let name = create_key["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    assert!(document["components"]["schemas"][name]["properties"]["scopes"].is_object(), "{create_key}");
    // An answer's schema, from the code: a page of keys has data and has_more.
    let page = &document["paths"]["/v1/auth/account/api-keys"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    let name = page["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    let properties = &document["components"]["schemas"][name]["properties"];
    assert!(properties["data"].is_object() && properties["has_more"].is_object(), "{page}");
}

#[tokio::test]
async fn a_server_serves_the_document_and_the_reference_page_without_a_credential() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();

    let response = client.get(server.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, bahi::http::openapi::document());

    let response = client.get(server.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("/v1/auth/account/api-keys") && page.contains("<table>"), "{page}");
    // Self-contained: no script and nothing fetched from elsewhere.
    assert!(!page.contains("<script") && !page.contains("https://"), "{page}");

    // Optional: the document passes openapi-spec-validator (scripts/python-env.sh installs it).
    match std::env::var("BAHI_TEST_PYTHON") {
        Ok(python) if !python.is_empty() => {
            let file = std::env::temp_dir().join(format!("bahi-openapi-{}.json", std::process::id()));
            std::fs::write(&file, served.to_string()).unwrap();
            let output = std::process::Command::new(python)
                .args(["-m", "openapi_spec_validator", file.to_str().unwrap()])
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&file);
            assert!(
                output.status.success(),
                "openapi-spec-validator: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        _ => eprintln!("openapi.rs: BAHI_TEST_PYTHON not set: openapi-spec-validator DID NOT RUN"),
    }
}
