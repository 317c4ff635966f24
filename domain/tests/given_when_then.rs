//! Given past events, when a command arrives, then these events (or this refusal).
#![allow(clippy::unwrap_used)]

use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Scope};
use bahi_domain::event::{Budget, BudgetPeriod, CallAttribution, RateLimit};
use bahi_domain::ids::{ApiKeyId, OrgId};
use bahi_domain::{Command, DomainError, Event, Money, State, decide, evolve};
use chrono::{DateTime, Duration, Utc};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc)
}

struct Scenario {
    state: State,
}

fn given(events: &[Event]) -> Scenario {
    let mut state = State::default();
    for event in events {
        evolve(&mut state, event);
    }
    Scenario { state }
}

impl Scenario {
    fn when(self, command: &Command) -> Result<Vec<Event>, DomainError> {
        decide(&self.state, command, now())
    }
}

fn key_record(seed: u8) -> NewKeyRecord {
    let key = NewApiKey::generate(&KeyPrefix::parse("bahi").unwrap(), Environment::Live, [seed; 32]);
    NewKeyRecord {
        key_id: ApiKeyId::from_random([seed; 16]),
        hash: key.hash,
        display_prefix: key.display_prefix,
        environment: Environment::Live,
        name: Some("first".into()),
        scopes: Scope::ORG_DEFAULT.to_vec(),
        expires_at: None,
        rate_limit: None,
        budget: None,
        metadata: None,
    }
}

fn register(seed: u8, name: &str) -> Command {
    Command::RegisterOrg {
        org_id: OrgId::from_random([seed; 16]),
        display_name: name.into(),
        environment: Environment::Live,
        first_key: key_record(seed),
        first_agent: None,
    }
}

#[test]
fn registering_an_org_records_the_org_and_its_first_key() {
    let events = given(&[]).when(&register(1, "Acme")).unwrap();
    assert_eq!(events.len(), 2);
    let Event::OrgRegistered(org) = &events[0] else { panic!("first event is OrgRegistered") };
    assert_eq!(org.display_name, "Acme");
    assert_eq!(org.plan, "free");
    assert_eq!(org.registered_at, now());
    let Event::ApiKeyCreated(key) = &events[1] else { panic!("second event is ApiKeyCreated") };
    assert_eq!(key.org_id, org.org_id);
    assert_eq!(key.created_at, now());
    assert_eq!(events[0].stream_id(), org.org_id.as_str());
    assert_eq!(events[1].stream_id(), key.key_id.as_str());

    let mut state = State::default();
    for event in &events {
        evolve(&mut state, event);
    }
    assert_eq!(state.org(&org.org_id).unwrap().balance, Money::ZERO);
    assert_eq!(state.api_key_by_hash(&key.key_hash).unwrap().id, key.key_id);
}

#[test]
fn the_same_org_or_key_twice_is_a_conflict() {
    let history = given(&[]).when(&register(1, "Acme")).unwrap();
    let refusal = given(&history).when(&register(1, "Acme again")).unwrap_err();
    assert!(matches!(refusal, DomainError::Conflict(_)));
    let Command::RegisterOrg { first_key, .. } = register(1, "x") else { unreachable!() };
    let same_key = Command::RegisterOrg {
        org_id: OrgId::from_random([9; 16]),
        display_name: "Other".into(),
        environment: Environment::Live,
        first_key,
        first_agent: None,
    };
    assert!(matches!(given(&history).when(&same_key), Err(DomainError::Conflict(_))));
}

#[test]
fn bad_names_and_key_settings_are_refused() {
    for name in ["", "   ", "tab\tname", &"x".repeat(201)] {
        assert!(matches!(given(&[]).when(&register(1, name)), Err(DomainError::Invalid(_))), "{name:?}");
    }
    let with_key = |change: &dyn Fn(&mut NewKeyRecord)| {
        let mut key = key_record(2);
        change(&mut key);
        Command::RegisterOrg {
            org_id: OrgId::from_random([2; 16]),
            display_name: "A".into(),
            environment: Environment::Live,
            first_key: key,
            first_agent: None,
        }
    };
    let refusals: [&dyn Fn(&mut NewKeyRecord); 6] = [
        &|key| key.expires_at = Some(now() - Duration::seconds(1)),
        &|key| key.scopes.clear(),
        &|key| key.metadata = Some(serde_json::json!([1, 2])),
        &|key| key.metadata = Some(serde_json::json!({"big": "x".repeat(5000)})),
        &|key| key.rate_limit = Some(RateLimit { requests: 0, interval_seconds: 60 }),
        &|key| key.budget = Some(Budget { amount: Money::ZERO, period: BudgetPeriod::Day }),
    ];
    for change in refusals {
        assert!(matches!(given(&[]).when(&with_key(change)), Err(DomainError::Invalid(_))));
    }
}

