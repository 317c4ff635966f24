//! The console in a real browser (issue 27): Debian's chromium, driven through chromedriver
//! with the `fantoccini` WebDriver client, against the real `bahi` binary.
//!
//! One person's session, page by page: sign up, a priced call made through the API, the
//! statement fetched with the browser's own cookie and reconciled to the paisa, a top-up as
//! owner, an auditor added, then logged in by keyboard alone and refused what an auditor may
//! not do. On every page the test saves a screenshot to `target/console-screenshots/`, checks
//! that every form control has a label and every button and link a name, and that the
//! browser saw no Content-Security-Policy violation.
//!
//! scripts/test.sh installs `chromium` and `chromium-driver` in CI; elsewhere, without them,
//! this test says plainly that it did not run, and passes.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use common::{TestDatabase, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const OPERATOR_KEY: &str = "operator-secret-for-the-browser-test-0123456789";
const PASSWORD: &str = "correct horse battery staple";
const MODEL: &str = "krutrim-2";

/// Lists what a person using a screen reader or the keyboard could not use: form controls
/// without a label (`label[for]`, a wrapping label, `aria-label` or `aria-labelledby`;
/// hidden inputs aside) and buttons and links without an accessible name.
const ACCESSIBILITY_SCRIPT: &str = r#"
const text = (value) => (value || "").replace(/\s+/g, " ").trim();
const byIds = (ids) => text(ids).split(" ").map((id) => document.getElementById(id)).filter(Boolean);
const describe = (element) => element.outerHTML.slice(0, 160);
const unlabelled = [];
for (const control of document.querySelectorAll("input, select, textarea")) {
  if (control.type === "hidden") continue;
  const labelled = (control.labels && Array.from(control.labels).some((label) => text(label.textContent)))
    || text(control.getAttribute("aria-label"))
    || byIds(control.getAttribute("aria-labelledby")).some((label) => text(label.textContent));
  if (!labelled) unlabelled.push(describe(control));
}
const nameless = [];
const named = (element) => text(element.getAttribute("aria-label"))
  || byIds(element.getAttribute("aria-labelledby")).some((label) => text(label.textContent))
  || text(element.innerText) || text(element.textContent)
  || (element.tagName === "INPUT" && text(element.value))
  || text(element.getAttribute("title"))
  || Array.from(element.querySelectorAll("img[alt], svg[aria-label]")).some((image) => text(image.getAttribute("alt") || image.getAttribute("aria-label")));
for (const element of document.querySelectorAll("button, a[href], [role=button], input[type=submit], input[type=button], input[type=reset]")) {
  if (!named(element)) nameless.push(describe(element));
}
return { unlabelled, nameless };
"#;

/// Runs before any script of every page (a DevTools call, outside the page's CSP): keeps
/// each `securitypolicyviolation` the page raises, for `Browser::check`.
const CSP_LISTENER: &str = r#"
window.__bahiCspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__bahiCspViolations.push(event.violatedDirective + " blocked " + (event.blockedURI || "inline") + " at " + event.sourceFile + ":" + event.lineNumber);
});
"#;

/// Whether chromium and chromedriver are here; in CI they must be.
fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the browser test: {CHROMIUM} and {CHROMEDRIVER} are missing (scripts/test.sh installs them)"
        );
        eprintln!(
            "console_browser: {CHROMIUM} or {CHROMEDRIVER} is missing: the real-browser console test DID NOT RUN \
             (apt-get install chromium chromium-driver)"
        );
    }
    present
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the screenshots go: `target/console-screenshots/`, emptied first.
fn screenshot_directory() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let directory = target.join("console-screenshots");
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let http = common::client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(answer) = http.get(format!("{}/status", driver.url)).send().await
                && answer.status().is_success()
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer within 20 s");
            // sleep-ok: polls chromedriver or the browser, another process, until the deadline above.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window on the console, with the checks every page gets.
