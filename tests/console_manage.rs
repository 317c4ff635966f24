//! The console's manage pages (agents, API keys, credits, members, issuers), driven through
//! the real server as a browser posts its forms: what each page shows, what each form does,
//! and what it refuses: a form without its CSRF token, a role the use case refuses, another
//! org's ids (404, never a hint), and hostile input (a 4xx page that says why, never a 5xx).
#![allow(clippy::unwrap_used)]

mod common;

use common::console::{ConsoleUser, Page, field_value};
use common::{TestDatabase, TestServer};

const PASSWORD: &str = "correct horse battery staple";

/// Logs in through the console's login form.
async fn log_in(server: &TestServer, email: &str) -> ConsoleUser {
    let mut user = ConsoleUser::new(server);
    let token = user.get("/console/login").await.csrf_token();
    let answer =
        user.post_raw("/console/login", &[("csrf_token", &token), ("email", email), ("password", PASSWORD)]).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    user
}

/// The owner adds a member with this role on the members page; the member logs in.
async fn member(server: &TestServer, owner: &mut ConsoleUser, email: &str, role: &str) -> ConsoleUser {
    let added = owner.post("/console/members", &[("email", email), ("role", role), ("password", PASSWORD)]).await;
    assert_eq!(added.status, 303, "{}", added.body);
    log_in(server, email).await
}

/// The `agt_…` id in a redirect to an agent's page.
fn agent_id(page: &Page) -> String {
    let location = page.location.as_deref().expect("a redirect");
    location.strip_prefix("/console/agents/").expect("to the agent's page").to_owned()
}

/// A 4xx page that says why, with the frame's alert.
fn refused(page: &Page, status: u16) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(page.body.contains("role=\"alert\"") || page.body.contains(&status.to_string()), "{}", page.body);
}

/// Every `id="…"` control on the page has a `<label for="…">`, and nothing is inline.
fn accessible(page: &Page) {
    for control in ["<input id=\"", "<select id=\"", "<textarea id=\""] {
        for piece in page.body.split(control).skip(1) {
            let id = &piece[..piece.find('"').unwrap()];
            assert!(page.body.contains(&format!("for=\"{id}\"")), "control {id} has no label");
        }
    }
    assert!(!page.body.contains("<script>") && !page.body.contains(" style="), "no inline script or style");
}

