//! Agent identities through a spawned server: minting, independent verification against
//! the published keys, forgeries, expiry, revocation (agent, token, issuer), bring-your-own
//! issuers with and without `act`, key rotation, cross-org isolation, and revocation seen
//! by a second node.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use bahi::agent_token::{JwkSet, SigningKey};
use bahi::store::{EventStore, Store};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestDatabase, TestServer, client, error_code, register};
use p256::ecdsa::signature::Verifier as _;
use reqwest::{Client, Response};
use serde_json::{Value, json};

const OPERATOR_KEY: &str = "operator-secret-for-tests-0123456789abcdef";

async fn post(client: &Client, server: &TestServer, credential: &str, path: &str, body: Value) -> Response {
    client.post(server.url(path)).bearer_auth(credential).json(&body).send().await.unwrap()
}

async fn create_agent(client: &Client, server: &TestServer, key: &str, body: Value) -> Value {
    let response = post(client, server, key, "/me/agents", body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn mint(client: &Client, server: &TestServer, key: &str, agent_id: &str, body: Value) -> Value {
    let response = post(client, server, key, &format!("/me/agents/{agent_id}/token"), body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn account_with(client: &Client, server: &TestServer, token: &str) -> u16 {
    client.get(server.url("/v1/auth/account")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn decode_segment(segment: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

/// Verifies an ES256 JWS with the p256 crate against a JWK set's x/y coordinates: an
/// implementation independent of the one that signed it.
fn verify_independently(token: &str, jwks: &Value) -> Value {
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3);
    let header = decode_segment(segments[0]);
    assert_eq!(header["alg"], "ES256");
    let key = jwks["keys"].as_array().unwrap().iter().find(|key| key["kid"] == header["kid"]).expect("kid published");
    assert_eq!(key["crv"], "P-256");
    assert!(key.get("d").is_none(), "no private part is published");
    let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let y = URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap();
    let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
    let verifying_key = p256::ecdsa::VerifyingKey::from_encoded_point(&point).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(segments[2]).unwrap()).unwrap();
    let signed = format!("{}.{}", segments[0], segments[1]);
    verifying_key.verify(signed.as_bytes(), &signature).expect("signature verifies with an independent ES256");
    decode_segment(segments[1])
}

/// The embedded issuer's current private key, unsealed from the log with the key file,
/// so that tests can forge tokens the server's own key signed.
async fn unsealed_signing_key(database: &TestDatabase) -> SigningKey {
    let TestDatabase::Sqlite { path, .. } = database else { unreachable!("sqlite only") };
    let kek: [u8; 32] = hex::decode(std::fs::read_to_string(format!("{}.kek", path.display())).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap();
    let store = Store::open(&database.url()).await.unwrap();
    let events = store.read_after(0, 1000).await.unwrap();
    let added = events.iter().rev().find(|event| event.event_type == "SigningKeyAdded").unwrap();
    let payload: Value = serde_json::from_slice(&added.payload).unwrap();
    assert!(!String::from_utf8_lossy(&added.payload).contains("\"d\""), "no clear private key in the log");
    let sealed = URL_SAFE_NO_PAD.decode(payload["sealed_private_key"].as_str().unwrap()).unwrap();
    SigningKey::from_sealed(&sealed, &kek, payload["key_id"].as_str().unwrap()).unwrap()
}

fn sign_raw(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_ec_der(key.private_pkcs8_der())).unwrap()
}

/// A current token of `issuer` for `owner` (under the claim `org`): the proof a
/// registration of that owner needs.
fn proof(key: &SigningKey, issuer: &str, audience: Option<&str>, owner: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"iss": issuer, "sub": "registering-admin", "org": owner, "iat": now, "exp": now + 300});
    if let Some(audience) = audience {
        claims["aud"] = json!(audience);
    }
    sign_raw(key, key.kid(), &claims)
}

#[tokio::test]
async fn a_minted_token_verifies_independently_and_carries_the_contract_claims() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    let agent = create_agent(
        &client,
        &server,
        &key,
        json!({"name": "nightly-reconciler", "scopes": ["inference", "account:read"]}),
    )
    .await;
    assert_eq!(agent["status"], "active");
    assert_eq!(agent["mode"], "autonomous");
    assert_eq!(agent["act_for"], org_id.as_str());
    let agent_id = agent["id"].as_str().unwrap();
    assert!(agent_id.starts_with("agt_"));

    let minted = mint(&client, &server, &key, agent_id, json!({})).await;
    assert_eq!(minted["token_type"], "Bearer");
    assert_eq!(minted["expires_in"], 600);
    let token = minted["access_token"].as_str().unwrap();

    let jwks: Value = client.get(server.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let claims = verify_independently(token, &jwks);
    assert_eq!(claims["sub"], agent_id);
    assert_eq!(claims["org"], org_id.as_str());
    assert_eq!(claims["act_for"], org_id.as_str());
    assert_eq!(claims["mode"], "autonomous");
    assert_eq!(claims["scope"], "inference account:read");
    assert_eq!(claims["jti"], minted["jti"]);
    assert_eq!(claims["iss"], server.base_url.as_str(), "the issuer defaults to the bound address");
    assert!(claims["aud"].is_string());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
    assert_eq!(claims["nbf"], claims["iat"]);

    // The token authenticates, with rate-limit headers, and is bound to the agent's scopes.
    let response = client.get(server.url("/v1/auth/account")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-ratelimit-limit"));
    let narrow = mint(&client, &server, &key, agent_id, json!({"scopes": ["inference"], "ttl_seconds": 60})).await;
    assert_eq!(narrow["expires_in"], 60);
    let response = client
        .get(server.url("/v1/auth/account"))
        .bearer_auth(narrow["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "insufficient_scope".to_owned()));

    // Bad minting requests.
    for (body, expected) in [
        (json!({"ttl_seconds": 0}), 400),
        (json!({"ttl_seconds": 3601}), 400),
        (json!({"scopes": ["audit:read"]}), 403),
        (json!({"scopes": ["nonsense"]}), 400),
        (json!({"ttl": 60}), 400),
    ] {
        let response = post(&client, &server, &key, &format!("/me/agents/{agent_id}/token"), body.clone()).await;
        assert_eq!(response.status().as_u16(), expected, "{body}");
    }
    let response = post(&client, &server, &key, "/me/agents/agt_nope-/token", json!({})).await;
    assert_eq!(error_code(response).await, (400, "invalid_id".to_owned()));
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_are_401() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let (org_id, key) = register(&client, &server, "Acme").await;
    let agent = create_agent(&client, &server, &key, json!({"name": "a", "scopes": ["account:read"]})).await;
    let agent_id = agent["id"].as_str().unwrap();
    let minted = mint(&client, &server, &key, agent_id, json!({})).await;
    let token = minted["access_token"].as_str().unwrap();
    assert_eq!(account_with(&client, &server, token).await, 200);
    let segments: Vec<&str> = token.split('.').collect();
    let header = decode_segment(segments[0]);
    let kid = header["kid"].as_str().unwrap();
    let claims = decode_segment(segments[1]);
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());

    let mut forgeries: Vec<(&str, String)> = Vec::new();
    forgeries
        .push(("alg none", format!("{}.{}.", encode(&json!({"alg": "none", "typ": "JWT", "kid": kid})), segments[1])));
    let jwks: Value = client.get(server.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let public_key_bytes = serde_json::to_vec(&jwks["keys"][0]).unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.to_owned());
    forgeries.push((
        "HS256 keyed with the public key",
        jsonwebtoken::encode(&hs_header, &claims, &jsonwebtoken::EncodingKey::from_secret(&public_key_bytes)).unwrap(),
    ));
    let mut widened = claims.clone();
    widened["scope"] = json!("account:read keys:write");
    forgeries.push(("tampered claims", format!("{}.{}.{}", segments[0], encode(&widened), segments[2])));
    let mut signature: Vec<char> = segments[2].chars().collect();
    signature[10] = if signature[10] == 'A' { 'B' } else { 'A' };
    let signature: String = signature.into_iter().collect();
    forgeries.push(("tampered signature", format!("{}.{}.{signature}", segments[0], segments[1])));
    forgeries.push(("bad base64", format!("{}.{}.!!!", segments[0], segments[1])));
    forgeries.push(("not json", format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("nope"), segments[1], segments[2])));
    forgeries.push(("empty segments", "..".to_owned()));
    let stranger = SigningKey::from_random_bytes([7; 32]).unwrap();
    forgeries.push(("signed by a stranger under our kid", sign_raw(&stranger, kid, &claims)));

    // Tokens signed with the server's real key but with bad claims.
    let real = unsealed_signing_key(&database).await;
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 900);
    expired["nbf"] = json!(now - 900);
    expired["exp"] = json!(now - 120);
    forgeries.push(("expired beyond the leeway", sign_raw(&real, kid, &expired)));
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    forgeries.push(("missing exp", sign_raw(&real, kid, &no_exp)));
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = json!("https://somebody-else.example");
    forgeries.push(("wrong aud", sign_raw(&real, kid, &wrong_audience)));
    let mut wrong_issuer = claims.clone();
    wrong_issuer["iss"] = json!("https://evil.example");
    forgeries.push(("wrong iss", sign_raw(&real, kid, &wrong_issuer)));
    let mut unminted = claims.clone();
    unminted["jti"] = json!("tok_NeverMinted0000000000");
    forgeries.push(("jti never minted", sign_raw(&real, kid, &unminted)));
    let mut other_org = claims.clone();
    let (other_org_id, _) = register(&client, &server, "Other").await;
    other_org["org"] = json!(other_org_id);
    other_org["act_for"] = json!(other_org_id);
    forgeries.push(("agent of another org", sign_raw(&real, kid, &other_org)));

    for (what, forged) in forgeries {
        let response = client.get(server.url("/v1/auth/account")).bearer_auth(&forged).send().await.unwrap();
        assert_eq!(error_code(response).await, (401, "unauthorized".to_owned()), "{what}");
    }
    // Within the few seconds of leeway, a token expiring now is still accepted (clock skew
    // between nodes).
    let mut just_expired = claims.clone();
    just_expired["exp"] = json!(now);
    just_expired["iat"] = json!(now - 60);
    just_expired["nbf"] = json!(now - 60);
    assert_eq!(account_with(&client, &server, &sign_raw(&real, kid, &just_expired)).await, 200);
    let _ = org_id;
}

#[tokio::test]
async fn an_embedded_token_dies_at_exp_give_or_take_five_seconds() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &common::with_test_clock());
    let client = client();
    let (_, key) = register(&client, &server, "Acme").await;
    let agent = create_agent(&client, &server, &key, json!({"name": "a", "scopes": ["account:read"]})).await;
    let agent_id = agent["id"].as_str().unwrap();

    // Minted in the past, as if it were a minute old: a one-second token that expired six
    // seconds ago (the server's own key, a jti it minted).
    let minted = mint(&client, &server, &key, agent_id, json!({"ttl_seconds": 1})).await;
    let token = minted["access_token"].as_str().unwrap();
    assert_eq!(account_with(&client, &server, token).await, 200, "valid while fresh, and cached");
    let segments: Vec<&str> = token.split('.').collect();
    let kid = decode_segment(segments[0])["kid"].as_str().unwrap().to_owned();
    let real = unsealed_signing_key(&database).await;
    let now = chrono::Utc::now().timestamp();
    let mut aged = decode_segment(segments[1]);
    aged["iat"] = json!(now - 60);
    aged["nbf"] = json!(now - 60);
    aged["exp"] = json!(now - 6);
    let response =
        client.get(server.url("/v1/auth/account")).bearer_auth(sign_raw(&real, &kid, &aged)).send().await.unwrap();
    assert_eq!(error_code(response).await, (401, "unauthorized".to_owned()));

    // And the real thing, with the server's clock: seven seconds after minting, the
    // one-second token (verified and cached above) is refused.
    common::advance_clock(&client, &server, common::TEST_CLOCK_OPERATOR_KEY, 7).await;
    let response = client.get(server.url("/v1/auth/account")).bearer_auth(token).send().await.unwrap();
    assert_eq!(error_code(response).await, (401, "unauthorized".to_owned()));
}

#[tokio::test]
async fn an_agent_token_in_x_api_key_is_401() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let (_, key) = register(&client, &server, "Acme").await;
    let agent = create_agent(&client, &server, &key, json!({"name": "a", "scopes": ["account:read"]})).await;
    let minted = mint(&client, &server, &key, agent["id"].as_str().unwrap(), json!({})).await;
    let token = minted["access_token"].as_str().unwrap();
    assert_eq!(account_with(&client, &server, token).await, 200, "as Bearer it works");
    let response = client.get(server.url("/v1/auth/account")).header("x-api-key", token).send().await.unwrap();
    let (status, body) = (response.status().as_u16(), response.json::<Value>().await.unwrap());
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("x-api-key"), "{body}");
    // Both headers, the same token: still refused, the token is in x-api-key.
    let response =
        client.get(server.url("/v1/auth/account")).bearer_auth(token).header("x-api-key", token).send().await.unwrap();
    assert_eq!(error_code(response).await, (401, "unauthorized".to_owned()));
    // An API key there is fine.
    let response = client.get(server.url("/v1/auth/account")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn revoking_an_agent_or_one_token_is_401_at_once_and_other_orgs_get_404() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let (_, key) = register(&client, &server, "Acme").await;
    let agent = create_agent(&client, &server, &key, json!({"name": "worker", "scopes": ["account:read"]})).await;
    let agent_id = agent["id"].as_str().unwrap();
    let first = mint(&client, &server, &key, agent_id, json!({})).await;
    let second = mint(&client, &server, &key, agent_id, json!({})).await;
    let first_token = first["access_token"].as_str().unwrap();
    let second_token = second["access_token"].as_str().unwrap();
    assert_eq!(account_with(&client, &server, first_token).await, 200);
    assert_eq!(account_with(&client, &server, second_token).await, 200);

    // Another org can neither see, mint for, nor revoke my agent.
    let (_, other_key) = register(&client, &server, "Other").await;
    for path in [format!("/me/agents/{agent_id}/token"), format!("/me/agents/{agent_id}/revoke")] {
        let response = post(&client, &server, &other_key, &path, json!({})).await;
        assert_eq!(error_code(response).await, (404, "not_found".to_owned()), "{path}");
    }
    let response =
        client.get(server.url(&format!("/me/agents/{agent_id}"))).bearer_auth(&other_key).send().await.unwrap();
    assert_eq!(error_code(response).await, (404, "not_found".to_owned()));
    let listed: Value =
        client.get(server.url("/me/agents")).bearer_auth(&other_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"], json!([]));

    // One token, by jti.
    let jti = first["jti"].as_str().unwrap();
    let response = post(&client, &server, &key, &format!("/me/agents/{agent_id}/tokens/{jti}/revoke"), json!({})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(account_with(&client, &server, first_token).await, 401);
    assert_eq!(account_with(&client, &server, second_token).await, 200);

    // The whole agent: every live token dies, and minting is refused.
    let response = post(&client, &server, &key, &format!("/me/agents/{agent_id}/revoke"), json!({})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "revoked");
    assert_eq!(account_with(&client, &server, second_token).await, 401);
    let response = post(&client, &server, &key, &format!("/me/agents/{agent_id}/token"), json!({})).await;
    assert_eq!(error_code(response).await, (409, "agent_revoked".to_owned()));

    // After a restart the revocations hold (folded from the log).
    drop(server);
    let server = TestServer::start(&database.url());
    assert_eq!(account_with(&client, &server, second_token).await, 401);
    let shown: Value = client
        .get(server.url(&format!("/me/agents/{agent_id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "revoked");
}

#[tokio::test]
async fn delegated_agents_act_for_a_member() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "asha@example.com", "password": "Owner-Pass-1"}))
        .send()
        .await
        .unwrap();
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let user: Value = signup.json().await.unwrap();
    let response = client
        .post(server.url("/me/agents"))
        .header("cookie", &cookie)
        .json(&json!({"name": "asha's helper", "mode": "delegated", "scopes": ["account:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let agent: Value = response.json().await.unwrap();
    assert_eq!(agent["act_for"], user["user_id"]);
    let minted: Value = client
        .post(server.url(&format!("/me/agents/{}/token", agent["id"].as_str().unwrap())))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = decode_segment(minted["access_token"].as_str().unwrap().split('.').nth(1).unwrap());
    assert_eq!(claims["mode"], "delegated");
    assert_eq!(claims["act_for"], user["user_id"]);
    // A delegated agent must act for a member of this org.
    let response = client
        .post(server.url("/me/agents"))
        .header("cookie", &cookie)
        .json(&json!({"name": "x", "mode": "delegated", "act_for": "usr_Nobody000000000000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await.0, 400);
}

/// A tiny JWKS server on 127.0.0.1:0 for `jwks_uri` registrations.
async fn serve_jwks(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app =
        axum::Router::new().route("/jwks.json", axum::routing::get(move || async move { axum::Json(jwks.clone()) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/jwks.json")
}

#[tokio::test]
async fn bring_your_own_issuer_with_and_without_act_and_its_revocation() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start(&database.url());
    let client = client();
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": "ops@example.com", "password": "Owner-Pass-1", "org_name": "Fleet Co"}))
        .send()
        .await
        .unwrap();
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let owner: Value = signup.json().await.unwrap();
    let org_id = owner["org_id"].as_str().unwrap().to_owned();

    let external = SigningKey::from_random_bytes([42; 32]).unwrap();
    let jwks = serde_json::to_value(JwkSet { keys: vec![external.public_jwk()] }).unwrap();
    let register_issuer =
        |body: Value| client.post(server.url("/me/issuers")).header("cookie", &cookie).json(&body).send();
    let response = register_issuer(json!({
        "issuer": "https://ekam.example",
        "jwks": jwks,
        "audience": "bahi",
        "owners": {"fleet-owner": org_id},
        "proofs": {"fleet-owner": proof(&external, "https://ekam.example", Some("bahi"), "fleet-owner")}
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let issuer: Value = response.json().await.unwrap();
    let issuer_id = issuer["id"].as_str().unwrap().to_owned();
    assert!(issuer_id.starts_with("iss_"));
    assert_eq!(issuer["owner_claim"], "org");

    let now = chrono::Utc::now().timestamp();
    let base = json!({"iss": "https://ekam.example", "aud": "bahi", "org": "fleet-owner", "scope": "account:read inference",
        "iat": now, "nbf": now, "exp": now + 300});
    // Without act: the subject is the agent.
    let mut plain = base.clone();
    plain["sub"] = json!("ekam-agent-7");
    let plain = sign_raw(&external, external.kid(), &plain);
    assert_eq!(account_with(&client, &server, &plain).await, 200);
    // With act: act.sub is the agent, sub the principal acted for.
    let mut delegated = base.clone();
    delegated["sub"] = json!("user-19");
    delegated["act"] = json!({"sub": "ekam-agent-8"});
    let delegated = sign_raw(&external, external.kid(), &delegated);
    assert_eq!(account_with(&client, &server, &delegated).await, 200);
    // An owner not mapped to an org is refused; so is a wrong audience.
    let mut unmapped = base.clone();
    unmapped["sub"] = json!("x");
    unmapped["org"] = json!("someone-else");
    assert_eq!(account_with(&client, &server, &sign_raw(&external, external.kid(), &unmapped)).await, 401);
    let mut wrong_audience = base.clone();
    wrong_audience["sub"] = json!("x");
    wrong_audience["aud"] = json!("other");
    assert_eq!(account_with(&client, &server, &sign_raw(&external, external.kid(), &wrong_audience)).await, 401);

    // Owners may map only to the registering org; keys must be ES256 public keys; an API
    // key cannot register issuers (a human owner or admin does).
    let (other_org, other_key) = register(&client, &server, "Other").await;
    let response = register_issuer(json!({"issuer": "https://x.example", "jwks": jwks, "owners": {"o": other_org}}))
        .await
        .unwrap();
    assert_eq!(error_code(response).await.0, 403);
    let response = register_issuer(json!({"issuer": "https://x.example", "jwks": {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}, "owners": {"o": org_id}}))
        .await
        .unwrap();
    assert_eq!(error_code(response).await.0, 400);
    let response = post(
        &client,
        &server,
        &other_key,
        "/me/issuers",
        json!({"issuer": "https://y.example", "jwks": jwks, "owners": {"o": other_org}}),
    )
    .await;
    assert_eq!(error_code(response).await, (403, "human_only".to_owned()));

    // Revoking the issuer kills every one of its tokens.
    let response = client
        .post(server.url(&format!("/me/issuers/{issuer_id}/revoke")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(account_with(&client, &server, &plain).await, 401);
    assert_eq!(account_with(&client, &server, &delegated).await, 401);

    // jwks_uri: the keys are fetched (with a timeout) instead of given inline.
    let fetched = SigningKey::from_random_bytes([43; 32]).unwrap();
    let uri = serve_jwks(serde_json::to_value(JwkSet { keys: vec![fetched.public_jwk()] }).unwrap()).await;
    let response = register_issuer(
        json!({"issuer": "https://fetched.example", "jwks_uri": uri, "owners": {"fleet-owner": org_id},
            "proofs": {"fleet-owner": proof(&fetched, "https://fetched.example", None, "fleet-owner")}}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let mut by_uri = base.clone();
    by_uri["iss"] = json!("https://fetched.example");
    by_uri["sub"] = json!("agent-9");
    assert_eq!(account_with(&client, &server, &sign_raw(&fetched, fetched.kid(), &by_uri)).await, 200);
    let response = register_issuer(json!({"issuer": "https://dead.example", "jwks_uri": "http://127.0.0.1:9/jwks.json", "owners": {"fleet-owner": org_id}}))
        .await
        .unwrap();
    assert_eq!(error_code(response).await.0, 400);
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let client = client();
    let (_, key) = register(&client, &server, "Acme").await;
    let agent = create_agent(&client, &server, &key, json!({"name": "a", "scopes": ["account:read"]})).await;
    let agent_id = agent["id"].as_str().unwrap();
    let old = mint(&client, &server, &key, agent_id, json!({})).await;
    let old_token = old["access_token"].as_str().unwrap();
    let old_kid = decode_segment(old_token.split('.').next().unwrap())["kid"].clone();

    let response = post(&client, &server, &key, "/v1/admin/signing-keys/rotate", json!({})).await;
    assert_eq!(error_code(response).await, (403, "operator_only".to_owned()));
    let response = post(&client, &server, OPERATOR_KEY, "/v1/admin/signing-keys/rotate", json!({})).await;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.unwrap();
    assert_eq!(rotated["retired_key_id"], old_kid);

    let jwks: Value = client.get(server.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "the retired key is still published");
    assert_eq!(account_with(&client, &server, old_token).await, 200, "tokens of the retired key still verify");
    let new = mint(&client, &server, &key, agent_id, json!({})).await;
    let new_token = new["access_token"].as_str().unwrap();
    let claims = verify_independently(new_token, &jwks);
    assert_eq!(decode_segment(new_token.split('.').next().unwrap())["kid"], rotated["key_id"]);
    assert_eq!(claims["sub"], agent_id);
    assert_eq!(account_with(&client, &server, new_token).await, 200);
}

/// Two nodes on one PostgreSQL log: a revocation made on one is refused on the other.
#[tokio::test]
async fn revocation_on_one_node_is_refused_on_another() {
    let Some(database) = TestDatabase::postgres().await else { return };
    let key_encryption_key = hex::encode([9u8; 32]);
    // Every node of a cluster shares the issuer name and the key-encryption key.
    let environment = [("BAHI_KEY_ENCRYPTION_KEY", key_encryption_key.as_str()), ("BAHI_ISSUER", "https://bahi.test")];
    let first = TestServer::start_with(&database.url(), &environment);
    let second = TestServer::start_with(&database.url(), &environment);
    let client = client();
    let (_, key) = register(&client, &first, "Acme").await;
    let agent = create_agent(&client, &first, &key, json!({"name": "a", "scopes": ["account:read"]})).await;
    let agent_id = agent["id"].as_str().unwrap();
    let minted = mint(&client, &first, &key, agent_id, json!({})).await;
    let token = minted["access_token"].as_str().unwrap();
    let learned = common::eventually(|| async { account_with(&client, &second, token).await == 200 }).await;
    assert!(learned, "the second node never learned of the agent");
    let response = post(&client, &first, &key, &format!("/me/agents/{agent_id}/revoke"), json!({})).await;
    assert_eq!(response.status(), 200);
    let revoked_at = Instant::now();
    let refused = common::eventually(|| async { account_with(&client, &second, token).await == 401 }).await;
    assert!(refused, "the second node still accepts a revoked agent's token");
    eprintln!("revocation reached the second node in {:?}", revoked_at.elapsed());
}

/// A human owner's session cookie and org id, from a fresh signup.
async fn sign_up(client: &Client, server: &TestServer, email: &str, org_name: &str) -> (String, String) {
    let signup = client
        .post(server.url("/me/signup"))
        .json(&json!({"email": email, "password": "Owner-Pass-1", "org_name": org_name}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let body: Value = signup.json().await.unwrap();
    (cookie, body["org_id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn another_org_cannot_squat_an_issuer_owner() {
    for database in TestDatabase::all().await {
        let engine = database.engine();
        let server = TestServer::start(&database.url());
        let client = client();
        let (cookie_a, org_a) = sign_up(&client, &server, "a@acme.example", "Acme").await;
        let (cookie_b, org_b) = sign_up(&client, &server, "b@globex.example", "Globex").await;
        let register_as = |cookie: &str, body: Value| {
            client.post(server.url("/me/issuers")).header("cookie", cookie.to_owned()).json(&body).send()
        };
        let idp = SigningKey::from_random_bytes([44; 32]).unwrap();
        let jwks = serde_json::to_value(JwkSet { keys: vec![idp.public_jwk()] }).unwrap();
        const IDP: &str = "https://idp.example";
        let registered = register_as(
            &cookie_a,
            json!({"issuer": IDP, "jwks": jwks, "owners": {"acme": org_a}, "proofs": {"acme": proof(&idp, IDP, None, "acme")}}),
        )
        .await
        .unwrap();
        assert_eq!(registered.status(), 201, "{engine}");
        let registration_a: Value = registered.json().await.unwrap();
        let now = chrono::Utc::now().timestamp();
        let token_a = sign_raw(
            &idp,
            idp.kid(),
            &json!({"iss": IDP, "sub": "acme-agent", "org": "acme", "scope": "account:read", "iat": now, "exp": now + 300}),
        );
        let org_of = |token: String| {
            let request = client.get(server.url("/v1/auth/account")).bearer_auth(token).send();
            async move {
                let response = request.await.unwrap();
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.unwrap();
                body["org_id"].as_str().unwrap().to_owned()
            }
        };
        assert_eq!(org_of(token_a.clone()).await, org_a, "{engine}");

        // B copies A's public keys and maps A's owner to itself: no proof, 400 naming it.
        let squat = |proofs: Value| json!({"issuer": IDP, "jwks": jwks, "owners": {"acme": org_b}, "proofs": proofs});
        let response = register_as(&cookie_b, squat(json!({}))).await.unwrap();
        let body = response.text().await.unwrap();
        assert!(body.contains("invalid_request") && body.contains("acme"), "{engine}: {body}");
        // Forged proofs: B's own key under A's kid, another owner, an expired token.
        let impostor = SigningKey::from_random_bytes([45; 32]).unwrap();
        let forged = sign_raw(
            &impostor,
            idp.kid(),
            &json!({"iss": IDP, "sub": "x", "org": "acme", "iat": now, "exp": now + 300}),
        );
        let other_owner = proof(&idp, IDP, None, "globex");
        let expired = sign_raw(
            &idp,
            idp.kid(),
            &json!({"iss": IDP, "sub": "x", "org": "acme", "iat": now - 7200, "exp": now - 3600}),
        );
        let other_issuer = proof(&idp, "https://elsewhere.example", None, "acme");
        for (what, token) in [
            ("key not in the set", forged),
            ("owner mismatch", other_owner),
            ("expired", expired),
            ("other iss", other_issuer),
        ] {
            let response = register_as(&cookie_b, squat(json!({"acme": token}))).await.unwrap();
            let (status, kind) = error_code(response).await;
            assert_eq!((status, kind.as_str()), (400, "invalid_request"), "{engine}: {what}");
        }
        // A registered audience must be in the proof.
        let mut with_audience = squat(json!({"acme": proof(&idp, IDP, None, "acme")}));
        with_audience["audience"] = json!("bahi");
        assert_eq!(error_code(register_as(&cookie_b, with_audience).await.unwrap()).await.0, 400, "{engine}");
        // Even a genuine proof cannot take an owner another org's live registration maps.
        let genuine = squat(json!({"acme": proof(&idp, IDP, None, "acme")}));
        let (status, kind) = error_code(register_as(&cookie_b, genuine).await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (409, "conflict"), "{engine}");
        assert_eq!(org_of(token_a.clone()).await, org_a, "{engine}: A's tokens still pay as A");

        // A revokes its registration: B still cannot map A's owner without a proof, and A's
        // tokens are refused rather than billed to B.
        let revoke_path = format!("/me/issuers/{}/revoke", registration_a["id"].as_str().unwrap());
        let revoked = client.post(server.url(&revoke_path)).header("cookie", &cookie_a).send().await.unwrap();
        assert_eq!(revoked.status(), 200);
        assert_eq!(error_code(register_as(&cookie_b, squat(json!({}))).await.unwrap()).await.0, 400, "{engine}");
        assert_eq!(account_with(&client, &server, &token_a).await, 401, "{engine}");
    }
}

/// A proof is a token the server would accept: held to the same external-token rules the
/// server was started with (here a one-hour lifetime), not to the verifier's defaults.
#[tokio::test]
async fn owner_proofs_are_held_to_the_servers_external_token_rules() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_EXTERNAL_TOKEN_MAX_LIFETIME_SECONDS", "3600")]);
    let client = client();
    let (cookie, org_id) = sign_up(&client, &server, "a@acme.example", "Acme").await;
    let idp = SigningKey::from_random_bytes([45; 32]).unwrap();
    let jwks = serde_json::to_value(JwkSet { keys: vec![idp.public_jwk()] }).unwrap();
    const IDP: &str = "https://rules.example";
    let now = chrono::Utc::now().timestamp();
    let proof_lasting = |seconds: i64| {
        sign_raw(&idp, idp.kid(), &json!({"iss": IDP, "sub": "admin", "org": "acme", "iat": now, "exp": now + seconds}))
    };
    let register = |proof: String| {
        client
            .post(server.url("/me/issuers"))
            .header("cookie", cookie.clone())
            .json(&json!({"issuer": IDP, "jwks": jwks, "owners": {"acme": org_id}, "proofs": {"acme": proof}}))
            .send()
    };
    let two_hours = register(proof_lasting(7200)).await.unwrap();
    assert_eq!(two_hours.status(), 400, "a proof living longer than the server allows is refused");
    let body = two_hours.text().await.unwrap();
    assert!(body.contains("proof of owner"), "{body}");
    let ten_minutes = register(proof_lasting(600)).await.unwrap();
    assert_eq!(ten_minutes.status(), 201, "{}", ten_minutes.text().await.unwrap());
}

/// Agent-first onboarding: agent-register with `agent_name` creates that agent, and the key it
/// returns speaks for it: the key's calls are the agent's in the audit, and the key dies with
/// the agent. Without a name, the key is the org's own, as before.
#[tokio::test]
async fn agent_register_creates_the_named_agent_and_its_key_speaks_for_it() {
    let database = TestDatabase::sqlite();
    let server = TestServer::start_with(&database.url(), &[("BAHI_OPERATOR_KEY", OPERATOR_KEY)]);
    let client = client();
    let registered: Value = client
        .post(server.url("/v1/auth/agent-register"))
        .json(&json!({"agent_name": "ingest-pipeline"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (org_id, key) = (registered["org_id"].as_str().unwrap(), registered["api_key"].as_str().unwrap());
    let agent_id = registered["agent_id"].as_str().expect("agent_id when agent_name is given");
    let agent: Value = client
        .get(server.url(&format!("/me/agents/{agent_id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (agent["name"].as_str(), agent["mode"].as_str(), agent["act_for"].as_str()),
        (Some("ingest-pipeline"), Some("autonomous"), Some(org_id))
    );

    let price = client
        .put(server.url("/v1/admin/prices/m"))
        .bearer_auth(OPERATOR_KEY)
        .json(&json!({"input_per_million": "1", "output_per_million": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(price.status(), 200);
    let grant = post(
        &client,
        &server,
        OPERATOR_KEY,
        "/v1/admin/credits/grants",
        json!({"org_id": org_id, "amount": "10", "reason": "trial"}),
    )
    .await;
    assert_eq!(grant.status(), 201);
    let authorized: Value =
        post(&client, &server, key, "/v1/authorize", json!({"model": "m"})).await.json().await.unwrap();
    let call_id = authorized["call_id"].as_str().unwrap();
    let call: Value = client
        .get(server.url(&format!("/v1/audit/calls/{call_id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(call["agent"]["id"], agent_id, "{call}");
    assert_eq!(call["agent"]["name"], "ingest-pipeline", "{call}");

    // Revoking the agent (with the key itself: it holds agents:write) ends the key too.
    let response = post(&client, &server, key, &format!("/me/agents/{agent_id}/revoke"), json!({})).await;
    assert_eq!(response.status(), 200);
    let refused = client.get(server.url("/v1/auth/account")).bearer_auth(key).send().await.unwrap();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["message"], "this API key's agent was revoked", "{refused}");

    // Without a name there is no agent, and the key acts for the org.
    let plain: Value =
        client.post(server.url("/v1/auth/agent-register")).json(&json!({})).send().await.unwrap().json().await.unwrap();
    assert!(plain.get("agent_id").is_none(), "{plain}");
}
