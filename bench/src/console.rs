//! Console page render times (issue 27): the Usage and Audit pages (and Statements) of an
//! org with --calls calls, each beside the JSON requests that answer the same figures, timed
//! in the same run, on the same node and connection, with the same session cookie.
//!
//! A `bahi serve` node (the release binary, in a child process) makes the org as people
//! would: its owner signs up, makes two API keys; the operator prices MODELS and grants
//! credit. The node is stopped, and this process appends the org's calls to the log itself
//! (each decided by `bahi_domain::decide`, chained and folded as the writer would), dated
//! over the last 30 days up to now, so the pages' default period holds all of them; `bahi
//! verify` checks the log. The node starts again on it, its SQL projections catch up, and
//! then every page and its baseline are requested one at a time on one keep-alive
//! connection.

// Percentiles, rates, ratios and megabytes are floats; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bahi_domain::Command;
use bahi_domain::billing::UsageStatus;
use bahi_domain::chain::truncate_to_micros;
use bahi_domain::ids::{ApiKeyId, CallId, OrgId, TopupId};
use bahi_domain::money::Money;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{COOKIE, HeaderValue, SET_COOKIE};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use bahi::ledger::Ledger;
use bahi::server::open_and_load;
use bahi::store::{EventStore, Store, StoredEvent};

use crate::api::{BENCH_OPERATOR_KEY, LoadConnection};
use crate::cluster::{Database, Node, bahi_binary, load_average, millis, percentile};
use crate::tempfile_dir::TempDir;

/// The models the calls use, each priced: (model, input ₹ per million, output ₹ per million).
const MODELS: [(&str, &str, &str); 4] = [
    ("bench-small", "0.15", "0.60"),
    ("bench-medium", "2.50", "10"),
    ("bench-large", "15", "60"),
    ("bench-embed", "0.02", "0.02"),
];
/// The org's API keys; the calls that no agent makes are dealt over them.
const API_KEYS: usize = 2;
/// Credit granted to the org (₹): a million calls cost about ₹12,000.
const CREDIT: &str = "100000000";
const OWNER_EMAIL: &str = "owner@console-bench.example";
const OWNER_PASSWORD: &str = "a console benchmark passphrase";
/// The pages' default period, in days up to today (`console::usage::DEFAULT_DAYS`).
const PERIOD_DAYS: u64 = 30;
/// A call's usage arrives this many authorizations after it, as on a busy gateway.
const CALLS_IN_FLIGHT: usize = 256;
/// Calls whose rows are appended in one transaction (two events each).
const FILL_BATCH_CALLS: usize = 5_000;
/// Events on the Audit page's first page of the log (`console::audit::EVENTS_PAGE`).
const EVENTS_PAGE: usize = 50;
/// Rounds sent before each measured series, and not counted.
const WARM_UPS: usize = 2;
/// The longest the restarted node's projections may take to reach the log's head.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3600);
/// A page this fast at the median meets the goal (on this machine).
const GOAL_MILLIS: f64 = 300.0;

/// What the console benchmark takes from the command line.
pub struct ConsoleOptions {
    /// A PostgreSQL server to make (and drop) a database on; a fresh SQLite file otherwise.
    pub database: Option<String>,
    /// The `bahi` binary; built with `cargo build --release` when not given.
    pub bahi: Option<PathBuf>,
    pub calls: usize,
    pub samples: usize,
}

/// `bahi-bench console`: see the module's documentation.
pub async fn console(options: &ConsoleOptions) -> anyhow::Result<()> {
    // The Audit page's first page of the log must be full of the org's events.
    anyhow::ensure!(options.calls >= 100 && options.samples >= 1, "console needs --calls >= 100 and --samples >= 1");
    let bahi = bahi_binary(&options.bahi)?;
    let place = Place::create(&options.database).await?;
    let result = measure_on(&bahi, &place, options).await;
    if result.is_err() {
        place.print_node_logs();
    }
    place.remove().await;
    result
}

