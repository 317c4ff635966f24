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
