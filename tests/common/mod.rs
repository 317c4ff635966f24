//! Test support: real databases (a temp SQLite file; a fresh PostgreSQL database created and
//! dropped per test) and the real `bahi` binary started on port 0.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
        Some(TestDatabase::on(postgres_admin_url()?).await)
    }

    /// A new database on the PostgreSQL server of `admin_url` (an `OwnedPostgres`'s).
    pub async fn on(admin_url: String) -> TestDatabase {
        let name = format!("bahi_test_{}", random_suffix());
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {admin_url} is not reachable: {error}"));
        sqlx::Executor::execute(&mut connection, sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
        let url = replace_database(&admin_url, &name);
        TestDatabase::Postgres { admin_url, name, url }
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

/// A PostgreSQL server of the test's own, on a free port, with its data in a temporary
/// directory: for faults that must not touch the shared server (restarting PostgreSQL
/// itself, changing its configuration). initdb and postgres refuse to run as root, so as
/// root (CI, this machine) they run as the `postgres` OS user, in a directory it owns.
/// Stopped (immediately) when dropped.
pub struct OwnedPostgres {
    directory: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// `runuser -u postgres --` when the test runs as root.
    as_user: Vec<String>,
}

impl OwnedPostgres {
    /// Starts a new server, or says why it cannot: no initdb/pg_ctl found, or root without a
    /// `postgres` user. In CI the caller must treat an `Err` as a failure.
    pub fn start() -> Result<OwnedPostgres, String> {
        let bin = postgres_bindir().ok_or("no initdb and pg_ctl on PATH nor under /usr/lib/postgresql/*/bin")?;
        let root = command_output("id", &["-u"]).map(|uid| uid.trim() == "0").unwrap_or(false);
        let as_user: Vec<String> = if root {
            command_output("id", &["-u", "postgres"]).map_err(|_| "running as root and there is no postgres user")?;
            ["runuser", "-u", "postgres", "--"].map(str::to_owned).to_vec()
        } else {
            Vec::new()
        };
        // As root, under /tmp: a TMPDIR of root's own (under /root) is one the postgres user
        // may not enter.
        let parent = if root && Path::new("/tmp").is_dir() { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let directory =
            tempfile::Builder::new().prefix("bahi-owned-pg").tempdir_in(parent).map_err(|error| error.to_string())?;
        if root {
            let status = Command::new("chown")
                .args(["postgres:", &directory.path().display().to_string()])
                .status()
                .map_err(|error| format!("chown: {error}"))?;
            if !status.success() {
                return Err("could not give the data directory to the postgres user".into());
            }
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
            listener.local_addr().map_err(|error| error.to_string())?.port()
        };
        let server = OwnedPostgres { directory, bin, port, as_user };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        server.start_again()?;
        Ok(server)
    }

    fn data(&self) -> String {
        self.directory.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, arguments: &[&str]) -> Result<(), String> {
        let executable = self.bin.join(program).display().to_string();
        let mut command = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&executable);
                command
            }
            None => Command::new(&executable),
        };
        // initdb and pg_ctl look for each other and postgres beside themselves; a working
        // directory the postgres user may enter keeps them from complaining.
        let output = command
            .args(arguments)
            .current_dir(self.directory.path())
            .output()
            .map_err(|error| format!("{program}: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {arguments:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// The URL of its `postgres` database, for creating test databases (`TestDatabase::on`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m fast`: every backend is terminated, every client's connection closes,
    /// and new connections are refused until `start_again`.
    pub fn stop_fast(&self) -> Result<(), String> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// Starts it (again, after `stop_fast`).
    pub fn start_again(&self) -> Result<(), String> {
        let log = self.directory.path().join("server.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.directory.path().display()
        );
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"])
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for OwnedPostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "-t", "30", "stop"]);
    }
}

fn command_output(program: &str, arguments: &[&str]) -> Result<String, String> {
    let output = Command::new(program).args(arguments).output().map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The directory holding initdb, pg_ctl and postgres: initdb's on PATH (a symlink such as
/// /usr/local/bin/initdb resolved to its real directory), else the newest
/// /usr/lib/postgresql/<version>/bin.
fn postgres_bindir() -> Option<PathBuf> {
    let complete =
        |directory: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|program| directory.join(program).is_file());
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|directory| std::fs::canonicalize(directory.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|directory| complete(directory));
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, directory)| complete(directory))
            .collect();
        versions.sort();
        versions.pop().map(|(_, directory)| directory)
    })
}
