//! The `bahi` command line.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bahi",
    version,
    about = "bahi (बही, the ledger book): an event-sourced billing and audit ledger for AI inference gateways"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct DatabaseArgs {
    /// Where the ledger lives: sqlite://PATH (created if missing; read models beside it in
    /// PATH.read) or postgres://USER@HOST/DB.
    #[arg(long = "database", env = "BAHI_DATABASE_URL", default_value = "sqlite://bahi.db")]
    pub database_url: String,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "BAHI_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The environment this server runs: `live` or `test`. Keys of the other one get 401.
    #[arg(long, env = "BAHI_ENVIRONMENT", default_value = "live")]
    pub environment: String,
    /// Prefix of newly issued API keys (`<prefix>_<env>_<random>`).
    #[arg(long, env = "BAHI_KEY_PREFIX", default_value = "bahi")]
    pub key_prefix: String,
    /// Comma-separated legacy prefixes whose keys stay valid.
    #[arg(long, env = "BAHI_LEGACY_KEY_PREFIXES", default_value = "", value_delimiter = ',')]
    pub legacy_key_prefixes: Vec<String>,
    /// The operator credential (any secret of 32+ characters); only its hash is kept.
    #[arg(long, env = "BAHI_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<String>,
    /// For tests only: the operator may move this node's clock forward with
    /// `POST /v1/admin/test-clock/advance {"seconds": N}`. Never set it in production.
    #[arg(long, env = "BAHI_TEST_CLOCK")]
    pub test_clock: bool,
    /// Seconds before an unsettled hold expires and releases its credit.
    #[arg(long, env = "BAHI_HOLD_TTL_SECONDS", default_value_t = 600)]
    pub hold_ttl_seconds: u64,
    /// The embedded issuer's `iss` (default `http://<listen>`).
    #[arg(long, env = "BAHI_ISSUER")]
    pub issuer: Option<String>,
    /// Rate limit of keys without their own and of console sessions, as REQUESTS/SECONDS.
    #[arg(long, env = "BAHI_DEFAULT_RATE_LIMIT", default_value = "6000/60")]
    pub default_rate_limit: String,
    /// Rate limit per client address for agent-register, signup and login.
    #[arg(long, env = "BAHI_ANONYMOUS_RATE_LIMIT", default_value = "30/60")]
    pub anonymous_rate_limit: String,
    /// Mark the session cookie Secure (set when serving behind TLS).
    #[arg(long, env = "BAHI_SECURE_COOKIES", default_value_t = false)]
    pub secure_cookies: bool,
    /// The 32-byte key (64 hex characters) that seals the embedded issuer's private keys in
    /// the log. Without it, a key file is used (created on first start).
    #[arg(long, env = "BAHI_KEY_ENCRYPTION_KEY", hide_env_values = true)]
    pub key_encryption_key: Option<String>,
    /// Key file holding the key-encryption key (default: `<sqlite path>.kek`, or `bahi.kek`
    /// for PostgreSQL; every node of a cluster needs the same key). Keep it out of the
    /// database's directory: a copy of that directory would carry the key that unseals the
    /// issuer's private keys (start-up warns while it is there).
    #[arg(long, env = "BAHI_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Seconds a client has to send a whole request head (from connecting, or from the first
    /// byte of the next request on a kept-alive connection); then the connection is closed.
    #[arg(long, env = "BAHI_HEADER_READ_TIMEOUT_SECONDS", default_value_t = crate::transport::DEFAULT_HEADER_READ_TIMEOUT_SECONDS)]
    pub header_read_timeout_seconds: u64,
    /// Seconds a kept-alive connection may wait for its next request, or a response for the
    /// client to read it, before the connection is closed.
    #[arg(long, env = "BAHI_IDLE_TIMEOUT_SECONDS", default_value_t = crate::transport::DEFAULT_IDLE_TIMEOUT_SECONDS)]
    pub idle_timeout_seconds: u64,
    /// Seconds a client has to send a whole request body after its head (408 past it).
    #[arg(long, env = "BAHI_BODY_READ_TIMEOUT_SECONDS", default_value_t = crate::transport::DEFAULT_BODY_READ_TIMEOUT_SECONDS)]
    pub body_read_timeout_seconds: u64,
    /// Connections served at once; more wait to be accepted until one closes (default
    /// 10000, or the open-file limit minus 128 when that is lower).
    #[arg(long, env = "BAHI_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Clock skew allowed on external issuers' tokens (`exp`, `nbf`, `iat`), in seconds.
    #[arg(long, env = "BAHI_EXTERNAL_TOKEN_LEEWAY_SECONDS", default_value_t = crate::agent_token::DEFAULT_EXTERNAL_LEEWAY_SECONDS)]
    pub external_token_leeway_seconds: u64,
    /// Longest lifetime of an external issuer's token (`exp - iat`, or `exp - now` without
    /// `iat`), in seconds; longer-lived tokens are refused.
    #[arg(long, env = "BAHI_EXTERNAL_TOKEN_MAX_LIFETIME_SECONDS", default_value_t = crate::agent_token::DEFAULT_EXTERNAL_MAX_LIFETIME_SECONDS)]
    pub external_token_max_lifetime_seconds: u64,
    /// Nodes serving this log behind one balancer: each node enforces 1/N of every rate
    /// limit (rounded up), so that the cluster together allows the limit.
    #[arg(long, env = "BAHI_CLUSTER_NODES", default_value_t = 1)]
    pub cluster_nodes: u32,
    /// Largest request body of a proxied call (`/v1/chat/completions`, `/v1/embeddings`,
    /// `/v1/messages`), in bytes; larger is 413.
    #[arg(long, env = "BAHI_PROXY_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub proxy_max_body_bytes: usize,
    /// Seconds to connect to a model's upstream before the call is refused (502).
    #[arg(long, env = "BAHI_UPSTREAM_CONNECT_TIMEOUT_SECONDS", default_value_t = 10)]
    pub upstream_connect_timeout_seconds: u64,
    /// Longest wait, in seconds, for an upstream's next bytes (its first ones included).
    #[arg(long, env = "BAHI_UPSTREAM_READ_TIMEOUT_SECONDS", default_value_t = 300)]
    pub upstream_read_timeout_seconds: u64,
    /// Proxied calls in flight on this node at once; one more is 503 before anything is held.
    #[arg(long, env = "BAHI_MAX_UPSTREAM_STREAMS", default_value_t = 4096)]
    pub max_upstream_streams: usize,
    /// Seconds an upstream is still read after its client left, to learn the call's usage.
    #[arg(long, env = "BAHI_UPSTREAM_DRAIN_SECONDS", default_value_t = 30)]
    pub upstream_drain_seconds: u64,
    /// Log format: `pretty` or `json` (levels come from RUST_LOG, default info).
    #[arg(long, env = "BAHI_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
}

