//! The console's data pages (usage, audit, statements) through the real server: calls are
//! made and billed through the JSON API first (authorize + usage with the operator key),
//! then each page must show what the JSON API answers, refuse roles without the scope, keep
//! another org's calls unseen (404), and answer hostile query strings with a 400 page.
#![allow(clippy::unwrap_used)]

mod common;

use common::console::{ConsoleUser, Page};
use common::{TestDatabase, TestServer, client, register};
use reqwest::Client;
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-console-data-0123456789";
const PASSWORD: &str = "correct horse battery staple";

/// A server with one console org (its owner signed in), credit, two priced models, an
/// agent, an API key, and billed calls by both; and another org with a call of its own.
struct World {
    server: TestServer,
    client: Client,
    owner: ConsoleUser,
    key: String,
    agent_call: String,
    key_call: String,
    other_call: String,
}

fn cookie(user: &ConsoleUser) -> String {
    format!("bahi_session={}", user.cookies["bahi_session"])
}

async fn send(client: &Client, server: &TestServer, path: &str, credential: &str, body: Value) -> Value {
    let response = client.post(server.url(path)).bearer_auth(credential).json(&body).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Authorizes a call with `credential` and bills its tokens (as a gateway reports them).
async fn billed_call(
    client: &Client,
    server: &TestServer,
    credential: &str,
    model: &str,
    tokens: (u64, u64),
) -> String {
    let authorized = send(client, server, "/v1/authorize", credential, json!({"model": model, "max_cost": "1"})).await;
    let call_id = authorized["call_id"].as_str().unwrap().to_owned();
    let usage = json!({"call_id": call_id, "model": model, "input_tokens": tokens.0, "output_tokens": tokens.1, "status": "succeeded"});
    send(client, server, "/v1/usage", OPERATOR_KEY, usage).await;
    call_id
}

async fn world(database: &TestDatabase) -> World {
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let client = client();
    let owner = ConsoleUser::sign_up(&server, "owner@data.example").await;
    let session = cookie(&owner);
    let account: Value = client
        .get(server.url("/v1/auth/account"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_id = account["org_id"].as_str().unwrap().to_owned();
    for (model, input, output) in [("krutrim-2", "50", "150"), ("big-model", "3.75", "15")] {
        let price = json!({"input_per_million": input, "output_per_million": output});
        let response = client
            .put(server.url(&format!("/v1/admin/prices/{model}")))
            .bearer_auth(OPERATOR_KEY)
            .json(&price)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let grant = json!({"org_id": org_id, "amount": "100", "reason": "console data test"});
    send(&client, &server, "/v1/admin/credits/grants", OPERATOR_KEY, grant).await;
    let created: Value = client
        .post(server.url("/v1/auth/account/api-keys"))
        .header("cookie", &session)
        .json(&json!({"name": "gateway key"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let agent = send(&client, &server, "/me/agents", &key, json!({"name": "nightly-reconciler"})).await;
    let agent_id = agent["id"].as_str().unwrap();
    let token = send(&client, &server, &format!("/me/agents/{agent_id}/token"), &key, json!({})).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let agent_call = billed_call(&client, &server, &token, "krutrim-2", (1234, 567)).await;
    let key_call = billed_call(&client, &server, &key, "big-model", (10_000, 2_000)).await;

    let (other_org, other_key) = register(&client, &server, "Other Org").await;
    send(
        &client,
        &server,
        "/v1/admin/credits/grants",
        OPERATOR_KEY,
        json!({"org_id": other_org, "amount": "5", "reason": "t"}),
    )
    .await;
    let other_call = billed_call(&client, &server, &other_key, "krutrim-2", (1, 1)).await;
    World { server, client, owner, key, agent_call, key_call, other_call }
}

async fn api_json(world: &World, path: &str) -> Value {
    let response = world.client.get(world.server.url(path)).bearer_auth(&world.key).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// A member of the world's org with `role`, signed in to the console.
async fn member(world: &mut World, email: &str, role: &str) -> ConsoleUser {
    let response = world
        .client
        .post(world.server.url("/v1/auth/account/members"))
        .header("cookie", cookie(&world.owner))
        .json(&json!({"email": email, "role": role, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut user = ConsoleUser::new(&world.server);
    let token = user.get("/console/login").await.csrf_token();
    let login =
        user.post_raw("/console/login", &[("csrf_token", &token), ("email", email), ("password", PASSWORD)]).await;
    assert_eq!(login.status, 303, "{}", login.body);
    user
}

/// A page every console page must be: no inline script or style, and not a server error.
fn assert_clean(page: &Page, what: &str) {
    assert!(page.status < 500, "{what}: {} {}", page.status, page.body);
    assert!(!page.body.contains("<script>") && !page.body.contains(" style="), "{what}: inline code");
}

async fn assert_bad_request(user: &mut ConsoleUser, paths: &[&str]) {
    for path in paths {
        let page = user.get(path).await;
        assert_clean(&page, path);
        assert_eq!(page.status, 400, "{path}: {}", page.body);
        assert!(page.body.contains("<h1"), "{path}: a page, not a bare error");
    }
}

fn amount(money: &Value) -> String {
    money["amount"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn usage_shows_spend_per_day_as_a_chart_and_a_table_and_breakdowns() {
    let database = TestDatabase::sqlite();
    let mut world = world(&database).await;
    let today = today();
    let attribution = api_json(&world, &format!("/v1/audit/attribution?from={today}&to={today}&group_by=day")).await;
    let total = amount(&attribution["totals"]["cost"]);

    let page = world.owner.get("/console/usage").await;
    assert_clean(&page, "usage");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("role=\"img\"") && page.body.contains("<title id=\"chart-title\">"), "{}", page.body);
    assert!(page.body.contains(&format!("<data value=\"{total}\">")), "the total is attribution's: {total}");
    assert!(page.body.contains(&format!("<td>{today}</td>")), "today's row in the table");
    assert_eq!(page.body.matches("<rect class=\"bar\"").count(), 30, "thirty days by default");
    for name in ["nightly-reconciler", "krutrim-2", "big-model", "By API key"] {
        assert!(page.body.contains(name), "{name} in a breakdown");
    }
    assert!(page.body.contains("aria-current=\"page\">Usage"), "the navigation marks the page");

    let models = world.owner.get(&format!("/console/usage?from={today}&to={today}&group_by=model")).await;
    assert_eq!(models.status, 200, "{}", models.body);
    assert!(models.body.contains("id=\"by-model\"") && !models.body.contains("id=\"by-agent\""));
    assert!(models.body.contains("Page 1 of 1"));

    let empty = world.owner.get("/console/usage?from=2020-01-01&to=2020-01-31").await;
    assert_eq!(empty.status, 200);
    assert!(empty.body.contains("No calls were billed"), "the empty state says what to do");

    assert_bad_request(
        &mut world.owner,
        &[
            "/console/usage?from=yesterday",
            "/console/usage?from=2026-02-30",
            "/console/usage?to=9999-99-99",
            "/console/usage?from=2026-03-02&to=2026-03-01",
            "/console/usage?from=0001-01-01&to=9999-12-31",
            "/console/usage?group_by=colour",
            "/console/usage?group_by=model&page=0",
            "/console/usage?group_by=model&page=99",
            "/console/usage?page=2",
            "/console/usage?group_by=model&page=-1",
            "/console/usage?group_by=model&page=abc",
            "/console/usage?from=%ZZ",
            "/console/usage?from=%3Cscript%3E",
        ],
    )
    .await;
    let hostile = world.owner.get("/console/usage?from=%3Cscript%3Ealert(1)%3C/script%3E").await;
    assert!(!hostile.body.contains("<script>alert"), "input is escaped");
}

#[tokio::test]
async fn audit_answers_who_made_a_call_for_whom_and_who_paid_with_its_events() {
    let database = TestDatabase::sqlite();
    let mut world = world(&database).await;
    let expected = api_json(&world, &format!("/v1/audit/calls/{}", world.agent_call)).await;

    let page = world.owner.get(&format!("/console/audit?call_id={}", world.agent_call)).await;
    assert_clean(&page, "audit");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("nightly-reconciler"));
    assert!(page.body.contains(expected["act_for"].as_str().unwrap()));
    assert!(page.body.contains(expected["payer_org_id"].as_str().unwrap()));
    assert!(page.body.contains("agent_token") && page.body.contains(expected["credential"]["id"].as_str().unwrap()));
    assert!(page.body.contains("0.14675"), "the exact cost");
    for event in expected["events"].as_array().unwrap() {
        assert!(page.body.contains(event["hash"].as_str().unwrap()), "every event's hash");
        assert!(page.body.contains(&format!("<td>{}</td>", event["position"])), "every event's position");
    }
    assert!(page.body.contains("<label for=\"audit-call\">"), "the form is labelled");

    let by_key = world.owner.get(&format!("/console/audit?call_id={}", world.key_call)).await;
    assert!(by_key.body.contains("no agent: api_key"), "{}", by_key.body);

    // Another org's call is not there at all; a malformed id is the caller's mistake.
    let other = world.owner.get(&format!("/console/audit?call_id={}", world.other_call)).await;
    assert_clean(&other, "other org's call");
    assert_eq!(other.status, 404);
    assert!(!other.body.contains("Paid by") && other.body.contains("role=\"alert\""));
    let malformed = world.owner.get("/console/audit?call_id=..%2F..%2Fetc%2Fpasswd").await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);

    // Attribution by model, and the event log a page at a time.
    let models = world.owner.get("/console/audit?group_by=model").await;
    assert!(models.body.contains("krutrim-2") && models.body.contains("big-model"));
    let log = api_json(&world, "/v1/audit/events?limit=50").await;
    let first_hash = log["data"][0]["hash"].as_str().unwrap();
    assert!(models.body.contains(first_hash), "the log's first event");
    let events = log["data"].as_array().unwrap().len();
    if log["has_more"].as_bool().unwrap() {
        let next = log["next_after"].as_i64().unwrap();
        assert!(models.body.contains(&format!("after={next}")), "a next-page link");
    } else {
        assert!(events < 50 && !models.body.contains("rel=\"next\">Next page"));
    }
    let late = world.owner.get("/console/audit?after=1000000").await;
    assert_eq!(late.status, 200);
    assert!(late.body.contains("No more events"), "past the end says so");

    assert_bad_request(
        &mut world.owner,
        &[
            "/console/audit?after=-1",
            "/console/audit?after=abc",
            "/console/audit?after=99999999999999999999999",
            "/console/audit?group_by=colour",
            "/console/audit?from=2026-13-01",
            "/console/audit?from=2026-03-02&to=2026-03-01",
            "/console/audit?page=0",
            "/console/audit?call_id=%FF%FE",
        ],
    )
    .await;
}

#[tokio::test]
async fn statements_reconcile_and_downloads_are_the_api_s_bytes() {
    let database = TestDatabase::sqlite();
    let mut world = world(&database).await;
    let today = today();
    let statement = api_json(&world, &format!("/v1/statements?from={today}&to={today}&format=json")).await;
    let closing = amount(&statement["closing_balance"]);

    let page = world.owner.get(&format!("/console/statements?from={today}&to={today}")).await;
    assert_clean(&page, "statements");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&format!("<data value=\"{closing}\">")), "closing {closing}: {}", page.body);
    assert!(page.body.contains(&format!("={closing}")), "the exact closing balance");
    assert!(page.body.contains(&world.agent_call), "a usage row names its call");
    assert!(page.body.contains("Opening balance") && page.body.contains("Closing balance"));
    let default = world.owner.get("/console/statements").await;
    assert_eq!(default.status, 200);
    assert!(default.body.contains(&format!("<data value=\"{closing}\">")), "the last 30 days include today");

    for format in ["csv", "json"] {
        let path = format!("/v1/statements?from={today}&to={today}&format={format}");
        let api = world.client.get(world.server.url(&path)).bearer_auth(&world.key).send().await.unwrap();
        let api_bytes = api.bytes().await.unwrap();
        let link = format!("/console/statements/download?from={today}");
        assert!(page.body.contains(&link) && page.body.contains(&format!("format={format}\"")), "{format} link");
        let response = world
            .owner
            .client
            .get(world.server.url(&format!("/console/statements/download?from={today}&to={today}&format={format}")))
            .header("cookie", cookie(&world.owner))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
        assert!(disposition.starts_with("attachment; filename=\"statement-"), "{disposition}");
        assert_eq!(response.bytes().await.unwrap(), api_bytes, "{format}: the same bytes as the API");
    }

    let empty = world.owner.get("/console/statements?from=2020-01-01&to=2020-01-02").await;
    assert_eq!(empty.status, 200);
    assert!(empty.body.contains("No entries from 2020-01-01"), "the empty state");

    assert_bad_request(
        &mut world.owner,
        &[
            "/console/statements?from=2026-02-30",
            "/console/statements?from=2026-03-02&to=2026-03-01",
            "/console/statements?page=0",
            "/console/statements?page=x",
            "/console/statements/download?from=2026-01-01&to=2026-01-02&format=xml",
            "/console/statements/download?from=2026-01-01",
            "/console/statements/download?from=bad&to=2026-01-02&format=csv",
            "/console/statements/download?from=2026-01-03&to=2026-01-02&format=csv",
        ],
    )
    .await;
}

#[tokio::test]
async fn each_data_page_refuses_a_role_without_its_scope() {
    let database = TestDatabase::sqlite();
    let mut world = world(&database).await;
    let mut plain = member(&mut world, "member@data.example", "member").await;
    let mut finance = member(&mut world, "finance@data.example", "finance").await;
    let mut auditor = member(&mut world, "auditor@data.example", "auditor").await;
    let today = today();
    let download = format!("/console/statements/download?from={today}&to={today}&format=csv");
    let call = format!("/console/audit?call_id={}", world.agent_call);
    let pages = ["/console/usage", "/console/audit", call.as_str(), "/console/statements", download.as_str()];
    // (who, the status of each page in `pages`)
    let expectations: [(&mut ConsoleUser, &str, [u16; 5]); 3] = [
        (&mut plain, "member", [403, 403, 403, 403, 403]),
        (&mut finance, "finance", [200, 403, 403, 200, 200]),
        (&mut auditor, "auditor", [200, 200, 200, 200, 200]),
    ];
    for (user, role, statuses) in expectations {
        for (path, status) in pages.iter().zip(statuses) {
            let page = user.get(path).await;
            assert_clean(&page, path);
            assert_eq!(page.status, status, "{role} {path}: {}", page.body);
        }
        let home = user.get("/console").await;
        assert_eq!(home.body.contains("href=\"/console/usage\""), statuses[0] == 200, "{role}: usage in the nav");
        assert_eq!(home.body.contains("href=\"/console/audit\""), statuses[1] == 200, "{role}: audit in the nav");
        assert_eq!(home.body.contains("href=\"/console/statements\""), statuses[3] == 200, "{role}: statements");
    }
    // Without a session every data page is the login page.
    let mut stranger = ConsoleUser::new(&world.server);
    for path in pages {
        assert_eq!(stranger.get(path).await.status, 303, "{path}");
    }
}
