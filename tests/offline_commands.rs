//! Offline commands read an existing ledger: a mistyped path is an error that says so, never
//! a new empty database that "verifies".
#![allow(clippy::unwrap_used)]

mod common;

use common::run_cli;

#[test]
fn offline_commands_refuse_a_database_that_does_not_exist_and_create_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let missing = directory.path().join("typo.db");
    let url = format!("sqlite://{}", missing.display());
    let statement = [
        "statement",
        "--database",
        &url,
        "--org",
        "org_0000000000000000000000",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-31",
    ];
    for arguments in [vec!["verify", "--database", &url], vec!["rebuild", "--database", &url], statement.to_vec()] {
        let (code, stdout, stderr) = run_cli(&arguments);
        assert_ne!(code, 0, "{arguments:?}: {stdout}");
        assert!(stderr.contains("no ledger at") && stderr.contains("typo.db"), "{arguments:?}: {stderr}");
        assert!(!stdout.contains("log intact"), "{arguments:?}: {stdout}");
    }
    assert!(!missing.exists() && !missing.with_extension("db.read").exists(), "nothing was created");

    // `migrate` creates the ledger; then `verify` reads it.
    let existing = directory.path().join("bahi.db");
    let url = format!("sqlite://{}", existing.display());
    assert_eq!(run_cli(&["migrate", "--database", &url]).0, 0);
    let (code, stdout, stderr) = run_cli(&["verify", "--database", &url]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("log intact: 0 events verified"), "{stdout}");
}