#[tokio::test]
async fn agents_are_created_listed_shown_given_a_token_once_and_revoked() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "agents@example.com").await;

    let empty = owner.get("/console/agents").await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert!(empty.body.contains("class=\"empty\"") && empty.body.contains("Create an agent"), "{}", empty.body);
    assert!(empty.body.contains("value=\"inference\" checked"), "inference is ticked by default");
    accessible(&empty);

    let created = owner
        .post(
            "/console/agents",
            &[
                ("name", "Support bot"),
                ("mode", "autonomous"),
                ("scopes", "inference"),
                ("scopes", "account:read"),
                ("budget_amount", "2500.50"),
                ("budget_period", "month"),
                ("rate_requests", "30"),
                ("rate_interval", "60"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let id = agent_id(&created);
    assert!(id.starts_with("agt_"), "{id}");

    let list = owner.get("/console/agents").await;
    assert!(list.body.contains("Support bot") && list.body.contains("badge active"), "{}", list.body);
    assert!(list.body.contains(&format!("href=\"/console/agents/{id}\"")), "{}", list.body);
    assert!(list.body.contains("₹0.00"), "per-agent spend: {}", list.body);

    let detail = owner.get(&format!("/console/agents/{id}")).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    assert!(detail.body.contains("inference account:read"), "{}", detail.body);
    assert!(detail.body.contains("₹0.00 spent of ₹2,500.50 a month"), "{}", detail.body);
    assert!(detail.body.contains("30 per 60 s"), "{}", detail.body);
    accessible(&detail);

    let minted = owner.post(&format!("/console/agents/{id}/tokens"), &[("ttl_seconds", "300")]).await;
    assert_eq!(minted.status, 200, "{}", minted.body);
    assert!(minted.body.contains("notice secret") && minted.body.contains("data-copy=\"secret\""), "{}", minted.body);
    let token = minted.body.split("id=\"secret\" type=\"text\" readonly value=\"").nth(1).unwrap();
    let token = &token[..token.find('"').unwrap()];
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let again = owner.get(&format!("/console/agents/{id}")).await;
    assert!(!again.body.contains(token), "the token is shown once");
    assert!(!again.body.contains("id=\"secret\""));

    let too_long = owner.post(&format!("/console/agents/{id}/tokens"), &[("ttl_seconds", "99999999")]).await;
    refused(&too_long, 400);
    assert!(too_long.body.contains("ttl_seconds must be between"), "the use case's message: {}", too_long.body);
    refused(&owner.post(&format!("/console/agents/{id}/tokens"), &[("ttl_seconds", "five")]).await, 400);

    let revoked = owner.post(&format!("/console/agents/{id}/revoke"), &[]).await;
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    let detail = owner.get(&format!("/console/agents/{id}")).await;
    assert!(detail.body.contains("badge revoked") && !detail.body.contains("Mint token"), "{}", detail.body);
}

#[tokio::test]
async fn agent_forms_refuse_bad_input_other_orgs_forged_posts_and_roles_without_agents_write() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "agents-owner@example.com").await;
    let mut other = ConsoleUser::sign_up(&server, "agents-other@example.com").await;
    let theirs = agent_id(&other.post("/console/agents", &[("name", "Theirs")]).await);

    // Another org's agent: 404 to look at, to mint for and to revoke, as if it did not exist.
    for page in [
        owner.get(&format!("/console/agents/{theirs}")).await,
        owner.post(&format!("/console/agents/{theirs}/tokens"), &[]).await,
        owner.post(&format!("/console/agents/{theirs}/revoke"), &[]).await,
    ] {
        refused(&page, 404);
    }
    assert!(other.get(&format!("/console/agents/{theirs}")).await.body.contains("badge active"), "still active");
    // A malformed id is a 400, not a 5xx.
    refused(&owner.get("/console/agents/not-an-id").await, 400);
    refused(&owner.post("/console/agents/agt_%3Cscript%3E/revoke", &[]).await, 400);

    // Hostile or wrong input: a 4xx page naming the problem, the form kept.
    let no_name = owner.post("/console/agents", &[("name", "  ")]).await;
    refused(&no_name, 400);
    assert!(no_name.body.contains("name the agent"), "{}", no_name.body);
    let bad_mode = owner.post("/console/agents", &[("name", "x"), ("mode", "rogue")]).await;
    refused(&bad_mode, 400);
    // A delegated agent acts for the person creating it unless told otherwise.
    let delegated =
        agent_id(&owner.post("/console/agents", &[("name", "Mine, delegated"), ("mode", "delegated")]).await);
    let shown = owner.get(&format!("/console/agents/{delegated}")).await;
    assert!(shown.body.contains("<td>delegated</td>") && shown.body.contains("<code>usr_"), "{}", shown.body);
    let hybrid = agent_id(&owner.post("/console/agents", &[("name", "Either"), ("mode", "hybrid")]).await);
    assert!(owner.get(&format!("/console/agents/{hybrid}")).await.body.contains("<td>hybrid</td>"));
    let bad_budget = owner.post("/console/agents", &[("name", "Kept name"), ("budget_amount", "1e9")]).await;
    refused(&bad_budget, 400);
    assert!(bad_budget.body.contains("value=\"Kept name\""), "the form is shown again as sent");
    refused(&owner.post("/console/agents", &[("name", "x"), ("rate_requests", "-1")]).await, 400);
    let bad_scope = owner.post("/console/agents", &[("name", "x"), ("scopes", "operator:everything")]).await;
    assert!((400..500).contains(&bad_scope.status), "{}", bad_scope.status);
    let script = owner.post("/console/agents", &[("name", "<script>alert(1)</script>"), ("budget_amount", "x")]).await;
    refused(&script, 400);
    assert!(!script.body.contains("<script>alert(1)"), "escaped");
    let huge = owner.post("/console/agents", &[("name", &"n".repeat(20_000))]).await;
    assert!((400..500).contains(&huge.status), "{}: {}", huge.status, huge.body);
    let bad_page = owner.get("/console/agents?page=-2").await;
    refused(&bad_page, 400);

    // CSRF: without the token, nothing is created.
    let forged = owner.post_raw("/console/agents", &[("name", "Forged")]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(!owner.get("/console/agents").await.body.contains("Forged"));

    // An auditor may see the agents but not create, mint or revoke.
    let mine = agent_id(&owner.post("/console/agents", &[("name", "Mine")]).await);
    let mut auditor = member(&server, &mut owner, "agents-auditor@example.com", "auditor").await;
    let seen = auditor.get("/console/agents").await;
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("Mine") && !seen.body.contains("action=\"/console/agents\""), "no create form");
    assert!(!auditor.get(&format!("/console/agents/{mine}")).await.body.contains("Mint token"));
    refused(&auditor.post("/console/agents", &[("name", "Sneaky")]).await, 403);
    refused(&auditor.post(&format!("/console/agents/{mine}/tokens"), &[]).await, 403);
    refused(&auditor.post(&format!("/console/agents/{mine}/revoke"), &[]).await, 403);
    assert!(owner.get(&format!("/console/agents/{mine}")).await.body.contains("badge active"));
}

