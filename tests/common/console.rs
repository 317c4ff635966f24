//! A console user for page tests: a browser's cookies kept by hand (no redirects followed,
//! so each test sees the 303s), and forms posted with the page's CSRF token.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::TestServer;

pub struct ConsoleUser {
    pub client: reqwest::Client,
    pub base_url: String,
    pub cookies: BTreeMap<String, String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The value of the first `name="csrf_token"` hidden field on the page.
    pub fn csrf_token(&self) -> String {
        field_value(&self.body, "csrf_token").expect("the page has a csrf_token field")
    }
}

/// The `value` of the first input named `name` in `html`.
pub fn field_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

impl ConsoleUser {
    pub fn new(server: &TestServer) -> ConsoleUser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        ConsoleUser { client, base_url: server.base_url.clone(), cookies: BTreeMap::new() }
    }

    /// Signs up a new org through the console's own form; the user is its owner.
    pub async fn sign_up(server: &TestServer, email: &str) -> ConsoleUser {
        let mut user = ConsoleUser::new(server);
        let page = user.get("/console/signup").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let token = page.csrf_token();
        let answer = user
            .post_raw(
                "/console/signup",
                &[
                    ("csrf_token", token.as_str()),
                    ("email", email),
                    ("password", "correct horse battery staple"),
                    ("org_name", "Console Org"),
                ],
            )
            .await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert!(user.cookies.contains_key("bahi_session"), "signup sets the session cookie");
        user
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join("; ")
    }

    fn keep_cookies(&mut self, headers: &reqwest::header::HeaderMap) {
        for value in headers.get_all(reqwest::header::SET_COOKIE) {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn page(&mut self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.keep_cookies(&headers);
        let location = headers.get(reqwest::header::LOCATION).map(|value| value.to_str().unwrap().to_owned());
        Page { status, location, headers, body: response.text().await.unwrap() }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.page(response).await
    }

    /// Posts exactly these fields (no token added).
    pub async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = serde_html_form::to_string(fields).unwrap();
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header(reqwest::header::COOKIE, self.cookie_header())
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.page(response).await
    }

    /// Posts a form with this session's CSRF token (read from the overview page).
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let token = self.get("/console").await.csrf_token();
        let mut all = vec![("csrf_token", token.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }
}