/// Where the log lives: a fresh SQLite file in `directory` (which holds the node's logs
/// either way), or a fresh database on a PostgreSQL server.
struct Place {
    directory: TempDir,
    database: Option<Database>,
}

impl Place {
    async fn create(database: &Option<String>) -> anyhow::Result<Place> {
        let directory = TempDir::new("console")?;
        let database = match database.as_deref() {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(Database::create(&server_of(url), "console").await?)
            }
            Some(url) => anyhow::bail!("console: --database names a PostgreSQL server (or omit it for SQLite): {url}"),
        };
        Ok(Place { directory, database })
    }

    fn url(&self) -> String {
        match &self.database {
            Some(database) => database.url.clone(),
            None => format!("sqlite://{}", self.directory.path.join("bench.db").display()),
        }
    }

    fn node_log(&self, label: &str) -> PathBuf {
        self.directory.path.join(format!("node-{label}.log"))
    }

    /// The log file and the read models' file, with their write-ahead logs; or the
    /// PostgreSQL database's size.
    async fn size_bytes(&self, store: &Store) -> anyhow::Result<u64> {
        if let Store::Postgres(postgres) = store {
            let size: i64 =
                sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(postgres.pool()).await?;
            return Ok(u64::try_from(size)?);
        }
        let mut total = 0;
        for entry in std::fs::read_dir(&self.directory.path)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("bench.db") {
                total += entry.metadata()?.len();
            }
        }
        Ok(total)
    }

    fn print_node_logs(&self) {
        for label in ["setup", "serve"] {
            if let Ok(log) = std::fs::read_to_string(self.node_log(label)) {
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- the {label} node's log, last lines ---");
                for line in &lines[lines.len().saturating_sub(20)..] {
                    eprintln!("{line}");
                }
            }
        }
    }

    async fn remove(self) {
        if let Some(database) = self.database
            && let Err(error) = database.drop().await
        {
            eprintln!("could not drop the benchmark's database: {error}");
        }
    }
}

/// The server part of a PostgreSQL URL (`postgres://user@host:port`), without a database.
fn server_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// Starts the benchmark's nodes: one binary, database and key-encryption key for all.
struct Launcher<'a> {
    bahi: &'a Path,
    place: &'a Place,
    url: String,
    key_encryption_key: String,
}

impl Launcher<'_> {
    async fn start(&self, label: &str) -> anyhow::Result<Node> {
        Node::start(self.bahi, &self.url, &self.place.node_log(label), &self.key_encryption_key, 1).await
    }
}

/// What the restarted node took and answered.
struct Measured {
    listening_seconds: f64,
    catch_up_seconds: f64,
    from: NaiveDate,
    to: NaiveDate,
    load_before: String,
    rows: Vec<Timed>,
}

/// The log and database after the run.
struct Inspected {
    engine: &'static str,
    org_events: i64,
    size_bytes: u64,
}

async fn measure_on(bahi: &Path, place: &Place, options: &ConsoleOptions) -> anyhow::Result<()> {
    let key_encryption_key = hex::encode(bahi::identity::random_bytes::<32>());
    let launcher = Launcher { bahi, place, url: place.url(), key_encryption_key };
    let node = launcher.start("setup").await?;
    let org = make_org(node.address).await;
    let stopped = stop(node).await;
    let org = org?;
    anyhow::ensure!(stopped, "the setup node did not stop cleanly");

    eprintln!("appending {} calls to the log …", options.calls);
    let filled = fill(&launcher.url, &org, options.calls).await?;
    let verified = verify(bahi, &launcher.url).await?;
    eprintln!("restarting the node on the filled log …");
    let measured = restart_and_time(&launcher, &org, &filled, options).await?;
    let inspected = inspect(place, &launcher.url, &org.org_id).await?;
    print_report(&org.org_id, (&filled, &verified), &measured, &inspected, options);
    Ok(())
}