#[tokio::test]
async fn keys_are_created_with_the_secret_shown_once_listed_paged_revoked_and_deleted() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "keys@example.com").await;

    let empty = owner.get("/console/keys").await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert!(empty.body.contains("class=\"empty\""), "{}", empty.body);
    accessible(&empty);

    let created = owner
        .post(
            "/console/keys",
            &[
                ("name", "Gateway"),
                ("expires", "2099-01-31"),
                ("scopes", "inference"),
                ("rate_requests", "100"),
                ("rate_interval", "60"),
                ("budget_amount", "999.99"),
                ("budget_period", "day"),
                ("metadata", "{\"team\": \"search\"}"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(created.body.contains("notice secret") && created.body.contains("data-copy=\"secret\""));
    let secret = created.body.split("id=\"secret\" type=\"text\" readonly value=\"").nth(1).unwrap();
    let secret = secret[..secret.find('"').unwrap()].to_owned();
    assert!(secret.len() > 20, "{secret}");

    // The secret works as a bearer key on the JSON API, and is never on a page again.
    let me = reqwest::Client::new().get(server.url("/v1/auth/account")).bearer_auth(&secret).send().await.unwrap();
    assert_ne!(me.status().as_u16(), 401, "the new key authenticates");
    let list = owner.get("/console/keys").await;
    assert!(!list.body.contains(&secret), "the secret is shown once");
    assert!(list.body.contains("Gateway") && list.body.contains("badge active"), "{}", list.body);
    assert!(list.body.contains("100 per 60 s") && list.body.contains("of ₹999.99 a day"), "{}", list.body);
    assert!(list.body.contains("2099-01-31 23:59:59"), "the expiry: {}", list.body);
    let key_id = list.body.split("<code>key_").nth(1).map(|rest| format!("key_{}", &rest[..rest.find('<').unwrap()]));
    let key_id = key_id.unwrap();

    let revoked = owner.post(&format!("/console/keys/{key_id}/revoke"), &[]).await;
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert!(owner.get("/console/keys").await.body.contains("badge revoked"));
    let deleted = owner.post(&format!("/console/keys/{key_id}/delete"), &[]).await;
    assert_eq!(deleted.status, 303);
    assert!(!owner.get("/console/keys").await.body.contains(&key_id), "deleted keys leave the list");
    refused(&owner.post(&format!("/console/keys/{key_id}/revoke"), &[]).await, 404);

    // Paged through the app's ListKeys: 26 keys are a page of 25 and a next page.
    for number in 0..26 {
        let answer = owner.post("/console/keys", &[("name", &format!("bulk-{number:02}"))]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let first = owner.get("/console/keys").await;
    assert!(first.body.contains("bulk-25") && !first.body.contains("bulk-00"), "newest first");
    let next = first.body.split("href=\"/console/keys?after=").nth(1).expect("a next page");
    let next = &next[..next.find('"').unwrap()];
    let second = owner.get(&format!("/console/keys?after={next}")).await;
    assert_eq!(second.status, 200);
    assert!(second.body.contains("bulk-00") && !second.body.contains("bulk-25"), "{}", second.body);
}

#[tokio::test]
async fn key_forms_refuse_bad_input_other_orgs_forged_posts_and_auditors() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "keys-owner@example.com").await;
    let mut other = ConsoleUser::sign_up(&server, "keys-other@example.com").await;
    let theirs = other.post("/console/keys", &[("name", "Theirs")]).await;
    let their_list = other.get("/console/keys").await;
    assert!(theirs.status == 200);
    let their_id =
        their_list.body.split("<code>key_").nth(1).map(|rest| format!("key_{}", &rest[..rest.find('<').unwrap()]));
    let their_id = their_id.unwrap();
    refused(&owner.post(&format!("/console/keys/{their_id}/revoke"), &[]).await, 404);
    refused(&owner.post(&format!("/console/keys/{their_id}/delete"), &[]).await, 404);
    assert!(other.get("/console/keys").await.body.contains("badge active"), "untouched");
    refused(&owner.post("/console/keys/key_!!/revoke", &[]).await, 400);
    refused(&owner.get("/console/keys?after=key_nosuchkey").await, 404);

    let bad_json = owner.post("/console/keys", &[("name", "Kept"), ("metadata", "{not json")]).await;
    refused(&bad_json, 400);
    assert!(bad_json.body.contains("metadata must be JSON") && bad_json.body.contains("value=\"Kept\""));
    refused(&owner.post("/console/keys", &[("expires", "31/01/2099")]).await, 400);
    refused(&owner.post("/console/keys", &[("budget_amount", "12.3456789")]).await, 400);
    refused(&owner.post("/console/keys", &[("budget_amount", "5"), ("budget_period", "forever")]).await, 400);
    refused(&owner.post("/console/keys", &[("rate_requests", "99999999999")]).await, 400);
    let past = owner.post("/console/keys", &[("expires", "2001-01-01")]).await;
    assert!(past.status < 500, "{}", past.status);
    let big = owner.post("/console/keys", &[("metadata", &format!("\"{}\"", "m".repeat(60_000)))]).await;
    assert!((400..500).contains(&big.status), "{}: {}", big.status, big.body);
    let too_big = owner.post("/console/keys", &[("metadata", &"m".repeat(70_000))]).await;
    refused(&too_big, 400);

    let forged = owner.post_raw("/console/keys", &[("name", "Forged")]).await;
    assert_eq!(forged.status, 403);
    assert!(!owner.get("/console/keys").await.body.contains("Forged"));

    // An auditor neither sees nor uses key management.
    let mut auditor = member(&server, &mut owner, "keys-auditor@example.com", "auditor").await;
    assert!(!auditor.get("/console").await.body.contains("href=\"/console/keys\""), "not offered");
    refused(&auditor.get("/console/keys").await, 403);
    refused(&auditor.post("/console/keys", &[("name", "Sneaky")]).await, 403);
    assert_eq!(owner.post("/console/keys", &[("name", "Mine")]).await.status, 200);
    let mine = owner.get("/console/keys").await;
    let my_id = mine.body.split("<code>key_").nth(1).map(|rest| format!("key_{}", &rest[..rest.find('<').unwrap()]));
    refused(&auditor.post(&format!("/console/keys/{}/revoke", my_id.unwrap()), &[]).await, 403);
    assert!(!owner.get("/console/keys").await.body.contains("Sneaky"));
}

#[tokio::test]
async fn credits_are_topped_up_exactly_once_per_form_by_the_owner_and_finance_only() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "credits@example.com").await;

    let page = owner.get("/console/credits").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("₹0.00") && page.body.contains("action=\"/console/credits/top-up\""));
    accessible(&page);
    let form_key = field_value(&page.body, "form_key").unwrap();
    assert_ne!(form_key, field_value(&owner.get("/console/credits").await.body, "form_key").unwrap(), "one per form");

    let topped = owner.post("/console/credits/top-up", &[("amount", "123456.78"), ("form_key", &form_key)]).await;
    assert_eq!(topped.status, 303, "{}", topped.body);
    let after = owner.get(topped.location.as_deref().unwrap()).await;
    assert!(after.body.contains("₹1,23,456.78 added"), "{}", after.body);
    assert!(after.body.contains("<div class=\"figure\">₹1,23,456.78</div>"), "{}", after.body);

    // The same form sent again (a double click): credited once.
    let again = owner.post("/console/credits/top-up", &[("amount", "123456.78"), ("form_key", &form_key)]).await;
    assert_eq!(again.status, 303, "{}", again.body);
    let after = owner.get("/console/credits").await;
    assert!(after.body.contains("<div class=\"figure\">₹1,23,456.78</div>"), "not doubled: {}", after.body);
    // The same form with another amount is a conflict, not a second credit.
    let changed = owner.post("/console/credits/top-up", &[("amount", "5"), ("form_key", &form_key)]).await;
    refused(&changed, 409);
    // A payment reference of one's own is the key instead.
    let fresh = field_value(&owner.get("/console/credits").await.body, "form_key").unwrap();
    let with_reference = [("amount", "0.000001"), ("payment_reference", "UTR-42"), ("form_key", fresh.as_str())];
    assert_eq!(owner.post("/console/credits/top-up", &with_reference).await.status, 303);
    assert!(owner.get("/console/credits").await.body.contains("₹1,23,456.78"), "rounded for the eye");

    // Exact decimals only, as the JSON API reads them.
    let fresh = field_value(&owner.get("/console/credits").await.body, "form_key").unwrap();
    for amount in ["1,500", "12.5e3", "abc", "", "0.0000001", "₹100", "-5", "0", "99999999999999999999"] {
        let answer = owner.post("/console/credits/top-up", &[("amount", amount), ("form_key", &fresh)]).await;
        assert!((400..500).contains(&answer.status), "{amount}: {} {}", answer.status, answer.body);
        assert!(answer.body.contains("role=\"alert\""), "{amount}: {}", answer.body);
    }
    refused(&owner.post("/console/credits/top-up", &[("amount", "10")]).await, 400);
    refused(&owner.post("/console/credits/top-up", &[("amount", "10"), ("form_key", "short")]).await, 400);
    let forged = owner.post_raw("/console/credits/top-up", &[("amount", "10"), ("form_key", &fresh)]).await;
    assert_eq!(forged.status, 403);

    // Finance tops up; an auditor sees the balance, no form, and a forged post is refused
    // with the use case's message.
    let mut finance = member(&server, &mut owner, "credits-finance@example.com", "finance").await;
    let key = field_value(&finance.get("/console/credits").await.body, "form_key").unwrap();
    assert_eq!(finance.post("/console/credits/top-up", &[("amount", "100"), ("form_key", &key)]).await.status, 303);
    let mut auditor = member(&server, &mut owner, "credits-auditor@example.com", "auditor").await;
    let seen = auditor.get("/console/credits").await;
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("₹1,23,556.78") && !seen.body.contains("/console/credits/top-up"), "{}", seen.body);
    let refused_post =
        auditor.post("/console/credits/top-up", &[("amount", "1000"), ("form_key", "AAAAAAAAAAAAAAAAAAAAAA")]).await;
    refused(&refused_post, 403);
    assert!(refused_post.body.contains("the auditor role may not do this"), "{}", refused_post.body);
    assert!(owner.get("/console/credits").await.body.contains("₹1,23,556.78"));
}

