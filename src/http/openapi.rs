//! `GET /openapi.json` (the HTTP contract as an OpenAPI 3.1 document) and `GET /docs` (a
//! reference page rendered on the server from that same document: no script, no external
//! asset).
//!
//! Why not utoipa: its `ToSchema` would be a second schema system beside the `schemars`
//! JSON Schemas the request types already derive for the MCP tools' input schemas, and the
//! domain crate's types (`Money`, `Role`, ...) stay free of schema crates, so every field of
//! those types would need a hand-written schema twice. Instead the document is built from
//! `operations()`, a table of every route (method, path, auth, request type, answer,
//! statuses), plus the `schemars` schemas of the request and answer types (OpenAPI 3.1's
//! schema dialect is JSON Schema 2020-12, which `schemars` writes). Every JSON answer has its
//! type's schema (serialize contract); only the statement's JSON, MCP's JSON-RPC and a
//! proxied upstream's answer are described as objects. The table cannot drift from the
//! routers unnoticed: `tests/openapi.rs` reads every `.route(` of `src/http` and fails when
//! one is missing here, and `tests/contract_fuzz.rs` runs schemathesis against a live server.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::AppState;
use crate::app::{accounts, agents, audit, billing, health, humans, issuers, keys, models, statements};

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json)).route("/docs", get(reference_page))
}

/// Built once: the document depends on the code alone, never on a request.
static DOCUMENT_TEXT: LazyLock<String> = LazyLock::new(|| document().to_string());
static REFERENCE_PAGE: LazyLock<String> = LazyLock::new(|| render_reference_page(&document()));

async fn openapi_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT_TEXT.as_str()).into_response()
}

async fn reference_page() -> Html<&'static str> {
    Html(REFERENCE_PAGE.as_str())
}

/// Who may call a route, as OpenAPI security requirements and as words for the page.
#[derive(Clone, Copy)]
enum Auth {
    /// No credential.
    Public,
    /// An API key or agent token (Bearer or `x-api-key`), or a console session.
    Credential,
    /// An API key or agent token only, never a session cookie.
    KeyOrToken,
    /// A console session only (money actions, owner-only changes).
    Session,
    /// The operator key as Bearer.
    Operator,
    /// The operator key or a gateway key (`usage:write`) as Bearer.
    OperatorOrGatewayKey,
    /// A credential with the route's read scope, or the operator key (any org).
    Reader,
}

impl Auth {
    fn schemes(self) -> &'static [&'static str] {
        match self {
            Auth::Public => &[],
            Auth::Credential => &["bearer", "api_key_header", "session_cookie"],
            Auth::KeyOrToken => &["bearer", "api_key_header"],
            Auth::Session => &["session_cookie"],
            Auth::Operator => &["operator"],
            Auth::OperatorOrGatewayKey => &["operator", "bearer"],
            Auth::Reader => &["bearer", "api_key_header", "session_cookie", "operator"],
        }
    }
}