#[test]
fn events_round_trip_through_their_stored_bytes() {
    for event in given(&[]).when(&register(3, "Round Trip")).unwrap() {
        let decoded = Event::decode(event.event_type(), event.schema_version(), &event.payload_bytes()).unwrap();
        assert_eq!(decoded, event);
        // The bytes are deterministic: the same event always hashes the same.
        assert_eq!(decoded.payload_bytes(), event.payload_bytes());
    }
    assert!(Event::decode("NoSuchEvent", 1, b"{}").is_err());
    assert!(Event::decode("OrgRegistered", 99, b"{}").is_err());
    assert!(Event::decode("OrgRegistered", 1, b"{not json").is_err());
    // Bytes that are not UTF-8 are refused as a bad payload, inside a string or not.
    let mut not_utf8 = given(&[]).when(&register(4, "Bad \u{e9}")).unwrap()[0].payload_bytes();
    let accented = not_utf8.windows(2).position(|pair| pair == "\u{e9}".as_bytes()).unwrap();
    not_utf8[accented + 1] = 0xff;
    let refused = Event::decode("OrgRegistered", 1, &not_utf8).unwrap_err();
    assert!(matches!(refused, bahi_domain::event::DecodeError::BadPayload { .. }), "{refused:?}");
}

/// Decides `command` at `at` and folds its events into `state`.
fn run(state: &mut State, command: &Command, at: DateTime<Utc>) -> Vec<Event> {
    let events = decide(state, command, at).unwrap();
    for event in &events {
        evolve(state, event);
    }
    events
}

/// Registers org 1 ("Acme"), prices model "m" at `price` and grants it ₹10. Returns the org
/// and the attribution of a call made with its first key.
fn funded_org(state: &mut State, price: bahi_domain::billing::Price, at: DateTime<Utc>) -> (OrgId, CallAttribution) {
    let register_command = register(1, "Acme");
    run(state, &register_command, at);
    let Command::RegisterOrg { org_id, first_key, .. } = register_command else { unreachable!() };
    run(state, &Command::SetPrice { model: "m".into(), price, default_hold: None }, at);
    let grant = Command::Grant {
        org_id: org_id.clone(),
        grant_id: bahi_domain::ids::TopupId::from_random([1; 16]),
        amount: Money::parse("10").unwrap(),
        reason: "r".into(),
    };
    run(state, &grant, at);
    let attribution = CallAttribution {
        credential_kind: "api_key".into(),
        credential_id: first_key.key_id.to_string(),
        agent_id: None,
        agent_name: None,
        act_for: org_id.to_string(),
    };
    (org_id, attribution)
}

#[test]
fn settled_calls_leave_memory_after_a_day_and_unsettled_ones_after_a_week() {
    use bahi_domain::billing::Price;
    use bahi_domain::ids::CallId;

    let mut state = State::default();
    let mut at = now();
    let price = Price { input_per_million: Money::parse("1").unwrap(), output_per_million: Money::parse("1").unwrap() };
    let (org_id, attribution) = funded_org(&mut state, price, at);
    let authorize = |seed: u8| Command::Authorize {
        call_id: CallId::from_random([seed; 16]),
        org_id: org_id.clone(),
        attribution: attribution.clone(),
        model: "m".into(),
        max_cost: None,
        hold_ttl_seconds: 600,
    };
    let usage = |seed: u8| Command::RecordUsage {
        call_id: CallId::from_random([seed; 16]),
        model: "m".into(),
        input_tokens: 10,
        output_tokens: 10,
        status: bahi_domain::billing::UsageStatus::Succeeded,
        request_hash: "h".into(),
        usage_source: None,
    };
    run(&mut state, &authorize(1), at);
    run(&mut state, &authorize(2), at);
    run(&mut state, &usage(1), at);
    // Within a day a replay is answered from memory.
    assert!(decide(&state, &usage(1), at + Duration::hours(23)).unwrap().is_empty());
    // A day later (seen through the next event), the settled call is gone: a replay is 404.
    at += Duration::hours(25);
    run(&mut state, &authorize(3), at);
    assert!(!state.calls.contains_key(&CallId::from_random([1; 16])));
    assert!(matches!(decide(&state, &usage(1), at), Err(DomainError::NotFound("call"))));
    // The unsettled call waits a week for late usage, then it is gone too.
    assert!(state.calls.contains_key(&CallId::from_random([2; 16])));
    at += Duration::days(7);
    run(&mut state, &authorize(4), at);
    assert!(!state.calls.contains_key(&CallId::from_random([2; 16])));
    assert!(state.calls.contains_key(&CallId::from_random([4; 16])));
    // Forgotten calls leave the retention and expiry indexes with them.
    assert_eq!(state.call_retention.values().collect::<Vec<_>>(), [&CallId::from_random([4; 16])]);
    assert_eq!(state.hold_expiries.values().collect::<Vec<_>>(), [&CallId::from_random([4; 16])]);
}