#[tokio::test]
async fn members_are_listed_for_managers_and_added_by_the_owner() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "members@example.com").await;
    let page = owner.get("/console/members").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("members@example.com") && page.body.contains(">owner<"), "{}", page.body);
    accessible(&page);

    let mut admin = member(&server, &mut owner, "members-admin@example.com", "admin").await;
    let list = owner.get("/console/members").await;
    assert!(list.body.contains("members-admin@example.com") && list.body.contains(">admin<"), "{}", list.body);

    // Bad input: the page again with why, the password never echoed.
    let bad_role = owner
        .post("/console/members", &[("email", "x@example.com"), ("role", "superuser"), ("password", PASSWORD)])
        .await;
    refused(&bad_role, 400);
    assert!(bad_role.body.contains("value=\"x@example.com\"") && !bad_role.body.contains(PASSWORD));
    refused(
        &owner.post("/console/members", &[("email", "x@example.com"), ("role", "member"), ("password", "short")]).await,
        400,
    );
    refused(
        &owner.post("/console/members", &[("email", "not an email"), ("role", "member"), ("password", PASSWORD)]).await,
        400,
    );
    let taken = owner
        .post("/console/members", &[("email", "members-admin@example.com"), ("role", "member"), ("password", PASSWORD)])
        .await;
    assert!((400..500).contains(&taken.status), "{}", taken.status);
    let owner_again =
        owner.post("/console/members", &[("email", "o2@example.com"), ("role", "owner"), ("password", PASSWORD)]).await;
    assert!(owner_again.status < 500, "{}", owner_again.status);
    let forged = owner
        .post_raw("/console/members", &[("email", "forged@example.com"), ("role", "admin"), ("password", PASSWORD)])
        .await;
    assert_eq!(forged.status, 403);
    assert!(!owner.get("/console/members").await.body.contains("forged@example.com"));

    // An admin sees the list but may not add; others do not see it.
    let seen = admin.get("/console/members").await;
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("members@example.com") && !seen.body.contains("action=\"/console/members\""));
    let by_admin = admin
        .post("/console/members", &[("email", "by-admin@example.com"), ("role", "owner"), ("password", PASSWORD)])
        .await;
    refused(&by_admin, 403);
    let mut auditor = member(&server, &mut owner, "members-auditor@example.com", "auditor").await;
    refused(&auditor.get("/console/members").await, 403);
    refused(
        &auditor
            .post("/console/members", &[("email", "a@example.com"), ("role", "admin"), ("password", PASSWORD)])
            .await,
        403,
    );
    assert!(!owner.get("/console/members").await.body.contains("by-admin@example.com"));
}