/// What a route answers on success.
#[derive(Clone, Copy)]
enum Answer {
    /// A JSON object whose type derives no schema yet: free-form, described in words.
    Object(&'static str),
    /// A JSON object of a type that derives `JsonSchema`.
    Typed(fn(&mut SchemaGenerator) -> Schema, &'static str),
    /// No body.
    Empty(&'static str),
    /// The statement: JSON, or CSV with `format=csv`.
    Statement,
    /// Prometheus text.
    Metrics,
    /// The provider's answer as it came: JSON, or server-sent events when streamed.
    Upstream,
    /// An MCP JSON-RPC answer.
    Mcp,
    /// This document.
    Document,
    /// The reference page.
    Page,
}

struct Operation {
    /// Lower case; `any` for a route of every method.
    method: &'static str,
    /// As axum declares it (`{*rest}` for a wildcard).
    path: &'static str,
    tag: &'static str,
    auth: Auth,
    summary: &'static str,
    body: Option<fn(&mut SchemaGenerator) -> Schema>,
    body_optional: bool,
    query: Option<fn(&mut SchemaGenerator) -> Schema>,
    success: u16,
    answer: Answer,
    errors: &'static [u16],
    headers: &'static [(&'static str, &'static str)],
    /// A 503 answered with the success answer's schema, not `Error` (health: not ready).
    unavailable_answer: Option<&'static str>,
}

fn body_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn query_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.root_schema_for::<T>()
}

fn route(method: &'static str, path: &'static str, tag: &'static str, auth: Auth, summary: &'static str) -> Operation {
    Operation {
        method,
        path,
        tag,
        auth,
        summary,
        body: None,
        body_optional: false,
        query: None,
        success: 200,
        answer: Answer::Object("a JSON object (see docs/api.md)"),
        errors: &[],
        headers: &[],
        unavailable_answer: None,
    }
}

impl Operation {
    fn body<T: JsonSchema>(mut self) -> Operation {
        self.body = Some(body_schema::<T>);
        self
    }

    /// A body that may be left out (`OptionalJson`).
    fn optional_body<T: JsonSchema>(mut self) -> Operation {
        self.body_optional = true;
        self.body::<T>()
    }

    fn query<T: JsonSchema>(mut self) -> Operation {
        self.query = Some(query_schema::<T>);
        self
    }

    /// The success answer is `T`, whose schema the document carries.
    fn returns<T: JsonSchema>(self, success: u16, description: &'static str) -> Operation {
        self.answers(success, Answer::Typed(body_schema::<T>, description))
    }

    fn answers(mut self, success: u16, answer: Answer) -> Operation {
        self.success = success;
        self.answer = answer;
        self
    }

    /// Statuses this route can refuse with beyond those its auth, body, query and path
    /// parameters bring (`statuses()`).
    fn errors(mut self, errors: &'static [u16]) -> Operation {
        self.errors = errors;
        self
    }

    /// 503 with the success answer's body (described so), not the `Error` body.
    fn unavailable_with_answer(mut self, description: &'static str) -> Operation {
        self.unavailable_answer = Some(description);
        self.errors(&[503])
    }

    fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Operation {
        self.headers = headers;
        self
    }

    fn path_parameters(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| name.trim_start_matches('*'))
            .collect()
    }

    /// Every error status: the route's own plus what its auth, input and path bring.
    fn error_statuses(&self) -> BTreeSet<u16> {
        let mut statuses: BTreeSet<u16> = self.errors.iter().copied().collect();
        match self.auth {
            Auth::Public => {}
            // The operator key and gateway keys have no token bucket.
            Auth::Operator | Auth::OperatorOrGatewayKey => {
                statuses.insert(401);
            }
            Auth::Credential | Auth::KeyOrToken | Auth::Session | Auth::Reader => {
                statuses.extend([401, 429]);
            }
        }
        if self.body.is_some() {
            statuses.extend([400, 408, 413, 415]);
        }
        if self.query.is_some() {
            statuses.insert(400);
        }
        if !self.path_parameters().is_empty() {
            statuses.extend([400, 404]);
        }
        if !matches!(self.auth, Auth::Public) {
            // A write: the writer's queue is full or the node is stopping. Any credential: a
            // node that must reach the head of the log to judge it and cannot (fails closed).
            statuses.insert(503);
        }
        statuses
    }
}

/// Every route the routers declare (`tests/openapi.rs` checks that none is missing).
fn operations() -> Vec<Operation> {
    use Answer::*;
    use Auth::*;
    vec![
        // health
        route("get", "/healthz", "operations", Public, "Liveness: the engine and log position")
            .returns::<health::Health>(200, "ok: the engine and the log position")
            .unavailable_with_answer("not_ready: the unreadable position and why"),
        route(
            "get",
            "/readyz",
            "operations",
            Public,
            "Readiness: 503 once the node met an unreadable event or its tailer lags",
        )
        .returns::<health::Health>(200, "ok: the engine, the log position and the tailer")
        .unavailable_with_answer("not_ready: why"),
        route("get", "/metrics", "operations", Public, "Prometheus metrics").answers(200, Metrics),
        route("get", "/openapi.json", "operations", Public, "This OpenAPI document").answers(200, Document),
        route("get", "/docs", "operations", Public, "The reference page made from this document").answers(200, Page),
        // accounts and keys
        route(
            "post",
            "/v1/auth/agent-register",
            "accounts",
            Public,
            "Create an org, its first API key and optionally an agent",
        )
        .optional_body::<accounts::AgentRegister>()
        .returns::<accounts::Registered>(201, "the org, its first key (the secret shown this once) and the agent")
        .errors(&[429, 503]),
        route("get", "/v1/auth/account", "accounts", Credential, "The caller's org, balances and members")
            .returns::<accounts::Account>(200, "the org, its balances and members")
            .errors(&[403]),
        route("post", "/v1/auth/account/api-keys", "keys", Credential, "Create an API key (the secret is shown once)")
            .body::<keys::CreateKey>()
            .returns::<keys::CreatedKey>(201, "the key, with its secret shown this once")
            .errors(&[403]),
        route("get", "/v1/auth/account/api-keys", "keys", Credential, "List the org's API keys, newest first")
            .query::<keys::ListKeys>()
            .returns::<keys::KeyPage>(200, "a page of keys, never a secret")
            .errors(&[403]),
        route("get", "/v1/auth/account/api-keys/{id}", "keys", Credential, "One API key")
            .returns::<keys::KeyView>(200, "the key")
            .errors(&[403]),
        route("post", "/v1/auth/account/api-keys/{id}/revoke", "keys", Credential, "Revoke an API key")
            .returns::<keys::KeyView>(200, "the revoked key")
            .errors(&[403]),
        route(
            "delete",
            "/v1/auth/account/api-keys/{id}",
            "keys",
            Credential,
            "Revoke an API key and remove it from the list",
        )
        .returns::<keys::KeyView>(200, "the removed key")
        .errors(&[403]),
        // humans
        route("post", "/me/signup", "humans", Public, "Sign up: a human, their org and a session cookie")
            .body::<humans::SignUp>()
            .returns::<humans::SessionView>(201, "the user and org; sets the bahi_session cookie")
            .errors(&[409, 429, 503]),
        route("post", "/me/login", "humans", Public, "Log in: a session cookie")
            .body::<humans::LogIn>()
            .returns::<humans::SessionView>(200, "the user and org; sets the bahi_session cookie")
            .errors(&[401, 429, 503]),
        route("post", "/me/logout", "humans", Session, "End this session")
            .returns::<humans::LoggedOut>(200, "the session ended; clears the cookie")
            .errors(&[403]),
        route("post", "/me/logout-all", "humans", Session, "End every session of the user")
            .returns::<humans::LoggedOut>(200, "every session ended; clears the cookie")
            .errors(&[403]),
        route("post", "/v1/auth/account/members", "humans", Session, "Add a member to the org (owner)")
            .body::<humans::AddMember>()
            .returns::<humans::MemberAdded>(201, "the member")
            .errors(&[403, 409]),
        // agents
        route("post", "/me/agents", "agents", Credential, "Create an agent")
            .body::<agents::CreateAgent>()
            .returns::<agents::AgentView>(201, "the agent")
            .errors(&[403]),
        route("get", "/me/agents", "agents", Credential, "List the org's agents with usage")
            .returns::<agents::AgentList>(200, "the agents")
            .errors(&[403]),
        route("get", "/me/agents/{id}", "agents", Credential, "One agent with usage")
            .returns::<agents::AgentView>(200, "the agent")
            .errors(&[403]),
        route("post", "/me/agents/{id}/token", "agents", Credential, "Mint an agent token (ES256 JWT)")
            .optional_body::<agents::MintToken>()
            .returns::<agents::MintedToken>(200, "the token")
            .errors(&[403, 409]),
        route("post", "/me/agents/{id}/revoke", "agents", Credential, "Revoke an agent and every live token of it")
            .returns::<agents::AgentView>(200, "the revoked agent")
            .errors(&[403]),
        route("post", "/me/agents/{id}/tokens/{jti}/revoke", "agents", Credential, "Revoke one agent token")
            .returns::<agents::TokenRevoked>(200, "the revoked token")
            .errors(&[403]),
        // issuers
        route("get", "/.well-known/jwks.json", "issuers", Public, "The embedded issuer's public keys")
            .returns::<crate::agent_token::JwkSet>(200, "a JWK set: the current key and still-valid retired ones"),
        route("post", "/me/issuers", "issuers", Session, "Register an external token issuer (owner or admin)")
            .body::<issuers::RegisterIssuer>()
            .returns::<issuers::IssuerView>(201, "the registration")
            .errors(&[403, 409]),
        route("get", "/me/issuers", "issuers", Credential, "The org's issuer registrations")
            .returns::<issuers::IssuerList>(200, "the registrations")
            .errors(&[403]),
        route("post", "/me/issuers/{id}/revoke", "issuers", Session, "Revoke an issuer registration")
            .returns::<issuers::IssuerView>(200, "the revoked registration")
            .errors(&[403]),
        route("post", "/v1/admin/signing-keys/rotate", "issuers", Operator, "Rotate the embedded issuer's signing key")
            .returns::<issuers::Rotated>(200, "the new key and the retired one")
            .errors(&[403]),
        // gateway
        route("post", "/v1/authorize", "gateway", KeyOrToken, "Authorize a call and hold its cost")
            .body::<billing::Authorize>()
            .returns::<billing::Authorized>(200, "the authorization and its hold")
            .errors(&[402, 403]),
        route(
            "post",
            "/v1/usage",
            "gateway",
            OperatorOrGatewayKey,
            "Settle a call's hold with its usage (idempotent on call_id)",
        )
        .body::<billing::RecordUsage>()
        .returns::<billing::Settled>(200, "the settled call")
        .errors(&[403, 404, 409]),
        route(
            "any",
            "/v1/forward-auth",
            "gateway",
            KeyOrToken,
            "Forward-auth for a gateway: authorize, answered in headers",
        )
        .answers(
            200,
            Empty("authorized; x-bahi-call-id, x-bahi-org-id, x-bahi-agent-id, x-bahi-act-for, x-ratelimit-*"),
        )
        .errors(&[400, 402, 403, 503])
        .headers(&[("x-bahi-model", "the model, set by the gateway")]),
        route("any", "/v1/forward-auth/", "gateway", KeyOrToken, "Forward-auth, Envoy's prefix with an empty path")
            .answers(200, Empty("authorized, as /v1/forward-auth"))
            .errors(&[400, 402, 403, 503])
            .headers(&[("x-bahi-model", "the model, set by the gateway")]),
        route(
            "any",
            "/v1/forward-auth/{*original_path}",
            "gateway",
            KeyOrToken,
            "Forward-auth, Envoy ext_authz (the original path after the prefix)",
        )
        .answers(200, Empty("authorized, as /v1/forward-auth"))
        .errors(&[400, 402, 403, 503])
        .headers(&[("x-bahi-model", "the model, set by the gateway")]),
        // proxy
        route(
            "post",
            "/v1/chat/completions",
            "proxy",
            KeyOrToken,
            "OpenAI chat completions, forwarded to the model's upstream",
        )
        .answers(200, Upstream)
        .errors(&[400, 402, 403, 404, 413, 502, 503]),
        route("post", "/v1/embeddings", "proxy", KeyOrToken, "OpenAI embeddings, forwarded to the model's upstream")
            .answers(200, Upstream)
            .errors(&[400, 402, 403, 404, 413, 502, 503]),
        route("post", "/v1/messages", "proxy", KeyOrToken, "Anthropic messages, forwarded to the model's upstream")
            .answers(200, Upstream)
            .errors(&[400, 402, 403, 404, 413, 502, 503]),
        // models
        route("get", "/v1/models", "models", Credential, "The configured models, OpenAI's list shape")
            .returns::<models::ModelList>(200, "the configured models")
            .errors(&[403]),
        route(
            "put",
            "/v1/admin/models/{model}",
            "models",
            Operator,
            "Configure a proxied model: upstream, sealed key, price",
        )
        .body::<models::ConfigureModel>()
        .returns::<models::ModelView>(200, "the model without its upstream key")
        .errors(&[403]),
        // credits and prices
        route("post", "/me/credits/topups", "credits", Session, "Top up the org's credit (humans only)")
            .body::<billing::TopUp>()
            .returns::<billing::ToppedUp>(201, "the top-up and the new balance")
            .errors(&[403, 409]),
        route(
            "post",
            "/v1/admin/credits/grants",
            "credits",
            Operator,
            "Grant credit to an org (Idempotency-Key header)",
        )
        .body::<billing::Grant>()
        .returns::<billing::Granted>(201, "the grant and the new balance")
        .errors(&[403, 404, 409])
        .headers(&[("idempotency-key", "a retry with the same key answers the first grant")]),
        route("put", "/v1/admin/prices/{model}", "credits", Operator, "Set a model's price")
            .body::<billing::SetPrice>()
            .returns::<billing::PriceView>(200, "the price")
            .errors(&[403]),
        route("post", "/v1/admin/gateway-keys", "credits", Operator, "Create a gateway key (usage:write)")
            .optional_body::<billing::CreateGatewayKey>()
            .returns::<billing::CreatedGatewayKey>(201, "the gateway key, its secret shown this once")
            .errors(&[403]),
        route("post", "/v1/admin/gateway-keys/{id}/revoke", "credits", Operator, "Revoke a gateway key")
            .returns::<billing::GatewayKeyRevoked>(200, "the revoked gateway key")
            .errors(&[403]),
        // audit and finance
        route("get", "/v1/audit/calls/{call_id}", "audit", Reader, "One call's audit record and its events")
            .returns::<audit::CallView>(200, "the call and its events")
            .errors(&[403]),
        route(
            "get",
            "/v1/audit/attribution",
            "audit",
            Reader,
            "Usage and cost grouped by agent, act_for, model, key or day",
        )
        .query::<audit::AttributionQuery>()
        .returns::<audit::Attribution>(200, "one row per group, and the totals")
        .errors(&[403, 404]),
        route("get", "/v1/audit/events", "audit", Reader, "The org's own events in log order")
            .query::<audit::EventsQuery>()
            .returns::<audit::EventPage>(200, "a page of events")
            .errors(&[403, 404]),
        route("get", "/v1/statements", "statements", Reader, "An INR statement for a period, JSON or CSV")
            .query::<statements::StatementQuery>()
            .answers(200, Statement)
            .errors(&[403, 404]),
        // MCP
        route("post", "/mcp", "mcp", KeyOrToken, "MCP over streamable HTTP (stateless): the use cases as tools")
            .answers(200, Mcp)
            .errors(&[400, 403, 405, 406, 415]),
        // tests only
        route(
            "post",
            "/v1/admin/test-clock/advance",
            "test clock",
            Operator,
            "Move the test clock forward (only under --test-clock)",
        )
        .body::<super::test_clock::Advance>()
        .returns::<super::test_clock::Advanced>(200, "the node's clock after the move")
        .errors(&[403, 404]),
    ]
}

/// The methods a route declared with `any` answers, as OpenAPI names them.
const EVERY_METHOD: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status).ok().and_then(|status| status.canonical_reason()).unwrap_or("error")
}

