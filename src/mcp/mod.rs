//! The MCP surface (Model Context Protocol, over streamable HTTP at `/mcp`): every non-money
//! action of the JSON API as a tool, each a thin mapping onto one use case of `crate::app`,
//! with the same credential, scopes and error codes. Served by the official Rust SDK
//! (`rmcp`) inside bahi's own router; `http` mounts it behind its credential layer, which
//! resolves the caller and hands it here as a `Caller` in the request's extensions.
//!
//! Stateless: every POST carries its credential and is answered as JSON, so there is no MCP
//! session to keep per node (a cluster needs no sticky routing) nor one to hijack.

pub mod stdio;

use std::future::Future;
use std::sync::Arc;

use axum::http::request::Parts;
use bahi_reports::StatementFormat;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::agents::{CreateAgent, MintToken};
use crate::app::audit::{AttributionQuery, EventsQuery};
use crate::app::billing::TopUp;
use crate::app::keys::{CreateKey, ListKeys};
use crate::app::statements::StatementQuery;
use crate::app::{self, AppError, AppResult, Principal, REQUEST_ID, Reader, Services};

/// Who calls a tool: the principal the HTTP layer resolved from the request's credential,
/// and the request's id (errors carry it, as the JSON API's do).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: String,
}

/// The MCP endpoint as a tower service, for `http` to mount.
pub type McpService = StreamableHttpService<Tools, NeverSessionManager>;

/// Largest JSON-RPC body: the JSON API's body limit (`http::extract::MAX_BODY_BYTES`) is
/// not reachable from this layer, and tool arguments are small.
const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

pub fn service(services: Arc<Services>) -> McpService {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_REQUEST_BODY_BYTES)
        // rmcp checks `Host` against loopback names by default, against DNS rebinding of a
        // credential-less local server. Every request here needs a bearer credential a
        // browser never attaches on its own, and bahi is served under any host name.
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(Tools { services: services.clone(), tool_router: Tools::tool_router() }),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// The tools, over the node's services.
#[derive(Clone)]
pub struct Tools {
    services: Arc<Services>,
    tool_router: ToolRouter<Tools>,
}

/// A key named by its id.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyArguments {
    /// `key_…`
    pub api_key_id: String,
}

/// An agent named by its id.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentArguments {
    /// `agt_…`
    pub agent_id: String,
}

/// The agent, then the body of `POST /me/agents/{id}/token`, in one object.
#[derive(Debug, schemars::JsonSchema)]
pub struct MintAgentTokenArguments {
    /// `agt_…`
    pub agent_id: String,
    #[schemars(flatten)]
    pub token: MintToken,
}

// By hand, not `#[serde(flatten)]`: a flattened struct ignores fields it does not know, and
// the JSON API refuses them (`ttl` for `ttl_seconds` is an error, not a default).
impl<'de> Deserialize<'de> for MintAgentTokenArguments {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::deserialize(deserializer)?;
        let Some(Value::String(agent_id)) = fields.remove("agent_id") else {
            return Err(D::Error::custom("agent_id: a string `agt_…` is required"));
        };
        let token = MintToken::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(MintAgentTokenArguments { agent_id, token })
    }
}

/// A call named by its id.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallArguments {
    /// `call_…`
    pub call_id: String,
}

/// A tool's arguments, read as the JSON API reads a body: bad ones are the tool error
/// `invalid_request` naming the field, as the JSON route's 400 does, rather than a JSON-RPC
/// error outside the tool's result. The schema is `T`'s.
pub struct Arguments<T>(Result<T, String>);

impl<T> Arguments<T> {
    fn read(self) -> AppResult<T> {
        self.0.map_err(AppError::invalid_request)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Arguments<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(Arguments(serde_path_to_error::deserialize(value).map_err(|error| format!("invalid request body: {error}"))))
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Arguments<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// The tool error of an `AppError`: the JSON API's error object, with the same `type`,
/// `code` and `message`.
fn tool_error(error: AppError, request_id: &str) -> CallToolResult {
    if let AppError::Internal(detail) = &error {
        tracing::error!(request_id, %detail, "internal error in an MCP tool");
    }
    CallToolResult::structured_error(json!({
        "type": crate::transport::error_class(error.status()),
        "code": error.error_type(),
        "message": error.public_message(),
        "request_id": request_id,
    }))
}

fn structured<T: Serialize>(value: T, request_id: &str) -> CallToolResult {
    match serde_json::to_value(value) {
        Ok(value) => CallToolResult::structured(value),
        Err(error) => tool_error(AppError::internal(error), request_id),
    }
}

impl Tools {
    /// Runs one use case for the request's caller and answers its result as structured
    /// content, or its error as a tool error.
    async fn run<T, F>(&self, parts: &Parts, call: impl FnOnce(Arc<Services>, Principal) -> F) -> CallToolResult
    where
        T: Serialize,
        F: Future<Output = AppResult<T>>,
    {
        self.run_with(parts, call, structured).await
    }

    /// `run`, answering a result with `answer`. The use case runs in the request id's scope,
    /// as it does under the JSON API.
    async fn run_with<T, F>(
        &self,
        parts: &Parts,
        call: impl FnOnce(Arc<Services>, Principal) -> F,
        answer: impl FnOnce(T, &str) -> CallToolResult,
    ) -> CallToolResult
    where
        F: Future<Output = AppResult<T>>,
    {
        let Some(caller) = parts.extensions.get::<Caller>().cloned() else {
            // Only a mount without http's credential layer gets here; refuse, never serve.
            return tool_error(AppError::unauthorized("no credential"), "");
        };
        let request_id = caller.request_id.clone();
        match REQUEST_ID.scope(request_id.clone(), call(self.services.clone(), caller.principal)).await {
            Ok(value) => answer(value, &request_id),
            Err(error) => tool_error(error, &request_id),
        }
    }
}

/// An org credential reads its own org's audit data and statements.
fn reader(principal: Principal) -> Reader {
    Reader::Org(Box::new(principal))
}

#[tool_router]
impl Tools {
    #[tool(description = "The org of this credential: its id, name, balance and credential (GET /v1/auth/account).")]
    async fn account(&self, Extension(parts): Extension<Parts>) -> CallToolResult {
        self.run(&parts, |services, principal| async move { app::accounts::account(&services, &principal) }).await
    }

    #[tool(description = "The org's API keys, never their secrets (GET /v1/auth/account/api-keys). Needs keys:read.")]
    async fn list_api_keys(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<ListKeys>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::keys::list(&services, &principal, arguments.read()?).await
        })
        .await
    }