/// Starts the node on the filled log, waits for its projections to reach the head, and
/// times every page and baseline; then stops it.
async fn restart_and_time(
    launcher: &Launcher<'_>,
    org: &Org,
    filled: &Filled,
    options: &ConsoleOptions,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let node = launcher.start("serve").await?;
    let listening_seconds = started.elapsed().as_secs_f64();
    let timed = async {
        projections_at_head(node.address).await?;
        let catch_up_seconds = started.elapsed().as_secs_f64() - listening_seconds;
        check_total(node.address, &org.cookie, options.calls).await?;
        let load_before = load_average();
        let today = Utc::now().date_naive();
        let from = today.checked_sub_days(chrono::Days::new(PERIOD_DAYS - 1)).context("the period's first day")?;
        anyhow::ensure!(filled.last_call_at.date_naive() == today, "the day changed (UTC) since the fill: run again");
        let pages = comparisons(node.address, &org.cookie, options.calls, &filled.sample_call, (from, today)).await?;
        let rows = time_all(node.address, &org.cookie, pages, options.samples).await?;
        anyhow::ensure!(Utc::now().date_naive() == today, "the day changed while measuring (UTC): run again");
        anyhow::Ok(Measured { listening_seconds, catch_up_seconds, from, to: today, load_before, rows })
    }
    .await;
    let stopped = stop(node).await;
    let measured = timed?;
    anyhow::ensure!(stopped, "the measured node did not stop cleanly");
    Ok(measured)
}

/// The org's event count and the database's size, read with the node stopped.
async fn inspect(place: &Place, url: &str, org_id: &OrgId) -> anyhow::Result<Inspected> {
    let store = Store::open(url).await?;
    let org_events = org_event_count(&store, org_id).await?;
    let size_bytes = place.size_bytes(&store).await?;
    let engine = store.engine();
    store.close().await;
    Ok(Inspected { engine, org_events, size_bytes })
}

/// SIGTERM, and a wait for the node to finish its graceful stop; whether it did.
async fn stop(node: Node) -> bool {
    node.terminate();
    node.wait().await
}

/// The org the pages show, and its owner's console session.
struct Org {
    org_id: OrgId,
    /// `bahi_session=…`, as a browser sends it back.
    cookie: HeaderValue,
    key_ids: Vec<ApiKeyId>,
}