struct Browser {
    client: Client,
    driver_url: String,
    session_id: String,
    base_url: String,
    screenshots: PathBuf,
    shot: usize,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(driver: &Driver, base_url: &str, screenshots: PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let user_data = format!("--user-data-dir={}", profile.path().display());
        let arguments = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            user_data.as_str(),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": arguments },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector).capabilities(capabilities).connect(&driver.url).await.unwrap();
        let session_id = client.session_id().await.unwrap().unwrap();
        let browser = Browser {
            client,
            driver_url: driver.url.clone(),
            session_id,
            base_url: base_url.to_owned(),
            screenshots,
            shot: 0,
            http: common::client(),
            _profile: profile,
        };
        // Before any page's own script: the listener that keeps CSP violations.
        let added = browser
            .http
            .post(format!("{}/session/{}/goog/cdp/execute", browser.driver_url, browser.session_id))
            .json(&json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": CSP_LISTENER}}))
            .send()
            .await
            .unwrap();
        assert!(added.status().is_success(), "the CSP listener: {}", added.text().await.unwrap());
        browser
    }

    async fn goto(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.base_url)).await.unwrap();
        self.wait_loaded().await;
    }

    /// Waits until the browser shows `path` (after a form's redirect) and has loaded it.
    async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.client.current_url().await.unwrap();
            if url.path() == path {
                break;
            }
            if Instant::now() >= deadline {
                panic!("the browser stayed on {url}, not {path}: {}", self.text().await);
            }
            // sleep-ok: polls chromedriver or the browser, another process, until the deadline above.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_loaded().await;
    }

    /// Waits until the browser shows a page under `prefix` and has loaded it; its path.
    async fn wait_for_path_prefix(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.client.current_url().await.unwrap();
            if url.path().starts_with(prefix) {
                self.wait_loaded().await;
                return url.path().to_owned();
            }
            assert!(Instant::now() < deadline, "the browser stayed on {url}, not under {prefix}");
            // sleep-ok: polls chromedriver or the browser, another process, until the deadline above.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page (after a form's answer) shows this element.
    async fn wait_for(&self, selector: &str) -> fantoccini::elements::Element {
        let found = self.client.wait().at_most(Duration::from_secs(15)).for_element(Locator::Css(selector)).await;
        let element = found.unwrap_or_else(|error| panic!("no {selector} on the page within 15 s: {error}"));
        self.wait_loaded().await;
        element
    }

    /// Waits until the page's text contains `text`.
    async fn wait_for_text(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.client.source().await.unwrap().contains(text) {
            assert!(Instant::now() < deadline, "the page never showed {text:?}");
            // sleep-ok: polls chromedriver or the browser, another process, until the deadline above.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_loaded().await;
    }

    /// The secret a page shows once (`<input id="secret" readonly>` beside a copy button).
    async fn secret(&self) -> String {
        let field = self.wait_for("#secret").await;
        assert_eq!(field.attr("readonly").await.unwrap().as_deref(), Some("true"), "the secret is read-only");
        self.client.find(Locator::Css("button[data-copy='secret']")).await.unwrap();
        field.prop("value").await.unwrap().unwrap()
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// The page's heading.
    async fn heading(&self) -> String {
        self.client.find(Locator::Css("h1")).await.unwrap().text().await.unwrap()
    }

    /// A console form posted by the page's own script with the page's CSRF token, as a
    /// hand-made form would be: the status.
    async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> u16 {
        let script = r#"
const [path, fields, done] = arguments;
const body = new URLSearchParams(fields);
body.append("csrf_token", document.querySelector("input[name=csrf_token]").value);
fetch(path, { method: "POST", credentials: "same-origin", redirect: "manual", body })
  .then((answer) => done(answer.status), (error) => done(String(error)));
"#;
        let fields: Vec<Value> = fields.iter().map(|(name, value)| json!([name, value])).collect();
        let answer = self.client.execute_async(script, vec![json!(path), Value::Array(fields)]).await.unwrap();
        answer.as_u64().unwrap_or_else(|| panic!("POST {path}: {answer}")) as u16
    }

    async fn wait_loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.client.execute("return document.readyState", vec![]).await.unwrap() != "complete" {
            assert!(Instant::now() < deadline, "the page did not finish loading");
            // sleep-ok: polls chromedriver or the browser, another process, until the deadline above.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn text(&self) -> String {
        self.client.find(Locator::Css("body")).await.unwrap().text().await.unwrap()
    }

    /// The checks of every page: screenshot, labels and names, no CSP violation.
    async fn check(&mut self, name: &str) {
        self.shot += 1;
        let png = self.client.screenshot().await.unwrap();
        let file = self.screenshots.join(format!("{:02}-{name}.png", self.shot));
        std::fs::write(&file, png).unwrap();

        let found = self.client.execute(ACCESSIBILITY_SCRIPT, vec![]).await.unwrap();
        assert_eq!(found["unlabelled"], json!([]), "{name}: form controls without a label");
        assert_eq!(found["nameless"], json!([]), "{name}: buttons or links without an accessible name");

        let violations =
            self.client.execute("return window.__bahiCspViolations || ['listener missing']", vec![]).await.unwrap();
        assert_eq!(violations, json!([]), "{name}: Content-Security-Policy violations");
        let csp_logged: Vec<String> = self
            .browser_log()
            .await
            .into_iter()
            .filter(|message| {
                message.contains("Content Security Policy") || message.contains("Content-Security-Policy")
            })
            .collect();
        assert!(csp_logged.is_empty(), "{name}: the browser's console logged CSP violations: {csp_logged:?}");
    }

    /// The browser console's messages since the last call (chromedriver's log endpoint).
    async fn browser_log(&self) -> Vec<String> {
        let answer = self
            .http
            .post(format!("{}/session/{}/se/log", self.driver_url, self.session_id))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap();
        let body: Value = answer.json().await.unwrap();
        body["value"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| format!("{} {}", entry["level"], entry["message"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One key pressed and released, sent to whatever has focus, as a person types.
    async fn press(&self, key: char) {
        let actions =
            KeyActions::new("keyboard".into()).then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
        self.client.perform_actions(actions).await.unwrap();
    }

    async fn type_text(&self, text: &str) {
        let mut actions = KeyActions::new("keyboard".into());
        for key in text.chars() {
            actions = actions.then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
        }
        self.client.perform_actions(actions).await.unwrap();
    }

    /// The `id` (or, without one, the tag and text) of the focused element.
    async fn focused(&self) -> String {
        let script = "const e = document.activeElement; return e.id || (e.tagName + ':' + e.textContent.trim());";
        self.client.execute(script, vec![]).await.unwrap().as_str().unwrap().to_owned()
    }

    /// A same-origin request made by the page itself, with the browser's own cookie; the
    /// status and the body's text.
    async fn fetch(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let script = r#"
const [method, path, body, done] = arguments;
const init = { method, credentials: "same-origin", headers: {} };
if (body !== null) { init.body = JSON.stringify(body); init.headers["content-type"] = "application/json"; }
fetch(path, init).then((answer) => answer.text().then((text) => done([answer.status, text])), (error) => done([0, String(error)]));
"#;
        let answer = self
            .client
            .execute_async(script, vec![json!(method), json!(path), body.unwrap_or(Value::Null)])
            .await
            .unwrap();
        (answer[0].as_u64().unwrap() as u16, answer[1].as_str().unwrap().to_owned())
    }

    async fn fetch_json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.fetch(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {status} {text}")))
    }

    async fn click(&self, selector: &str) {
        self.client.find(Locator::Css(selector)).await.unwrap().click().await.unwrap();
    }

    async fn fill(&self, id: &str, value: &str) {
        let field = self.client.find(Locator::Id(id)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn nav_links(&self) -> Vec<String> {
        let mut names = Vec::new();
        for link in self.client.find_all(Locator::Css("nav.sidebar a")).await.unwrap() {
            names.push(link.text().await.unwrap());
        }
        names
    }
}

/// Ends the WebDriver session, and so chromium, even when a check failed: chromium
/// outlives a killed chromedriver. A plain request, since this runs outside async code.
impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let address = self.driver_url.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session_id
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
    }
}

fn money(value: &Value) -> Decimal {
    assert_eq!(value["currency"], "inr", "{value}");
    value["amount"].as_str().unwrap().parse().unwrap()
}

/// The operator's side of one priced call: authorize with the key, report the usage.
async fn priced_call(server: &TestServer, api_key: &str) -> String {
    let http = common::client();
    let authorized: Value = http
        .post(server.url("/v1/authorize"))
        .bearer_auth(api_key)
        .json(&json!({"model": MODEL}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call_id = authorized["call_id"].as_str().unwrap_or_else(|| panic!("authorize: {authorized}")).to_owned();
    let settled = http
        .post(server.url("/v1/usage"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"call_id": call_id, "model": MODEL, "input_tokens": 1234, "output_tokens": 567, "status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(settled.status(), 200, "{}", settled.text().await.unwrap());
    call_id
}

async fn operator(server: &TestServer, method: reqwest::Method, path: &str, body: Value) -> Value {
    let answer =
        common::client().request(method, server.url(path)).bearer_auth(OPERATOR_KEY).json(&body).send().await.unwrap();
    assert!(answer.status().is_success(), "{path}: {}", answer.status());
    answer.json().await.unwrap()
}

#[tokio::test]
async fn a_person_uses_the_console_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let driver = Driver::start().await;
    let screenshots = screenshot_directory();
    println!("console_browser: screenshots in {}", screenshots.display());
    let mut browser = Browser::open(&driver, &server.base_url, screenshots).await;

    // Sign up: the owner of a new org lands on the overview.
    browser.goto("/console/signup").await;
    browser.check("signup").await;
    browser.fill("email", "owner@browser.example").await;
    browser.fill("password", PASSWORD).await;
    browser.fill("org_name", "Browser Traders").await;
    browser.click("form button[type=submit]").await;
    browser.wait_for_path("/console").await;
    let overview = browser.text().await;
    assert!(overview.contains("Browser Traders") && overview.contains("₹0.00"), "{overview}");
    browser.check("overview-owner").await;
    let nav = browser.nav_links().await;
    for page in ["Agents", "API keys", "Credits", "Members"] {
        assert!(nav.iter().any(|name| name == page), "the owner is offered {page}: {nav:?}");
    }

    // The session cookie is HttpOnly: the page's own script cannot read it.
    let visible = browser.client.execute("return document.cookie", vec![]).await.unwrap();
    assert!(!visible.as_str().unwrap().contains("bahi_session"), "{visible}");

    // The operator prices a model and grants the org credit.
    let (status, account) = browser.fetch_json("GET", "/v1/auth/account", None).await;
    assert_eq!(status, 200, "{account}");
    let org_id = account["org_id"].as_str().unwrap().to_owned();
    operator(
        &server,
        reqwest::Method::PUT,
        &format!("/v1/admin/prices/{MODEL}"),
        json!({"input_per_million": "100", "output_per_million": "300", "default_hold": "1"}),
    )
    .await;
    operator(
        &server,
        reqwest::Method::POST,
        "/v1/admin/credits/grants",
        json!({"org_id": org_id, "amount": "100", "reason": "browser test credit"}),
    )
    .await;

    // Agents: create one, mint it a token, shown once.
    browser.goto("/console/agents").await;
    browser.check("agents-empty").await;
    browser.fill("agent-name", "invoice-bot").await;
    browser.click("form[action='/console/agents'] button[type=submit]").await;
    let agent_path = browser.wait_for_path_prefix("/console/agents/").await;
    assert_eq!(browser.heading().await.split_whitespace().next(), Some("invoice-bot"));
    browser.check("agent").await;
    browser.click(&format!("form[action='{agent_path}/tokens'] button[type=submit]")).await;
    browser.wait_for_path(&format!("{agent_path}/tokens")).await;
    let token = browser.secret().await;
    assert!(token.len() > 40, "{token}");
    browser.check("agent-token-minted").await;
    browser.click("button[data-copy='secret']").await;
    browser.goto(&agent_path).await;
    assert!(!browser.source().await.contains(&token), "the token is shown once");
    browser.goto("/console/agents").await;
    assert!(browser.text().await.contains("invoice-bot"));
    browser.check("agents").await;

    // API keys: create one and see its secret once.
    browser.goto("/console/keys").await;
    browser.check("keys-empty").await;
    browser.fill("key-name", "browser-gateway").await;
    browser.click("form[action='/console/keys'] button[type=submit]").await;
    let api_key = browser.secret().await;
    assert!(api_key.starts_with("bahi_"), "{api_key}");
    browser.check("key-created").await;
    browser.goto("/console/keys").await;
    let keys_page = browser.source().await;
    assert!(!keys_page.contains(&api_key), "the secret is shown once");
    assert!(keys_page.contains("browser-gateway"));

    // One priced call through the API with that key.
    let call_id = priced_call(&server, &api_key).await;
    assert!(call_id.starts_with("call_"), "{call_id}");

    // Revoke the key on its page; it stops working.
    browser.goto("/console/keys").await;
    browser.click("form[action$='/revoke'] button").await;
    browser.wait_for(".badge.revoked").await;
    browser.check("keys-revoked").await;
    let refused = common::client()
        .post(server.url("/v1/authorize"))
        .bearer_auth(&api_key)
        .json(&json!({"model": MODEL}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a revoked key authorizes nothing");

    // Top up as owner on the Credits page.
    browser.goto("/console/credits").await;
    browser.check("credits").await;
    browser.fill("topup-amount", "250.50").await;
    browser.fill("topup-reference", "pay_browser_1").await;
    browser.click("form[action='/console/credits/top-up'] button[type=submit]").await;
    browser.wait_for(".notice.ok").await;
    assert!(browser.client.current_url().await.unwrap().query().unwrap_or("").contains("topped_up"));
    browser.check("credits-topped-up").await;
    let (_, account) = browser.fetch_json("GET", "/v1/auth/account", None).await;
    let balance = money(&account["credit_balance"]);
    assert_eq!(balance, Decimal::new(35_050, 2) - cost_of_the_call(), "100 granted + 250.50 topped up − the call");
    let credits_page = browser.text().await;
    assert!(credits_page.contains("₹350.21") || credits_page.contains("₹350.20"), "{credits_page}");

    // The Usage page charts the day's spend (an SVG drawn by the server).
    browser.goto("/console/usage").await;
    browser.wait_for("svg").await;
    browser.check("usage").await;

    // The Audit page finds the call.
    browser.goto("/console/audit").await;
    browser.check("audit").await;
    browser.fill("audit-call", &call_id).await;
    browser.click("form[role=search] button[type=submit]").await;
    browser.wait_for("dl.facts").await;
    let audit = browser.text().await;
    assert!(audit.contains(&call_id) && audit.contains(MODEL), "the call on the Audit page: {audit}");
    browser.check("audit-call").await;

    // Today's statement on its page; its JSON download, fetched with the browser's cookie,
    // reconciles to the paisa.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    browser.goto(&format!("/console/statements?from={today}&to={today}")).await;
    browser.check("statements").await;
    let mut links = Vec::new();
    for link in browser.client.find_all(Locator::Css("a[download]")).await.unwrap() {
        links.push(link.attr("href").await.unwrap().unwrap());
    }
    let json_link = links.iter().find(|link| link.contains("format=json")).unwrap_or_else(|| panic!("{links:?}"));
    let csv_link = links.iter().find(|link| link.contains("format=csv")).unwrap_or_else(|| panic!("{links:?}"));
    let (status, statement) = browser.fetch_json("GET", json_link, None).await;
    assert_eq!(status, 200, "{statement}");
    let (opening, closing) = (money(&statement["opening_balance"]), money(&statement["closing_balance"]));
    let (credits, debits) = (money(&statement["total_credits"]), money(&statement["total_debits"]));
    assert_eq!(opening + credits - debits, closing, "opening + credits − debits = closing: {statement}");
    assert_eq!(closing, balance, "the statement closes on the account's balance");
    assert_eq!((credits, debits), (Decimal::new(35_050, 2), cost_of_the_call()), "{statement}");
    let rows = statement["rows"].as_array().unwrap();
    assert!(rows.iter().any(|row| row["call_id"] == call_id.as_str()), "the call is on the statement: {statement}");
    let (status, csv) = browser.fetch("GET", csv_link, None).await;
    assert_eq!(status, 200);
    assert!(csv.lines().last().unwrap().contains("closing_balance"), "{csv}");

    // Members: the owner adds an auditor.
    browser.goto("/console/members").await;
    browser.check("members").await;
    browser.fill("member-email", "auditor@browser.example").await;
    browser.client.find(Locator::Id("member-role")).await.unwrap().select_by_value("auditor").await.unwrap();
    browser.fill("member-password", "Auditor-Pass-123").await;
    browser.click("form[action='/console/members'] button[type=submit]").await;
    browser.wait_for_text("auditor@browser.example</td>").await;
    browser.check("members-added").await;

    // Log out from the sidebar; the console sends the browser to log in.
    browser.click("form[action='/console/logout'] button").await;
    browser.wait_for_path("/console/login").await;
    browser.goto("/console").await;
    assert_eq!(browser.client.current_url().await.unwrap().path(), "/console/login");
    browser.check("login").await;

    // The auditor logs in by keyboard alone: Tab to each field, Enter to submit.
    browser.press(Key::Tab.into()).await;
    assert_eq!(browser.focused().await, "email", "Tab reaches the email field first");
    browser.type_text("auditor@browser.example").await;
    browser.press(Key::Tab.into()).await;
    assert_eq!(browser.focused().await, "password");
    browser.type_text("Auditor-Pass-123").await;
    browser.press(Key::Tab.into()).await;
    assert_eq!(browser.focused().await, "BUTTON:Log in", "Tab reaches the submit button");
    browser.press(Key::Enter.into()).await;
    browser.wait_for_path("/console").await;
    browser.check("overview-auditor").await;
    let nav = browser.nav_links().await;
    assert!(nav.iter().any(|name| name == "Audit"), "an auditor is offered the Audit page: {nav:?}");
    for page in ["API keys", "Members"] {
        assert!(!nav.iter().any(|name| name == page), "an auditor is not offered {page}: {nav:?}");
    }

    // The auditor sees no top-up form and no keys page; forms made by hand (with the
    // session's CSRF token, from the overview) are refused.
    browser.goto("/console/credits").await;
    assert!(browser.client.find(Locator::Id("topup-amount")).await.is_err(), "no top-up form for an auditor");
    browser.check("credits-auditor").await;
    browser.goto("/console/keys").await;
    assert!(browser.heading().await.starts_with("403"), "{}", browser.heading().await);
    browser.check("keys-auditor-refused").await;
    browser.goto("/console").await;
    let status = browser
        .post_form(
            "/console/credits/top-up",
            &[("amount", "1"), ("payment_reference", "pay_auditor"), ("form_key", "auditorFormKey0123456789")],
        )
        .await;
    assert_eq!(status, 403, "an auditor's top-up is refused");
    assert_eq!(browser.post_form("/console/keys", &[("name", "auditor-key")]).await, 403, "and so is a key");
    let (_, account) = browser.fetch_json("GET", "/v1/auth/account", None).await;
    assert_eq!(money(&account["credit_balance"]), balance, "nothing the auditor tried moved the balance");

    println!("console_browser: {} pages checked in {:.1} s", browser.shot, started.elapsed().as_secs_f64());
}

/// 1,234 input tokens at ₹100 a million and 567 output tokens at ₹300 a million.
fn cost_of_the_call() -> Decimal {
    Decimal::new(1234 * 100 + 567 * 300, 6)
}