#[derive(Debug, Args, Clone)]
pub struct StatementArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The org (`org_…`).
    #[arg(long)]
    pub org: String,
    /// First day of the period (YYYY-MM-DD, UTC).
    #[arg(long)]
    pub from: String,
    /// Last day of the period, included (YYYY-MM-DD, UTC).
    #[arg(long)]
    pub to: String,
    /// `csv` or `json`.
    #[arg(long, default_value = "csv")]
    pub format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (applies migrations first).
    Serve(Box<ServeArgs>),
    /// Apply migrations and exit.
    Migrate(DatabaseArgs),
    /// Re-hash and decode the whole log; exit 0 when intact, else 1 naming the first bad
    /// position (a row off its hash chain, or one that does not decode).
    Verify(DatabaseArgs),
    /// Drop every SQL projection and replay it from position 1 in one transaction (readers see the old read models until it commits), then refresh the read tables' planner statistics.
    Rebuild(DatabaseArgs),
    /// Print an org's INR statement for a period, read from the database (no server needed).
    Statement(StatementArgs),
    /// MCP over stdio for local agent hosts: relays each JSON-RPC message to a bahi server's
    /// `/mcp` with a credential from the environment (`BAHI_API_KEY`).
    Mcp(McpArgs),
}

#[derive(Debug, Args, Clone)]
pub struct McpArgs {
    /// Speak MCP on stdin and stdout (the only transport of this command; the server itself
    /// serves MCP over HTTP at /mcp).
    #[arg(long, required = true)]
    pub stdio: bool,
    /// The bahi server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "BAHI_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The API key or agent token the tools act with.
    #[arg(long, env = "BAHI_API_KEY", hide_env_values = true)]
    pub api_key: String,
}