/// The org, made through the node's HTTP API: the owner signs up (a console session) and
/// makes API_KEYS keys; the operator prices MODELS. (Its credit is granted by `fill`.)
async fn make_org(address: SocketAddr) -> anyhow::Result<Org> {
    let base = format!("http://{address}");
    let client = reqwest::Client::new();
    let signup = json!({"email": OWNER_EMAIL, "password": OWNER_PASSWORD, "org_name": "console bench"});
    let signed_up = client
        .post(format!("{base}/me/signup"))
        .json(&signup)
        .send()
        .await?
        .error_for_status()
        .context("signing up")?;
    let cookie = session_cookie(signed_up.headers())?;
    let session: Value = signed_up.json().await?;
    let org_id = OrgId::parse(session["org_id"].as_str().context("signup's org_id")?)
        .map_err(|error| anyhow::anyhow!("signup's org_id: {error}"))?;
    let mut key_ids = Vec::with_capacity(API_KEYS);
    for index in 0..API_KEYS {
        let created: Value = client
            .post(format!("{base}/v1/auth/account/api-keys"))
            .header(COOKIE, cookie.clone())
            .json(&json!({"name": format!("console bench key {index}")}))
            .send()
            .await?
            .error_for_status()
            .context("making an API key")?
            .json()
            .await?;
        let key_id = created["api_key_id"].as_str().context("api_key_id")?;
        key_ids.push(ApiKeyId::parse(key_id).map_err(|error| anyhow::anyhow!("api_key_id: {error}"))?);
    }
    for (model, input, output) in MODELS {
        client
            .put(format!("{base}/v1/admin/prices/{model}"))
            .bearer_auth(BENCH_OPERATOR_KEY)
            .json(&json!({"input_per_million": input, "output_per_million": output}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("pricing {model}"))?;
    }
    Ok(Org { org_id, cookie, key_ids })
}

/// The `bahi_session=…` pair of the answer's `Set-Cookie`.
fn session_cookie(headers: &hyper::header::HeaderMap) -> anyhow::Result<HeaderValue> {
    let pair = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .find(|pair| pair.starts_with("bahi_session="))
        .context("signup set no bahi_session cookie")?;
    Ok(HeaderValue::from_str(pair)?)
}

/// What `fill` appends, in order: CREDIT granted to the org (the command the operator's
/// grant endpoint submits), dated at the start of the period so that the statement's
/// balance runs forward in time; then each call's authorization, preceded by the usage of
/// the call CALLS_IN_FLIGHT authorizations back; after the last call, the usage of every
/// call still in flight. Call `index` is dated `start + index × step`.
struct CallLog {
    org_id: OrgId,
    key_ids: Vec<ApiKeyId>,
    calls: usize,
    next: usize,
    in_flight: VecDeque<(CallId, usize)>,
    start: DateTime<Utc>,
    step_micros: i64,
    /// Every call's hold.
    hold: Money,
    /// The call in the middle, which the Audit page looks up.
    sample_call: Option<CallId>,
}

impl CallLog {
    /// `calls` calls from the first day of the pages' default period to `end`.
    fn new(org: &Org, calls: usize, end: DateTime<Utc>) -> anyhow::Result<CallLog> {
        let first_day = end.date_naive().checked_sub_days(chrono::Days::new(PERIOD_DAYS - 1)).context("first day")?;
        let start = first_day.and_time(NaiveTime::MIN).and_utc();
        let span = (end - start).num_microseconds().context("the period in µs")?;
        Ok(CallLog {
            org_id: org.org_id.clone(),
            key_ids: org.key_ids.clone(),
            calls,
            next: 0,
            in_flight: VecDeque::with_capacity(CALLS_IN_FLIGHT + 1),
            start,
            step_micros: (span / i64::try_from(calls)?).max(1),
            hold: Money::parse("1")?,
            sample_call: None,
        })
    }

    fn time_of(&self, index: usize) -> anyhow::Result<DateTime<Utc>> {
        let offset = self.step_micros.checked_mul(i64::try_from(index)?).context("a call's time")?;
        Ok(self.start + chrono::Duration::microseconds(offset))
    }

    /// Rows of the next `count` calls, chained after `ledger`'s head and folded into it;
    /// None once every call is made and settled.
    fn next_rows(&mut self, ledger: &mut Ledger, count: usize) -> anyhow::Result<Option<Vec<StoredEvent>>> {
        if self.next == self.calls && self.in_flight.is_empty() {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(count * 2 + 1);
        if self.next == 0 {
            let grant = Command::Grant {
                org_id: self.org_id.clone(),
                grant_id: TopupId::from_random(bahi::identity::new_id_bytes()),
                amount: Money::parse(CREDIT)?,
                reason: "console bench".to_owned(),
            };
            crate::push_decided(ledger, &grant, self.start, &mut rows)?;
        }
        let end = (self.next + count).min(self.calls);
        while self.next < end {
            let now = self.time_of(self.next)?;
            if self.in_flight.len() >= CALLS_IN_FLIGHT
                && let Some(usage) = self.usage()
            {
                crate::push_decided(ledger, &usage, now, &mut rows)?;
            }
            let authorize = self.authorize();
            crate::push_decided(ledger, &authorize, now, &mut rows)?;
        }
        if self.next == self.calls {
            let now = self.time_of(self.calls)?;
            while let Some(usage) = self.usage() {
                crate::push_decided(ledger, &usage, now, &mut rows)?;
            }
        }
        Ok(Some(rows))
    }

    /// The next call's authorization: a model of MODELS, a third of the calls by agents
    /// (`gateway_attribution`), the rest by the org's keys in turn.
    fn authorize(&mut self) -> Command {
        let index = self.next;
        self.next += 1;
        let call_id = CallId::from_random(bahi::identity::new_id_bytes());
        if index == self.calls / 2 {
            self.sample_call = Some(call_id.clone());
        }
        self.in_flight.push_back((call_id.clone(), index));
        let key_id = &self.key_ids[(index / 3) % self.key_ids.len()];
        Command::Authorize {
            call_id,
            org_id: self.org_id.clone(),
            attribution: crate::gateway_attribution(index, &self.org_id, key_id),
            model: MODELS[index % MODELS.len()].0.to_owned(),
            max_cost: Some(self.hold),
            hold_ttl_seconds: 3600,
        }
    }

    /// The usage of the oldest call in flight, if any.
    fn usage(&mut self) -> Option<Command> {
        let (call_id, index) = self.in_flight.pop_front()?;
        Some(Command::RecordUsage {
            call_id,
            model: MODELS[index % MODELS.len()].0.to_owned(),
            input_tokens: 200 + (index % 1800) as u64,
            output_tokens: 50 + (index % 700) as u64,
            status: UsageStatus::Succeeded,
            request_hash: hex::encode(bahi::identity::random_bytes::<16>()),
            usage_source: None,
        })
    }
}

/// What `fill` appended.
struct Filled {
    events: i64,
    head: i64,
    seconds: f64,
    first_call_at: DateTime<Utc>,
    last_call_at: DateTime<Utc>,
    sample_call: CallId,
}

/// Appends the org's `calls` calls to the log at `url` (no node running on it), a batch of
/// FILL_BATCH_CALLS calls per transaction, the next batch decided on a thread of its own
/// while this one is written.
async fn fill(url: &str, org: &Org, calls: usize) -> anyhow::Result<Filled> {
    let started = Instant::now();
    let (store, shared) = open_and_load(url).await.context("loading the log to fill")?;
    let mut ledger = shared.read().clone();
    drop(shared);
    let before = ledger.position;
    let end = truncate_to_micros(Utc::now());
    let mut log = CallLog::new(org, calls, end)?;
    let first_call_at = log.start;
    let (sender, mut batches) = tokio::sync::mpsc::channel::<(i64, Vec<StoredEvent>)>(2);
    let generator = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<CallId>> {
        loop {
            let expected_head = ledger.position;
            let Some(rows) = log.next_rows(&mut ledger, FILL_BATCH_CALLS)? else { return Ok(log.sample_call) };
            anyhow::ensure!(sender.blocking_send((expected_head, rows)).is_ok(), "the appender stopped");
        }
    });
    let mut head = before;
    while let Some((expected_head, rows)) = batches.recv().await {
        store.append(expected_head, &rows).await?;
        head = rows.last().map_or(head, |row| row.position);
    }
    let sample_call = generator.await??.context("no call in the middle")?;
    store.close().await;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Filled { events: head - before, head, seconds, first_call_at, last_call_at: end, sample_call })
}