/// The document, OpenAPI 3.1.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|settings| {
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
    });
    // Two contracts: a request's optional field may be left out; an answer's `Option` is
    // always there (as null) unless serde skips it.
    let mut generator = settings.clone().for_deserialize().into_generator();
    let mut answer_generator = settings.for_serialize().into_generator();
    let mut paths = Map::new();
    let mut tags: Vec<&str> = Vec::new();
    for operation in operations() {
        if !tags.contains(&operation.tag) {
            tags.push(operation.tag);
        }
        let object = operation_object(&operation, &mut generator, &mut answer_generator);
        let path = operation.path.replace("{*", "{");
        let item = paths.entry(path).or_insert_with(|| json!({})).as_object_mut().expect("a path item is an object");
        if operation.method == "any" {
            for method in EVERY_METHOD {
                let mut object = object.clone();
                object["operationId"] = json!(operation_id(method, operation.path));
                item.insert(method.to_owned(), object);
            }
        } else {
            item.insert(operation.method.to_owned(), object);
        }
    }
    let mut schemas = generator.take_definitions(true);
    for (name, schema) in answer_generator.take_definitions(true) {
        // A type both sent and answered would need two names; none is today.
        assert!(!schemas.contains_key(&name), "{name} is both a request and an answer schema");
        schemas.insert(name, schema);
    }
    schemas.insert("Error".to_owned(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "bahi",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event-sourced billing and audit ledger for AI inference gateways. The contract in words is docs/api.md; every error, every status, has the Error body. Success bodies without a schema here are JSON objects described in the operation.",
        },
        "servers": [{"url": "/", "description": "the server that served this document"}],
        "tags": tags.iter().map(|tag| json!({"name": tag})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (<prefix>_<env>_<random>) or an agent token (ES256 JWT)"},
                "api_key_header": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "an API key (never an agent token)"},
                "session_cookie": {"type": "apiKey", "in": "cookie", "name": "bahi_session", "description": "a console session (humans only)"},
                "operator": {"type": "http", "scheme": "bearer", "description": "the operator key (BAHI_OPERATOR_KEY)"},
            },
        },
    })
}

fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> = path.split(|c: char| !c.is_ascii_alphanumeric()).filter(|word| !word.is_empty()).collect();
    // `/v1/forward-auth/` is a route of its own beside `/v1/forward-auth`: ids must differ.
    let trailing_slash = if path.len() > 1 && path.ends_with('/') { "_slash" } else { "" };
    format!("{method}_{}{trailing_slash}", words.join("_"))
}

fn operation_object(
    operation: &Operation,
    generator: &mut SchemaGenerator,
    answer_generator: &mut SchemaGenerator,
) -> Value {
    let mut parameters: Vec<Value> = operation
        .path_parameters()
        .into_iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": path_parameter_schema(operation.path, name)}))
        .collect();
    if let Some(query) = operation.query {
        let schema = query(generator).to_value();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                parameters.push(json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": property}));
            }
        }
    }
    if operation.path == "/v1/forward-auth" {
        parameters.push(json!({"name": "gateway", "in": "query", "required": false, "schema": {"enum": ["nginx"]}, "description": "nginx: every denial is 401 or 403, the real status in x-bahi-status"}));
    }
    for (name, description) in operation.headers {
        let schema = if *name == "x-bahi-model" {
            json!({"type": "string", "pattern": MODEL_NAME_PATTERN})
        } else {
            json!({"type": "string"})
        };
        parameters.push(json!({"name": name, "in": "header", "required": *name == "x-bahi-model", "description": description, "schema": schema}));
    }
    let mut responses = Map::new();
    responses.insert(operation.success.to_string(), success_response(operation.answer, answer_generator));
    for status in operation.error_statuses() {
        if let (503, Some(description), Answer::Typed(schema, _)) =
            (status, operation.unavailable_answer, operation.answer)
        {
            let schema = schema(answer_generator).to_value();
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": {"application/json": {"schema": schema}}}),
            );
            continue;
        }
        responses.insert(
            status.to_string(),
            json!({"description": reason(status), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    let security: Vec<Value> = operation.auth.schemes().iter().map(|scheme| json!({*scheme: []})).collect();
    let mut object = json!({
        "operationId": operation_id(operation.method, operation.path),
        "summary": operation.summary,
        "tags": [operation.tag],
        "security": security,
        "responses": responses,
        "x-bahi-auth": auth_words(operation.auth),
    });
    if !parameters.is_empty() {
        object["parameters"] = json!(parameters);
    }
    if let Some(body) = operation.body {
        object["requestBody"] = json!({
            "required": !operation.body_optional,
            "content": {"application/json": {"schema": body(generator).to_value()}},
        });
    } else if matches!(operation.answer, Answer::Upstream | Answer::Mcp) {
        object["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "description": "the provider's (or MCP's JSON-RPC) request, passed through"}}}});
    }
    object
}

/// A model's name, as `check_model_name` accepts it.
pub const MODEL_NAME_PATTERN: &str = "^[A-Za-z0-9._:/@-]{1,128}$";

/// What a path parameter accepts: an id of its kind (`key_` and 1 to 64 letters and digits;
/// another shape is 400 `invalid_id`), a model name, or (forward-auth) any path.
fn path_parameter_schema(path: &str, name: &str) -> Value {
    let prefix = match name {
        "call_id" => Some("call_"),
        "jti" => Some("tok_"),
        "id" if path.starts_with("/me/agents/") => Some("agt_"),
        "id" if path.starts_with("/me/issuers/") => Some("iss_"),
        "id" => Some("key_"),
        _ => None,
    };
    match (prefix, name) {
        (Some(prefix), _) => json!({"type": "string", "pattern": format!("^{prefix}[0-9A-Za-z]{{1,64}}$")}),
        (None, "model") => json!({"type": "string", "pattern": MODEL_NAME_PATTERN}),
        _ => json!({"type": "string"}),
    }
}

fn auth_words(auth: Auth) -> &'static str {
    match auth {
        Auth::Public => "none",
        Auth::Credential => "API key, agent token or session",
        Auth::KeyOrToken => "API key or agent token (never a session)",
        Auth::Session => "session only",
        Auth::Operator => "operator key",
        Auth::OperatorOrGatewayKey => "operator key or gateway key (usage:write)",
        Auth::Reader => "credential with the read scope, or the operator key",
    }
}

fn success_response(answer: Answer, generator: &mut SchemaGenerator) -> Value {
    let free_form = json!({"type": "object", "additionalProperties": true});
    match answer {
        Answer::Typed(schema, description) => {
            json!({"description": description, "content": {"application/json": {"schema": schema(generator).to_value()}}})
        }
        Answer::Object(description) => {
            json!({"description": description, "content": {"application/json": {"schema": free_form}}})
        }
        Answer::Empty(description) => json!({"description": description}),
        Answer::Statement => json!({
            "description": "the statement: JSON, or CSV with format=csv",
            "content": {"application/json": {"schema": free_form}, "text/csv": {"schema": {"type": "string"}}},
        }),
        Answer::Metrics => {
            json!({"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}})
        }
        Answer::Upstream => json!({
            "description": "the upstream's answer as it came (any status passes through); server-sent events when streamed",
            "content": {"application/json": {"schema": free_form}, "text/event-stream": {"schema": {"type": "string"}}},
        }),
        Answer::Mcp => {
            json!({"description": "a JSON-RPC answer", "content": {"application/json": {"schema": free_form}}})
        }
        Answer::Document => {
            json!({"description": "OpenAPI 3.1", "content": {"application/json": {"schema": free_form}}})
        }
        Answer::Page => json!({"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}),
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "every error, every status: OpenAI's shape. Match on code.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "code", "message", "request_id"],
                "properties": {
                    "type": {"type": "string", "description": "the class of the status (authentication_error, billing_error, ...)"},
                    "code": {"type": "string", "description": "bahi's precise reason (insufficient_credits, ...)"},
                    "message": {"type": "string"},
                    "request_id": {"type": "string"},
                },
            },
        },
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One table per tag, read back from the document so the page shows what it says.
fn render_reference_page(document: &Value) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bahi API reference</title>\n\
         <style>body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;width:100%;margin-bottom:2em}\
         th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}code{font-size:.95em}</style></head><body>\n\
         <h1>bahi API reference</h1>\n<p>Made from <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3.1). Errors have one body: \
         <code>{\"error\": {\"type\", \"code\", \"message\", \"request_id\"}}</code>.</p>\n",
    );
    let empty = Map::new();
    let paths = document["paths"].as_object().unwrap_or(&empty);
    for tag in document["tags"].as_array().into_iter().flatten().filter_map(|tag| tag["name"].as_str()) {
        page.push_str(&format!(
            "<h2>{}</h2>\n<table><tr><th>method</th><th>path</th><th>summary</th><th>auth</th><th>statuses</th></tr>\n",
            escape(tag)
        ));
        for (path, item) in paths {
            let Some(item) = item.as_object() else { continue };
            let in_tag: Vec<(&String, &Value)> =
                item.iter().filter(|(_, operation)| operation["tags"][0].as_str() == Some(tag)).collect();
            // A route of every method is one row.
            let methods: Vec<String> = in_tag.iter().map(|(method, _)| method.to_uppercase()).collect();
            let Some((_, operation)) = in_tag.first() else { continue };
            let method_cell = if methods.len() == EVERY_METHOD.len() { "any".to_owned() } else { methods.join(", ") };
            if method_cell != "any" {
                for (method, operation) in &in_tag {
                    page.push_str(&row(&method.to_uppercase(), path, operation));
                }
            } else {
                page.push_str(&row(&method_cell, path, operation));
            }
        }
        page.push_str("</table>\n");
    }
    page.push_str("</body></html>\n");
    page
}

fn row(method: &str, path: &str, operation: &Value) -> String {
    let statuses: Vec<&str> =
        operation["responses"].as_object().map(|map| map.keys().map(String::as_str).collect()).unwrap_or_default();
    format!(
        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        escape(method),
        escape(path),
        escape(operation["summary"].as_str().unwrap_or("")),
        escape(operation["x-bahi-auth"].as_str().unwrap_or("")),
        statuses.join(", ")
    )
}