#[tokio::test]
async fn issuers_are_for_owners_and_admins_and_refuse_what_cannot_be_verified() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let mut owner = ConsoleUser::sign_up(&server, "issuers@example.com").await;
    let page = owner.get("/console/issuers").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("class=\"empty\"") && page.body.contains("action=\"/console/issuers\""));
    accessible(&page);

    let bad_json = owner
        .post("/console/issuers", &[("issuer", "https://idp.example"), ("jwks", "{oops"), ("owner", "acme")])
        .await;
    refused(&bad_json, 400);
    assert!(bad_json.body.contains("value=\"https://idp.example\""), "the form is kept");
    refused(&owner.post("/console/issuers", &[("issuer", ""), ("owner", "acme")]).await, 400);
    refused(
        &owner.post("/console/issuers", &[("issuer", "https://idp.example"), ("jwks", "{\"keys\": []}")]).await,
        400,
    );
    let no_keys = owner.post("/console/issuers", &[("issuer", "https://idp.example"), ("owner", "acme")]).await;
    refused(&no_keys, 400);
    assert!(no_keys.body.contains("exactly one of jwks"), "the use case's message: {}", no_keys.body);
    let no_proof = owner
        .post(
            "/console/issuers",
            &[("issuer", "https://idp.example"), ("jwks", "{\"keys\": []}"), ("owner", "acme"), ("proof", "")],
        )
        .await;
    assert!((400..500).contains(&no_proof.status), "{}: {}", no_proof.status, no_proof.body);
    let bad_uri = owner
        .post(
            "/console/issuers",
            &[("issuer", "https://idp.example"), ("jwks_uri", "file:///etc/passwd"), ("owner", "acme")],
        )
        .await;
    refused(&bad_uri, 400);
    let proof = "eyJhbGciOiJub25lIn0.eyJvcmciOiJhY21lIn0.";
    let bad_proof = owner
        .post(
            "/console/issuers",
            &[("issuer", "https://idp.example"), ("jwks", "{\"keys\": []}"), ("owner", "acme"), ("proof", proof)],
        )
        .await;
    assert!((400..500).contains(&bad_proof.status), "{}", bad_proof.status);
    assert!(!bad_proof.body.contains(proof), "a proof token is never written back");

    refused(&owner.post("/console/issuers/iss_nosuchissuer/revoke", &[]).await, 404);
    refused(&owner.post("/console/issuers/nope/revoke", &[]).await, 400);
    let forged = owner.post_raw("/console/issuers/iss_nosuchissuer/revoke", &[]).await;
    assert_eq!(forged.status, 403);

    let mut admin = member(&server, &mut owner, "issuers-admin@example.com", "admin").await;
    assert_eq!(admin.get("/console/issuers").await.status, 200);
    let mut auditor = member(&server, &mut owner, "issuers-auditor@example.com", "auditor").await;
    refused(&auditor.get("/console/issuers").await, 403);
    refused(&auditor.post("/console/issuers", &[("issuer", "https://idp.example"), ("owner", "acme")]).await, 403);
    refused(&auditor.post("/console/issuers/iss_nosuchissuer/revoke", &[]).await, 403);
}
