use std::process::ExitCode;

use anyhow::{Context, bail};
use bahi::cli::{Cli, Command, ServeArgs};
use bahi::config::ServerConfig;
use bahi::ledger::verify_log;
use bahi::store::EventStore;
use bahi_domain::credential::{Environment, KeyPrefix, SecretHash};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: escape codes in a redirected log file are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Minimum length of the operator credential.
const MIN_OPERATOR_KEY_LENGTH: usize = 32;

fn server_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let environment = Environment::parse(&args.environment)
        .with_context(|| format!("BAHI_ENVIRONMENT must be live or test, not {:?}", args.environment))?;
    let key_prefix = KeyPrefix::parse(&args.key_prefix).context("BAHI_KEY_PREFIX")?;
    let legacy_key_prefixes = args
        .legacy_key_prefixes
        .iter()
        .filter(|prefix| !prefix.is_empty())
        .map(|prefix| KeyPrefix::parse(prefix).with_context(|| format!("legacy prefix {prefix:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let operator_key_hash = match &args.operator_key {
        None => None,
        Some(key) if key.len() < MIN_OPERATOR_KEY_LENGTH => {
            bail!("BAHI_OPERATOR_KEY must be at least {MIN_OPERATOR_KEY_LENGTH} characters")
        }
        Some(key) => Some(SecretHash::of(key)),
    };
    if args.hold_ttl_seconds == 0 || args.hold_ttl_seconds > 86_400 {
        bail!("BAHI_HOLD_TTL_SECONDS must be between 1 and 86400");
    }
    let default_rate_limit = bahi::config::parse_rate_limit(&args.default_rate_limit)
        .context("BAHI_DEFAULT_RATE_LIMIT must be REQUESTS/SECONDS, e.g. 6000/60")?;
    let anonymous_rate_limit = bahi::config::parse_rate_limit(&args.anonymous_rate_limit)
        .context("BAHI_ANONYMOUS_RATE_LIMIT must be REQUESTS/SECONDS, e.g. 30/60")?;
    let key_file = args.key_file.clone().unwrap_or_else(|| bahi::config::default_key_file(&args.database.database_url));
    if args.key_encryption_key.as_deref().is_none_or(str::is_empty)
        && bahi::config::key_file_beside_database(&key_file, &args.database.database_url)
    {
        tracing::warn!(
            key_file = %key_file.display(),
            "the key-encryption key file is in the same directory as the SQLite database: a copy of that \
             directory carries the key that unseals the token issuer's private keys; move the key elsewhere \
             with --key-file / BAHI_KEY_FILE, or give it in BAHI_KEY_ENCRYPTION_KEY"
        );
    }
    let key_encryption_key = bahi::identity::load_key_encryption_key(args.key_encryption_key.as_deref(), key_file)?;
    let transport = transport_limits(args)?;
    let token_rules = token_rules(args)?;
    Ok(ServerConfig {
        key_encryption_key,
        default_rate_limit,
        anonymous_rate_limit,
        secure_cookies: args.secure_cookies,
        environment,
        key_prefix,
        legacy_key_prefixes,
        operator_key_hash,
        hold_ttl_seconds: args.hold_ttl_seconds,
        // Empty means `http://<bound address>`, filled in once the listener is bound (the
        // port is only known then when listening on port 0).
        issuer: args.issuer.clone().unwrap_or_default(),
        transport,
        token_rules,
        test_clock: args.test_clock,
        proxy: proxy_limits(args)?,
        cluster_nodes: match args.cluster_nodes {
            1..=1000 => args.cluster_nodes,
            _ => bail!("BAHI_CLUSTER_NODES must be between 1 and 1000"),
        },
    })
}

/// Largest proxied request body accepted as a setting.
const MAX_PROXY_BODY_BYTES: usize = 64 * 1024 * 1024;

fn proxy_limits(args: &ServeArgs) -> anyhow::Result<bahi::config::ProxyLimits> {
    let seconds = |value: u64, name: &str| -> anyhow::Result<std::time::Duration> {
        if value == 0 || value > MAX_TRANSPORT_TIMEOUT_SECONDS {
            bail!("{name} must be between 1 and {MAX_TRANSPORT_TIMEOUT_SECONDS}");
        }
        Ok(std::time::Duration::from_secs(value))
    };
    if args.proxy_max_body_bytes == 0 || args.proxy_max_body_bytes > MAX_PROXY_BODY_BYTES {
        bail!("BAHI_PROXY_MAX_BODY_BYTES must be between 1 and {MAX_PROXY_BODY_BYTES}");
    }
    if args.max_upstream_streams == 0 || args.max_upstream_streams > 1_000_000 {
        bail!("BAHI_MAX_UPSTREAM_STREAMS must be between 1 and 1000000");
    }
    Ok(bahi::config::ProxyLimits {
        max_body_bytes: args.proxy_max_body_bytes,
        connect_timeout: seconds(args.upstream_connect_timeout_seconds, "BAHI_UPSTREAM_CONNECT_TIMEOUT_SECONDS")?,
        read_timeout: seconds(args.upstream_read_timeout_seconds, "BAHI_UPSTREAM_READ_TIMEOUT_SECONDS")?,
        max_streams: args.max_upstream_streams,
        drain_timeout: seconds(args.upstream_drain_seconds, "BAHI_UPSTREAM_DRAIN_SECONDS")?,
    })
}

/// Longest timeout accepted for any of the transport's timeouts.
const MAX_TRANSPORT_TIMEOUT_SECONDS: u64 = 3_600;

fn transport_limits(args: &ServeArgs) -> anyhow::Result<bahi::transport::TransportLimits> {
    let seconds = |value: u64, name: &str| -> anyhow::Result<std::time::Duration> {
        if value == 0 || value > MAX_TRANSPORT_TIMEOUT_SECONDS {
            bail!("{name} must be between 1 and {MAX_TRANSPORT_TIMEOUT_SECONDS}");
        }
        Ok(std::time::Duration::from_secs(value))
    };
    let max_connections = args.max_connections.unwrap_or_else(bahi::transport::default_max_connections);
    if max_connections == 0 || max_connections > u32::MAX as usize {
        bail!("BAHI_MAX_CONNECTIONS must be between 1 and {}", u32::MAX);
    }
    Ok(bahi::transport::TransportLimits {
        header_read_timeout: seconds(args.header_read_timeout_seconds, "BAHI_HEADER_READ_TIMEOUT_SECONDS")?,
        idle_timeout: seconds(args.idle_timeout_seconds, "BAHI_IDLE_TIMEOUT_SECONDS")?,
        body_read_timeout: seconds(args.body_read_timeout_seconds, "BAHI_BODY_READ_TIMEOUT_SECONDS")?,
        max_connections,
    })
}

/// Longest leeway and token lifetime accepted for external issuers.
const MAX_EXTERNAL_LEEWAY_SECONDS: u64 = 600;
const MAX_EXTERNAL_LIFETIME_SECONDS: u64 = 30 * 86_400;

fn token_rules(args: &ServeArgs) -> anyhow::Result<bahi::agent_token::TokenRules> {
    if args.external_token_leeway_seconds > MAX_EXTERNAL_LEEWAY_SECONDS {
        bail!("BAHI_EXTERNAL_TOKEN_LEEWAY_SECONDS must be at most {MAX_EXTERNAL_LEEWAY_SECONDS}");
    }
    if args.external_token_max_lifetime_seconds == 0
        || args.external_token_max_lifetime_seconds > MAX_EXTERNAL_LIFETIME_SECONDS
    {
        bail!("BAHI_EXTERNAL_TOKEN_MAX_LIFETIME_SECONDS must be between 1 and {MAX_EXTERNAL_LIFETIME_SECONDS}");
    }
    Ok(bahi::agent_token::TokenRules {
        external_leeway_seconds: args.external_token_leeway_seconds as i64,
        external_max_lifetime_seconds: args.external_token_max_lifetime_seconds as i64,
        ..bahi::agent_token::TokenRules::default()
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            init_tracing(&args.log_format);
            let listener = bahi::server::bind(&args.listen).await?;
            let config = server_config(&args)?;
            bahi::server::serve(listener, &args.database.database_url, config).await?;
        }
        Command::Migrate(args) => {
            init_tracing("pretty");
            let store = bahi::store::Store::open(&args.database_url).await?;
            store.migrate().await?;
            println!("migrations applied to {}", store.engine());
        }
        Command::Verify(args) => {
            let store = bahi::store::Store::open_existing(&args.database_url).await?;
            store.migrate().await?;
            match verify_log(&store).await? {
                Ok(count) => println!("log intact: {count} events verified"),
                Err((position, reason)) => {
                    eprintln!("log broken at position {position}: {reason}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Rebuild(args) => {
            init_tracing("pretty");
            let store = bahi::store::Store::open_existing(&args.database_url).await?;
            store.migrate().await?;
            let position = bahi::projector::rebuild_projections(&store).await?;
            store.analyze_read_models().await?;
            println!("rebuilt {} projections to position {position}", bahi_projections::PROJECTIONS.len());
        }
        Command::Statement(args) => return statement_command(&args).await,
        Command::Mcp(args) => bahi::mcp::stdio::relay(&args.url, &args.api_key).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    bahi::allocator::configure();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bahi: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bahi: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// `bahi statement`: brings the read models up to the log's head (the server may have been
/// stopped before its projections caught up), then writes the statement to stdout.
async fn statement_command(args: &bahi::cli::StatementArgs) -> anyhow::Result<std::process::ExitCode> {
    use bahi::store::{EventStore, ReadModels, Store};
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    let (from, to, period) = bahi_reports::statement_period(&args.from, &args.to)?;
    let format = bahi_reports::StatementFormat::parse(&args.format)?;
    let org_id = bahi_domain::ids::OrgId::parse(&args.org)?;
    let store = Store::open_existing(&args.database.database_url).await?;
    store.migrate().await?;
    bahi::projector::catch_up_projections(&store, None).await?;
    if !store.org_exists(org_id.as_str()).await? {
        anyhow::bail!("no such org {org_id}");
    }
    let chunks =
        bahi::finance::statement_stream(&store, org_id.as_str(), from, to, period, format, String::new()).await?;
    let mut chunks = std::pin::pin!(chunks);
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => stdout.write_all(&chunk).await?,
            Err(error) => {
                // What was written, the incomplete-statement row last, reaches stdout first.
                stdout.flush().await?;
                return Err(error.into());
            }
        }
    }
    stdout.flush().await?;
    Ok(std::process::ExitCode::SUCCESS)
}
