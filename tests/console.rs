//! The console's frame: login, sign up, logout, CSRF, the security headers, and the
//! overview, driven through the real server as a browser would post its forms.
#![allow(clippy::unwrap_used)]

mod common;

use common::console::{ConsoleUser, field_value};
use common::{TestDatabase, TestServer};

#[tokio::test]
async fn a_page_without_a_session_sends_the_browser_to_log_in() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut browser = ConsoleUser::new(&server);
    let answer = browser.get("/console").await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.location.as_deref(), Some("/console/login"));
    let root = browser.get("/").await;
    assert_eq!(root.location.as_deref(), Some("/console"));
    // A forged or stale cookie is the same as none.
    browser.cookies.insert("bahi_session".into(), "sess_forged".into());
    assert_eq!(browser.get("/console").await.location.as_deref(), Some("/console/login"));
}

#[tokio::test]
async fn every_page_carries_a_strict_content_security_policy() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut browser = ConsoleUser::new(&server);
    let page = browser.get("/console/login").await;
    assert_eq!(page.status, 200);
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(!page.body.contains("<script>") && !page.body.contains(" style="), "no inline script or style");
    let htmx = browser.get("/console/assets/htmx-2.0.11.min.js").await;
    assert_eq!(htmx.status, 200);
    assert!(htmx.headers["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(browser.get("/console/assets/nope.js").await.status, 404);
}

#[tokio::test]
async fn sign_up_log_out_and_log_in_again() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "owner@example.com").await;
    let home = owner.get("/console").await;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains("Console Org") && home.body.contains("₹0.00"), "{}", home.body);
    assert!(home.body.contains("href=\"/console/keys\""), "an owner is offered the API keys page");

    let out = owner.post("/console/logout", &[]).await;
    assert_eq!(out.status, 303);
    assert!(!owner.cookies.contains_key("bahi_session"));
    assert_eq!(owner.get("/console").await.status, 303);

    let login = owner.get("/console/login?next=/console/keys").await;
    assert_eq!(field_value(&login.body, "next").as_deref(), Some("/console/keys"));
    let token = login.csrf_token();
    let wrong = owner
        .post_raw(
            "/console/login",
            &[("csrf_token", &token), ("email", "owner@example.com"), ("password", "wrong password!!")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("role=\"alert\""), "{}", wrong.body);
    let token = wrong.csrf_token();
    let right = owner
        .post_raw(
            "/console/login",
            &[
                ("csrf_token", &token),
                ("email", "owner@example.com"),
                ("password", "correct horse battery staple"),
                ("next", "/console/keys"),
            ],
        )
        .await;
    assert_eq!(right.status, 303, "{}", right.body);
    assert_eq!(right.location.as_deref(), Some("/console/keys"));
    assert!(owner.cookies.contains_key("bahi_session"));
}

#[tokio::test]
async fn forms_without_the_token_or_from_another_site_are_refused() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "csrf@example.com").await;
    // No token: the session stays.
    let missing = owner.post_raw("/console/logout", &[]).await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    let forged = owner.post_raw("/console/logout", &[("csrf_token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(owner.get("/console").await.status, 200, "a refused form ends nothing");

    // The right token, sent by a page of another site.
    let token = owner.get("/console").await.csrf_token();
    let response = owner
        .client
        .post(format!("{}/console/logout", owner.base_url))
        .header("cookie", format!("bahi_session={}", owner.cookies["bahi_session"]))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(owner.get("/console").await.status, 200);

    // Login CSRF: a login form posted without the browser's own double-submit cookie.
    let mut stranger = ConsoleUser::new(&server);
    let answer = stranger
        .post_raw(
            "/console/login",
            &[("csrf_token", "x"), ("email", "csrf@example.com"), ("password", "correct horse battery staple")],
        )
        .await;
    assert_eq!(answer.status, 403);
    assert!(!stranger.cookies.contains_key("bahi_session"));

    // Not a form at all.
    let json = owner
        .client
        .post(format!("{}/console/logout", owner.base_url))
        .header("cookie", format!("bahi_session={}", owner.cookies["bahi_session"]))
        .json(&serde_json::json!({"csrf_token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400);
}

#[tokio::test]
async fn log_out_everywhere_ends_every_session_of_the_user() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut first = ConsoleUser::sign_up(&server, "everywhere@example.com").await;
    let mut second = ConsoleUser::new(&server);
    let token = second.get("/console/login").await.csrf_token();
    let login = second
        .post_raw(
            "/console/login",
            &[
                ("csrf_token", &token),
                ("email", "everywhere@example.com"),
                ("password", "correct horse battery staple"),
            ],
        )
        .await;
    assert_eq!(login.status, 303);
    assert_eq!(first.post("/console/logout-all", &[]).await.status, 303);
    assert_eq!(second.get("/console").await.status, 303, "the other browser's session ended too");
}
