//! Test support: real databases (a temp SQLite file; a fresh PostgreSQL database created and
//! dropped per test) and the real `bahi` binary started on port 0.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::RngCore;

pub mod console;

pub const BINARY: &str = env!("CARGO_BIN_EXE_bahi");

/// 16 random bytes, for ids the tests make themselves.
pub fn random16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The status and the `error.type` of an error answer; its body must be JSON.
pub async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], bahi::transport::error_class(status), "the type is the status's class: {body}");
    (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

/// The PostgreSQL server tests may use, from `BAHI_TEST_POSTGRES_URL`. In CI it must be set
/// (the test script sets it); a newcomer's run without PostgreSQL is told so by the script.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("BAHI_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run the PostgreSQL half: set BAHI_TEST_POSTGRES_URL (scripts/test.sh does)"
            );
            eprintln!("BAHI_TEST_POSTGRES_URL is not set: the PostgreSQL half of this test did not run");
            None
        }
    }
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A database that exists for one test and is removed after it.
pub enum TestDatabase {
    Sqlite { _directory: tempfile::TempDir, path: PathBuf },
    Postgres { admin_url: String, name: String, url: String },
}

impl TestDatabase {
    pub fn sqlite() -> TestDatabase {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("bahi.db");
        TestDatabase::Sqlite { _directory: directory, path }
    }

    pub async fn postgres() -> Option<TestDatabase> {
        let admin_url = postgres_admin_url()?;
        let name = format!("bahi_test_{}", random_suffix());
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .expect("BAHI_TEST_POSTGRES_URL is set but PostgreSQL is not reachable");
        sqlx::Executor::execute(&mut connection, sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
        let url = replace_database(&admin_url, &name);
        Some(TestDatabase::Postgres { admin_url, name, url })
    }

    /// Both engines where PostgreSQL is available, else SQLite alone.
    pub async fn all() -> Vec<TestDatabase> {
        let mut databases = vec![TestDatabase::sqlite()];
        databases.extend(TestDatabase::postgres().await);
        databases
    }

    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            TestDatabase::Postgres { url, .. } => url.clone(),
        }
    }

    pub fn engine(&self) -> &'static str {
        match self {
            TestDatabase::Sqlite { .. } => "sqlite",
            TestDatabase::Postgres { .. } => "postgres",
        }
    }

    /// Runs one SQL statement directly against the database, behind bahi's back.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            TestDatabase::Sqlite { .. } => {
                let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&self.url()).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut connection)
                    .await
                    .map(|r| r.rows_affected())
            }
            TestDatabase::Postgres { url, .. } => {
                let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut connection)
                    .await
                    .map(|r| r.rows_affected())
            }
        }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { admin_url, name, .. } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs outside any async context; a short-lived runtime on its own thread
            // removes the database.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    if let Ok(mut connection) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await {
                        let _ = sqlx::Executor::execute(
                            &mut connection,
                            sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
                        )
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A running `bahi serve`, killed when dropped.
pub struct TestServer {
    pub child: Child,
    pub base_url: String,
    pub database_url: String,
}

impl TestServer {
    pub fn start(database_url: &str) -> TestServer {
        TestServer::start_with(database_url, &[])
    }

    pub fn start_with(database_url: &str, environment: &[(&str, &str)]) -> TestServer {
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--database", database_url])
            .env("RUST_LOG", "warn")
            // Tests register many orgs from one address; a test of the limit sets its own.
            .env("BAHI_ANONYMOUS_RATE_LIMIT", "1000000/1")
            .env_remove("BAHI_ENVIRONMENT")
            .env_remove("BAHI_OPERATOR_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !database_url.starts_with("sqlite") {
            // On SQLite the key file lives beside the database in the test's temporary
            // directory; for PostgreSQL give the key directly so that no test writes a key
            // file into the source tree. A test may still set its own.
            command.env("BAHI_KEY_ENCRYPTION_KEY", "7e".repeat(32));
        }
        for (name, value) in environment {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(address) = line.strip_prefix("bahi listening on ") {
                    let _ = sender.send(address.to_owned());
                }
            }
        });
        let base_url = receiver.recv_timeout(Duration::from_secs(60)).expect("server did not start within 60 s");
        TestServer { child, base_url, database_url: database_url.to_owned() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Runs the `bahi` binary with arguments and returns (exit code, stdout, stderr).
pub fn run_cli(arguments: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY).args(arguments).env("RUST_LOG", "warn").output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Registers an org through the API and returns (org_id, api_key).
pub async fn register(client: &reqwest::Client, server: &TestServer, org_name: &str) -> (String, String) {
    let response = client
        .post(server.url("/v1/auth/agent-register"))
        .json(&serde_json::json!({"org_name": org_name}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    (body["org_id"].as_str().unwrap().to_owned(), body["api_key"].as_str().unwrap().to_owned())
}

/// The operator credential of servers started with `with_test_clock`.
pub const TEST_CLOCK_OPERATOR_KEY: &str = "operator-key-for-the-test-clock-0123456789";

/// The environment of a server whose clock a test moves forward (`--test-clock`), with its
/// operator credential; a test that sets another operator key passes it to `advance_clock`.
pub fn with_test_clock() -> [(&'static str, &'static str); 2] {
    [("BAHI_TEST_CLOCK", "true"), ("BAHI_OPERATOR_KEY", TEST_CLOCK_OPERATOR_KEY)]
}

/// Moves a `--test-clock` server's time forward by `seconds`, instead of waiting for it.
pub async fn advance_clock(client: &reqwest::Client, server: &TestServer, operator_key: &str, seconds: i64) {
    let response = client
        .post(server.url("/v1/admin/test-clock/advance"))
        .bearer_auth(operator_key)
        .json(&serde_json::json!({ "seconds": seconds }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "advancing the test clock: {}", response.text().await.unwrap());
}

/// Whether `condition` holds within ten seconds, looked at every 20 ms: for what another
/// task or node does in its own time (a background expirer, a projection, a second node
/// catching up). Time-driven behaviour moves the test clock instead (`advance_clock`).
pub async fn eventually<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if condition().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