#[test]
fn an_authorization_without_max_cost_holds_the_models_default_hold_and_never_overspends() {
    use bahi_domain::billing::{Price, UsageStatus};
    use bahi_domain::command::DEFAULT_HOLD_TOKENS;
    use bahi_domain::ids::CallId;

    // Given an org with ₹10 and a model priced ₹100/₹300 per million tokens, no default hold.
    let mut state = State::default();
    let at = now();
    let price =
        Price { input_per_million: Money::parse("100").unwrap(), output_per_million: Money::parse("300").unwrap() };
    let (org_id, attribution) = funded_org(&mut state, price, at);
    let authorize = |seed: u8| Command::Authorize {
        call_id: CallId::from_random([seed; 16]),
        org_id: org_id.clone(),
        attribution: attribution.clone(),
        model: "m".into(),
        max_cost: None,
        hold_ttl_seconds: 600,
    };
    // When a call is authorized without max_cost, then it holds what DEFAULT_HOLD_TOKENS
    // each way would cost: 4,096 × ₹400 / 1M = ₹1.6384.
    assert_eq!(DEFAULT_HOLD_TOKENS, 4_096);
    let events = run(&mut state, &authorize(1), at);
    let [Event::CallAuthorized(authorized)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(authorized.hold, Money::parse("1.6384").unwrap());

    // Given the operator's default hold of ₹1 for the model.
    let set = Command::SetPrice { model: "m".into(), price, default_hold: Some(Money::parse("1").unwrap()) };
    run(&mut state, &set, at);
    // When calls are authorized until the credit is held, then the one past it is refused:
    // ₹10 - ₹1.6384 leaves room for 8 holds of ₹1.
    for seed in 2..10 {
        run(&mut state, &authorize(seed), at);
    }
    assert!(matches!(decide(&state, &authorize(10), at), Err(DomainError::InsufficientCredits { .. })));
    assert_eq!(state.available(&org_id), Money::parse("0.3616").unwrap());

    // When one call's metered cost exceeds its own hold, the balance goes below zero by
    // exactly the excess over the credit: a served call is never free.
    let usage = Command::RecordUsage {
        call_id: CallId::from_random([2; 16]),
        model: "m".into(),
        input_tokens: 0,
        output_tokens: 100_000,
        status: UsageStatus::Cancelled,
        request_hash: "h".into(),
        usage_source: None,
    };
    let events = run(&mut state, &usage, at);
    let [Event::UsageRecorded(recorded)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(recorded.cost, Money::parse("30").unwrap(), "a cancelled call bills the tokens it served");
    assert_eq!(recorded.hold_released, Money::parse("1").unwrap());
    assert_eq!(recorded.balance_after, Money::parse("-20").unwrap());
    assert_eq!(recorded.status, "cancelled");
}

fn register_issuer(org: &OrgId, seed: u8, issuer: &str, owner: &str) -> Command {
    Command::RegisterIssuer {
        org_id: org.clone(),
        issuer_id: bahi_domain::ids::IssuerId::from_random([seed; 16]),
        issuer: issuer.into(),
        jwks: Some(serde_json::json!({"keys": []})),
        jwks_uri: None,
        audience: None,
        owner_claim: "org".into(),
        owners: std::collections::BTreeMap::from([(owner.to_owned(), org.clone())]),
    }
}

#[test]
fn an_issuer_owner_mapped_by_another_orgs_live_registration_is_a_conflict() {
    let mut state = State::default();
    for seed in [1, 2] {
        for event in decide(&state, &register(seed, "org"), now()).unwrap() {
            evolve(&mut state, &event);
        }
    }
    let (org_a, org_b) = (OrgId::from_random([1; 16]), OrgId::from_random([2; 16]));
    let registered_a = decide(&state, &register_issuer(&org_a, 10, "https://idp.example", "acme"), now()).unwrap();
    registered_a.iter().for_each(|event| evolve(&mut state, event));
    let squat = register_issuer(&org_b, 11, "https://idp.example", "acme");
    assert!(matches!(decide(&state, &squat, now()), Err(DomainError::Conflict(_))));
    // The same org may register the pair again (a second key set), another issuer's
    // `acme` is another pair, and once A's registration is revoked the pair is free.
    assert!(decide(&state, &register_issuer(&org_a, 12, "https://idp.example", "acme"), now()).is_ok());
    assert!(decide(&state, &register_issuer(&org_b, 13, "https://other.example", "acme"), now()).is_ok());
    let Event::IssuerRegistered(registered) = &registered_a[0] else { panic!("IssuerRegistered") };
    let revoke = Command::RevokeIssuer { org_id: org_a, issuer_id: registered.issuer_id.clone() };
    decide(&state, &revoke, now()).unwrap().iter().for_each(|event| evolve(&mut state, event));
    assert!(decide(&state, &squat, now()).is_ok());
}