/// What `bahi verify` said of the log, and how long it took.
struct Verified {
    said: String,
    seconds: f64,
}

/// `bahi verify` on the log (`log intact: N events verified`); a broken log is an error.
async fn verify(bahi: &Path, url: &str) -> anyhow::Result<Verified> {
    let started = Instant::now();
    let output = tokio::process::Command::new(bahi).args(["verify", "--database", url]).output().await?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    anyhow::ensure!(output.status.success(), "bahi verify: {said} {}", String::from_utf8_lossy(&output.stderr));
    Ok(Verified { said, seconds: started.elapsed().as_secs_f64() })
}

/// Polls the node's /metrics until every SQL projection is at the log's head.
async fn projections_at_head(address: SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let metrics = client.get(format!("http://{address}/metrics")).send().await?.error_for_status()?.text().await?;
        let lags: Vec<i64> = metrics
            .lines()
            .filter_map(|line| line.strip_prefix("bahi_projection_lag_events{"))
            .filter_map(|rest| rest.rsplit_once(' ')?.1.parse().ok())
            .collect();
        if lags.len() == bahi_projections::PROJECTIONS.len() && lags.iter().all(|lag| *lag == 0) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the projections did not catch up within {CATCH_UP_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The attribution of the org's whole history counts every call: the read models hold them.
async fn check_total(address: SocketAddr, cookie: &HeaderValue, calls: usize) -> anyhow::Result<()> {
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{address}/v1/audit/attribution"))
        .header(COOKIE, cookie.clone())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let total = answer.pointer("/totals/calls").and_then(Value::as_u64);
    anyhow::ensure!(total == Some(calls as u64), "the attribution counts {total:?} calls, not {calls}");
    Ok(())
}

/// What an answer must hold to count, so that a fast error page cannot pass.
enum Expect {
    /// A page holding each of these texts.
    Texts(Vec<String>),
    /// JSON with this number at this pointer.
    Number(&'static str, i64),
    /// JSON with this many entries in the array at this pointer.
    Length(&'static str, usize),
    /// A JSON statement of this many entries (read from its closing totals, without
    /// parsing a million rows every round).
    Entries(i64),
}

/// One GET, with the session cookie, and what its 200 answer must hold.
struct Probe {
    path: String,
    expect: Expect,
}

impl Probe {
    fn check(&self, status: StatusCode, body: &[u8]) -> anyhow::Result<()> {
        let excerpt = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        anyhow::ensure!(status == StatusCode::OK, "GET {}: {status} {}", self.path, excerpt());
        let held = match &self.expect {
            Expect::Texts(texts) => {
                let page = String::from_utf8_lossy(body);
                texts.iter().all(|text| page.contains(text.as_str()))
            }
            Expect::Number(pointer, value) => {
                let answer: Value = serde_json::from_slice(body)?;
                answer.pointer(pointer).and_then(Value::as_i64) == Some(*value)
            }
            Expect::Length(pointer, length) => {
                let answer: Value = serde_json::from_slice(body)?;
                answer.pointer(pointer).and_then(Value::as_array).map(Vec::len) == Some(*length)
            }
            Expect::Entries(entries) => statement_entries_in(body) == Some(*entries),
        };
        anyhow::ensure!(held, "GET {}: the answer lacks what it must show: {}", self.path, excerpt());
        Ok(())
    }
}

/// JSON requests that answer the same figures as a page, timed back to back.
struct Baseline {
    label: &'static str,
    probes: Vec<Probe>,
}

/// A page beside its baselines (the first is the one its ratio is to).
struct Comparison {
    page: Probe,
    baselines: Vec<Baseline>,
    /// Whether the goal covers this page.
    in_goal: bool,
}

/// The pages and their baselines, over the default period `from`..=`to`.
async fn comparisons(
    address: SocketAddr,
    cookie: &HeaderValue,
    calls: usize,
    call_id: &CallId,
    (from, to): (NaiveDate, NaiveDate),
) -> anyhow::Result<Vec<Comparison>> {
    let calls = i64::try_from(calls)?;
    let attribution = |group: &str| Probe {
        path: format!("/v1/audit/attribution?from={from}&to={to}&group_by={group}"),
        expect: Expect::Number("/totals/calls", calls),
    };
    let events = || Probe {
        path: format!("/v1/audit/events?limit={EVENTS_PAGE}"),
        expect: Expect::Length("/data", EVENTS_PAGE),
    };
    let call =
        || Probe { path: format!("/v1/audit/calls/{call_id}"), expect: Expect::Texts(vec![call_id.to_string()]) };
    let page = |path: String, texts: Vec<String>| Probe { path, expect: Expect::Texts(texts) };
    let baseline = |label, probes| vec![Baseline { label, probes }];
    let total_row = format!("Total</th><td class=\"amount\">{calls}</td>");
    let statement = format!("/v1/statements?from={from}&to={to}&format=json");
    let entries = statement_entries(address, cookie, &statement).await?;
    anyhow::ensure!(entries >= calls, "the statement has {entries} entries for {calls} calls");
    Ok(vec![
        Comparison {
            page: page("/console/usage".into(), vec![format!("<div class=\"figure\">{calls}</div>")]),
            baselines: vec![
                Baseline {
                    label: "attribution by day, agent, model, api_key (4 requests)",
                    probes: ["day", "agent", "model", "api_key"].into_iter().map(attribution).collect(),
                },
                Baseline { label: "attribution by day alone (1 request)", probes: vec![attribution("day")] },
            ],
            in_goal: true,
        },
        Comparison {
            page: page("/console/audit".into(), vec![total_row.clone()]),
            baselines: baseline(
                "attribution by agent + events page (2 requests)",
                vec![attribution("agent"), events()],
            ),
            in_goal: true,
        },
        Comparison {
            page: page(format!("/console/audit?call_id={call_id}"), vec![total_row, call_id.to_string()]),
            baselines: baseline(
                "call + attribution by agent + events page (3 requests)",
                vec![call(), attribution("agent"), events()],
            ),
            in_goal: true,
        },
        Comparison {
            page: page("/console/statements".into(), vec![format!("Entries ({entries})")]),
            baselines: baseline(
                "statement JSON of the period (1 request)",
                vec![Probe { path: statement, expect: Expect::Entries(entries) }],
            ),
            in_goal: false,
        },
    ])
}

/// The entries of the period's statement, which its page must show.
async fn statement_entries(address: SocketAddr, cookie: &HeaderValue, path: &str) -> anyhow::Result<i64> {
    let body = reqwest::Client::new()
        .get(format!("http://{address}{path}"))
        .header(COOKIE, cookie.clone())
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    statement_entries_in(&body).context("a statement without its entries (cut short?)")
}

/// The `entries` of a JSON statement's totals, which close it (after its rows).
fn statement_entries_in(body: &[u8]) -> Option<i64> {
    let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(1024)..]);
    let (_, after) = tail.rsplit_once("\"entries\":")?;
    after.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// One comparison's figures: sorted microseconds per round, of the page and of each
/// baseline.
struct Timed {
    page_path: String,
    page: Vec<u64>,
    baselines: Vec<(&'static str, Vec<u64>)>,
    in_goal: bool,
}

/// Times every comparison on one keep-alive connection: the page, then its baselines.
async fn time_all(
    address: SocketAddr,
    cookie: &HeaderValue,
    comparisons: Vec<Comparison>,
    samples: usize,
) -> anyhow::Result<Vec<Timed>> {
    let mut connection = LoadConnection::open(address).await?;
    let mut timed = Vec::with_capacity(comparisons.len());
    for comparison in comparisons {
        // A page outside the goal (the statement, which reads its whole period) is timed
        // a few times only: at a million calls each round takes seconds.
        let samples = if comparison.in_goal { samples } else { samples.min(3) };
        let page = time_rounds(&mut connection, cookie, std::slice::from_ref(&comparison.page), samples).await?;
        let mut baselines = Vec::with_capacity(comparison.baselines.len());
        for baseline in comparison.baselines {
            baselines.push((baseline.label, time_rounds(&mut connection, cookie, &baseline.probes, samples).await?));
        }
        timed.push(Timed { page_path: comparison.page.path, page, baselines, in_goal: comparison.in_goal });
    }
    Ok(timed)
}

/// `probes` sent back to back, one at a time, `samples` rounds after WARM_UPS; every answer
/// is checked once its round's clock has stopped. Sorted microseconds per round.
async fn time_rounds(
    connection: &mut LoadConnection,
    cookie: &HeaderValue,
    probes: &[Probe],
    samples: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut rounds = Vec::with_capacity(samples);
    for round in 0..WARM_UPS + samples {
        let requests = probes.iter().map(|probe| get(&probe.path, cookie)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut answers = Vec::with_capacity(probes.len());
        let started = Instant::now();
        for request in requests {
            answers.push(connection.exchange_built(request).await.context("the connection to the node failed")?);
        }
        let micros = started.elapsed().as_micros() as u64;
        for (probe, (status, body)) in probes.iter().zip(&answers) {
            probe.check(*status, body)?;
        }
        if round >= WARM_UPS {
            rounds.push(micros);
        }
    }
    rounds.sort_unstable();
    Ok(rounds)
}

fn get(path: &str, cookie: &HeaderValue) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    Ok(hyper::Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", "bench")
        .header(COOKIE, cookie.clone())
        .body(Full::new(Bytes::new()))?)
}

/// The org's events in the read model (what its Audit page pages through).
async fn org_event_count(store: &Store, org_id: &OrgId) -> anyhow::Result<i64> {
    Ok(match store {
        Store::Sqlite(sqlite) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM read_org_events WHERE org_id = ?1")
                .bind(org_id.as_str())
                .fetch_one(sqlite.pool())
                .await?
        }
        Store::Postgres(postgres) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM read_org_events WHERE org_id = $1")
                .bind(org_id.as_str())
                .fetch_one(postgres.pool())
                .await?
        }
    })
}

fn print_report(
    org_id: &OrgId,
    (filled, verified): (&Filled, &Verified),
    measured: &Measured,
    inspected: &Inspected,
    options: &ConsoleOptions,
) {
    println!(
        "engine: {}; org {org_id}: {} calls, {} events of the org, {} in the log; database {:.1} MB",
        inspected.engine,
        options.calls,
        inspected.org_events,
        filled.head,
        inspected.size_bytes as f64 / 1e6
    );
    println!(
        "fill: {} events appended by this process in {:.1} s ({:.0} events/s), dated {} to {}; `bahi verify`: {} ({:.1} s)",
        filled.events,
        filled.seconds,
        filled.events as f64 / filled.seconds,
        filled.first_call_at.format("%Y-%m-%d %H:%M"),
        filled.last_call_at.format("%Y-%m-%d %H:%M"),
        verified.said,
        verified.seconds
    );
    println!(
        "restart: listening after {:.1} s (log loaded into memory); SQL projections at the head {:.1} s later",
        measured.listening_seconds, measured.catch_up_seconds
    );
    println!(
        "{} samples a row after {WARM_UPS} warm-ups, one request at a time on one keep-alive connection, the same \
         session cookie on pages and JSON; period {} to {}; load average {} before, {} after",
        options.samples,
        measured.from,
        measured.to,
        measured.load_before,
        load_average()
    );
    println!();
    print_tables(&measured.rows);
    print_goal(&measured.rows);
}

fn print_tables(rows: &[Timed]) {
    println!("| page | p50 ms | p90 ms | max ms | JSON baseline (same figures) | baseline p50 ms | page/JSON |");
    println!("|---|---:|---:|---:|---|---:|---:|");
    for row in rows {
        let page = percentile(&row.page, 0.5);
        for (label, baseline) in &row.baselines {
            let baseline = percentile(baseline, 0.5);
            println!(
                "| GET {} | {:.1} | {:.1} | {:.1} | {label} | {:.1} | {:.2} |",
                row.page_path,
                millis(page),
                millis(percentile(&row.page, 0.9)),
                millis(row.page.last().copied().unwrap_or(0)),
                millis(baseline),
                page as f64 / baseline.max(1) as f64
            );
        }
    }
    println!();
    println!("| JSON baseline | p50 ms | p90 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (label, baseline) in rows.iter().flat_map(|row| &row.baselines) {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            millis(percentile(baseline, 0.5)),
            millis(percentile(baseline, 0.9)),
            millis(baseline.last().copied().unwrap_or(0))
        );
    }
    println!();
}

fn print_goal(rows: &[Timed]) {
    let mut met = true;
    let mut figures = Vec::new();
    for row in rows.iter().filter(|row| row.in_goal) {
        let p50 = millis(percentile(&row.page, 0.5));
        met &= p50 < GOAL_MILLIS;
        figures.push(format!("{} {p50:.1} ms", row.page_path));
    }
    println!(
        "goal, each Usage and Audit page p50 under {GOAL_MILLIS:.0} ms: {} ({})",
        if met { "met" } else { "not met" },
        figures.join(", ")
    );
}
