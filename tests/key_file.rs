//! Start-up warns when the key-encryption key file sits beside the SQLite database.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::BINARY;

/// Starts `bahi serve`, waits until it listens, stops it, and returns the warning lines
/// it logged.
fn warnings_at_start(database_url: &str, environment: &[(&str, &str)]) -> Vec<String> {
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database_url, "--log-format", "json"])
        .env("RUST_LOG", "warn")
        .env_remove("BAHI_KEY_ENCRYPTION_KEY")
        .env_remove("BAHI_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in environment {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("bahi listening on ") {
                let _ = sender.send(());
            }
        }
    });
    receiver.recv_timeout(Duration::from_secs(60)).expect("the server did not start within 60 s");
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap().into_iter().filter(|line| line.contains("\"WARN\"")).collect()
}

#[test]
fn a_key_file_beside_the_database_is_warned_about_at_start() {
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("bahi.db");
    let database_url = format!("sqlite://{}", database.display());
    let warnings = warnings_at_start(&database_url, &[]);
    let warning = warnings.iter().find(|line| line.contains("key-encryption key")).expect("a warning");
    assert!(warning.contains(&format!("{}.kek", database.display())), "{warning}");
    assert!(warning.contains("BAHI_KEY_FILE"), "{warning}");

    // Moved elsewhere, or given in the environment: no warning.
    let elsewhere = tempfile::tempdir().unwrap();
    let key_file = elsewhere.path().join("bahi.kek");
    let other_database = format!("sqlite://{}", directory.path().join("other.db").display());
    let warnings = warnings_at_start(&other_database, &[("BAHI_KEY_FILE", key_file.to_str().unwrap())]);
    assert!(!warnings.iter().any(|line| line.contains("key-encryption key")), "{warnings:?}");
    let third_database = format!("sqlite://{}", directory.path().join("third.db").display());
    let warnings = warnings_at_start(&third_database, &[("BAHI_KEY_ENCRYPTION_KEY", &"7e".repeat(32))]);
    assert!(!warnings.iter().any(|line| line.contains("key-encryption key")), "{warnings:?}");
}

/// A start that fails because the port is busy leaves nothing behind: no key file, no
/// database, and logs without colour codes when stderr is not a terminal.
#[test]
fn a_start_on_a_busy_port_creates_nothing_and_says_why_plainly() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let directory = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", directory.path().join("bahi.db").display());
    let output = Command::new(BINARY)
        .args(["serve", "--listen", &address, "--database", &database_url])
        .env("RUST_LOG", "info")
        .env_remove("BAHI_KEY_ENCRYPTION_KEY")
        .env_remove("BAHI_KEY_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("binding {address}")), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a failed start left {left:?}");

    // A start that works logs its pretty lines without colour codes into a pipe.
    drop(busy);
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &database_url])
        .env("RUST_LOG", "info")
        .env_remove("BAHI_KEY_ENCRYPTION_KEY")
        .env_remove("BAHI_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let listening =
        BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.starts_with("bahi listening on "));
    assert!(listening);
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in a redirected log: {stderr:?}");
}