    #[tool(
        description = "Creates an API key; its secret is in this answer only (POST /v1/auth/account/api-keys). Needs keys:write."
    )]
    async fn create_api_key(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<CreateKey>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::keys::create(&services, &principal, arguments.read()?).await
        })
        .await
    }

    #[tool(
        description = "Revokes an API key of the org (POST /v1/auth/account/api-keys/{id}/revoke). Needs keys:write."
    )]
    async fn revoke_api_key(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<ApiKeyArguments>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::keys::revoke(&services, &principal, &arguments.read()?.api_key_id, false).await
        })
        .await
    }

    #[tool(description = "The org's agents (GET /me/agents). Needs agents:read.")]
    async fn list_agents(&self, Extension(parts): Extension<Parts>) -> CallToolResult {
        self.run(&parts, |services, principal| async move { app::agents::list(&services, &principal) }).await
    }

    #[tool(
        description = "Creates an agent (POST /me/agents); without scopes it gets inference alone. Needs agents:write."
    )]
    async fn create_agent(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<CreateAgent>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::agents::create(&services, &principal, arguments.read()?).await
        })
        .await
    }

    #[tool(
        description = "Mints a short-lived token for an agent of the org (POST /me/agents/{id}/token). Needs agents:write."
    )]
    async fn mint_agent_token(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<MintAgentTokenArguments>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            let request = arguments.read()?;
            app::agents::mint_token(&services, &principal, &request.agent_id, request.token).await
        })
        .await
    }

    #[tool(description = "Revokes an agent and every token of it (POST /me/agents/{id}/revoke). Needs agents:write.")]
    async fn revoke_agent(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<AgentArguments>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::agents::revoke(&services, &principal, &arguments.read()?.agent_id).await
        })
        .await
    }

    #[tool(description = "The models this bahi proxies (GET /v1/models). Needs inference.")]
    async fn list_models(&self, Extension(parts): Extension<Parts>) -> CallToolResult {
        self.run(&parts, |services, principal| async move { app::models::list_models(&services, &principal) }).await
    }

    #[tool(
        description = "One call's audit record: agent, act_for, payer, credential, tokens, cost, and its events (GET /v1/audit/calls/{call_id}). Needs audit:read."
    )]
    async fn audit_call(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<CallArguments>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::audit::call(&services, &reader(principal), &arguments.read()?.call_id).await
        })
        .await
    }

    #[tool(
        description = "Usage and cost grouped by agent, act_for, model, api_key or day over a period (GET /v1/audit/attribution). Needs audit:read."
    )]
    async fn attribution(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<AttributionQuery>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::audit::attribution(&services, &reader(principal), arguments.read()?).await
        })
        .await
    }

    #[tool(description = "The org's own events in log order, redacted (GET /v1/audit/events). Needs audit:read.")]
    async fn org_events(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<EventsQuery>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::audit::events(&services, &reader(principal), arguments.read()?).await
        })
        .await
    }

    #[tool(
        description = "The org's INR statement for a period, from and to as YYYY-MM-DD, both included (GET /v1/statements): JSON, or with format \"csv\" the CSV text. Needs statements:read."
    )]
    async fn statement(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<StatementQuery>>,
    ) -> CallToolResult {
        self.run_with(
            &parts,
            |services, principal| async move {
                let statement = app::statements::statement(&services, &reader(principal), arguments.read()?).await?;
                let bytes = collect(statement.chunks).await?;
                let text = String::from_utf8(bytes).map_err(AppError::internal)?;
                Ok((statement.format, text))
            },
            statement_answer,
        )
        .await
    }

    #[tool(
        description = "Adds credit to the org. Money moves in only by a human in the console: every MCP credential is refused with human_only, as the JSON API refuses keys and agent tokens (POST /me/credits/topups)."
    )]
    async fn top_up(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(arguments): Parameters<Arguments<TopUp>>,
    ) -> CallToolResult {
        self.run(&parts, |services, principal| async move {
            app::billing::top_up(&services, &principal, arguments.read()?).await
        })
        .await
    }
}

/// Reads a statement's stream to its end; statements are bounded by their period's rows.
async fn collect(chunks: impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>>) -> AppResult<Vec<u8>> {
    use futures::StreamExt;
    let mut chunks = std::pin::pin!(chunks);
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        bytes.extend(chunk.map_err(AppError::internal)?);
    }
    Ok(bytes)
}

/// A JSON statement as structured content; a CSV one as its text.
fn statement_answer((format, text): (StatementFormat, String), request_id: &str) -> CallToolResult {
    if format == StatementFormat::Csv {
        return CallToolResult::success(vec![ContentBlock::text(text)]);
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(value) => CallToolResult::structured(value),
        Err(error) => tool_error(AppError::internal(error), request_id),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bahi", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "bahi's billing and audit ledger: the org's account, API keys, agents and their tokens, models, \
                 audit records and statements. Money moves in only by a human in the console.",
            )
    }
}
