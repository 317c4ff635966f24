//! Given past events, when a money command arrives at or past a limit, then it is decided at
//! the limit and refused a micro-rupee past it, naming the limit; and whatever is decided
//! reads back through the decoder (the log holds only what it can read back).
#![allow(clippy::unwrap_used)]

use bahi_domain::billing::{MAX_CALL_COST_MICROS, MAX_PRICE_PER_MILLION_MICROS, MAX_TOKENS_PER_CALL, Price};
use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Scope};
use bahi_domain::event::CallAttribution;
use bahi_domain::ids::{ApiKeyId, CallId, OrgId, TopupId, UserId};
use bahi_domain::money::{MAX_ABS_AMOUNT_MICROS, MAX_AMOUNT_MICROS, MAX_BALANCE_MICROS};
use bahi_domain::{Command, DomainError, Event, Money, State, decide, evolve};
use chrono::{DateTime, Utc};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc)
}

fn money(micros: i64) -> Money {
    Money::from_micros(micros).unwrap()
}

/// The state and every event decided so far; each event must decode from its own bytes.
struct Ledger {
    state: State,
    counter: u32,
}

impl Ledger {
    /// Given an org ("Acme") with its first key.
    fn with_org() -> (Ledger, OrgId, ApiKeyId) {
        let mut ledger = Ledger { state: State::default(), counter: 0 };
        let key = NewApiKey::generate(&KeyPrefix::parse("bahi").unwrap(), Environment::Live, [7; 32]);
        let org_id = OrgId::from_random([1; 16]);
        let key_id = ApiKeyId::from_random([2; 16]);
        ledger
            .when(&Command::RegisterOrg {
                org_id: org_id.clone(),
                display_name: "Acme".into(),
                environment: Environment::Live,
                first_key: NewKeyRecord {
                    key_id: key_id.clone(),
                    hash: key.hash,
                    display_prefix: key.display_prefix,
                    environment: Environment::Live,
                    name: None,
                    scopes: Scope::ORG_DEFAULT.to_vec(),
                    expires_at: None,
                    rate_limit: None,
                    budget: None,
                    metadata: None,
                },
                first_agent: None,
            })
            .unwrap();
        (ledger, org_id, key_id)
    }

    fn random(&mut self) -> [u8; 16] {
        self.counter += 1;
        let mut random = [0x5A; 16];
        random[..4].copy_from_slice(&self.counter.to_be_bytes());
        random
    }

    /// Decides `command`; folds what it decided, after checking that each event reads back
    /// from its stored bytes as itself.
    fn when(&mut self, command: &Command) -> Result<Vec<Event>, DomainError> {
        let events = decide(&self.state, command, now())?;
        for event in &events {
            let decoded = Event::decode(event.event_type(), event.schema_version(), &event.payload_bytes());
            assert_eq!(decoded.as_ref(), Ok(event), "an event the domain decided does not read back");
            evolve(&mut self.state, event);
        }
        Ok(events)
    }

    fn grant(&mut self, org_id: &OrgId, amount: Money) -> Result<Vec<Event>, DomainError> {
        let grant_id = TopupId::from_random(self.random());
        self.when(&Command::Grant { org_id: org_id.clone(), grant_id, amount, reason: "bounds".into() })
    }

    fn top_up(&mut self, org_id: &OrgId, amount: Money) -> Result<Vec<Event>, DomainError> {
        let topup_id = TopupId::from_random(self.random());
        let payment_reference = format!("pay_{}", self.counter);
        self.when(&Command::TopUp {
            org_id: org_id.clone(),
            topup_id,
            amount,
            payment_reference,
            user_id: UserId::from_random([3; 16]),
        })
    }

    fn balance(&self, org_id: &OrgId) -> Money {
        self.state.org(org_id).unwrap().balance
    }
}

fn invalid_message(result: Result<Vec<Event>, DomainError>) -> String {
    match result {
        Err(DomainError::Invalid(message)) => message,
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
}

#[test]
fn limits_are_at_least_a_billion_rupees_and_everything_the_writer_records_decodes() {
    const { assert!(MAX_AMOUNT_MICROS >= 1_000_000_000 * 1_000_000) };
    const { assert!(MAX_BALANCE_MICROS >= MAX_AMOUNT_MICROS) };
    for largest in [MAX_AMOUNT_MICROS, MAX_BALANCE_MICROS, -MAX_BALANCE_MICROS, MAX_CALL_COST_MICROS] {
        assert!(largest.abs() <= MAX_ABS_AMOUNT_MICROS);
        assert_eq!(Money::parse(&money(largest).to_string()), Ok(money(largest)));
    }
}

#[test]
fn a_top_up_or_grant_at_the_single_amount_limit_is_decided_and_one_micro_more_is_refused() {
    let (mut ledger, org_id, _) = Ledger::with_org();
    ledger.top_up(&org_id, Money::MAX_AMOUNT).unwrap();
    ledger.grant(&org_id, Money::MAX_AMOUNT).unwrap();
    let over = money(MAX_AMOUNT_MICROS + 1);
    for message in [invalid_message(ledger.top_up(&org_id, over)), invalid_message(ledger.grant(&org_id, over))] {
        assert_eq!(message, "amount exceeds the maximum of 1000000000.00 INR");
    }
    assert_eq!(ledger.balance(&org_id), money(2 * MAX_AMOUNT_MICROS));
}

#[test]
fn credits_fill_the_balance_to_its_limit_and_not_a_micro_past_it() {
    let (mut ledger, org_id, _) = Ledger::with_org();
    // Two top-ups of 10^12 INR each reached the log before these limits (issue 23): the
    // second one's balance_after did not decode. Now the first is already refused.
    let issue_amount = Money::parse("1000000000000").unwrap();
    assert!(matches!(ledger.top_up(&org_id, issue_amount), Err(DomainError::Invalid(_))));
    let steps = MAX_BALANCE_MICROS / MAX_AMOUNT_MICROS;
    for step in 0..steps {
        if step % 2 == 0 {
            ledger.grant(&org_id, Money::MAX_AMOUNT)
        } else {
            ledger.top_up(&org_id, Money::MAX_AMOUNT)
        }
        .unwrap();
    }
    assert_eq!(ledger.balance(&org_id), Money::MAX_BALANCE);
    let message = invalid_message(ledger.grant(&org_id, money(1)));
    assert_eq!(message, "the balance would exceed the maximum of 1000000000000.00 INR");
    let message = invalid_message(ledger.top_up(&org_id, money(1)));
    assert_eq!(message, "the balance would exceed the maximum of 1000000000000.00 INR");
    assert_eq!(ledger.balance(&org_id), Money::MAX_BALANCE, "a refusal changes nothing");
}

#[test]
fn max_cost_is_bounded_like_any_single_amount() {
    let (mut ledger, org_id, key_id) = Ledger::with_org();
    let price = Price { input_per_million: money(1), output_per_million: money(1) };
    ledger.when(&Command::SetPrice { model: "m".into(), price, default_hold: None }).unwrap();
    ledger.grant(&org_id, Money::MAX_AMOUNT).unwrap();
    ledger.grant(&org_id, Money::MAX_AMOUNT).unwrap();
    let attribution = CallAttribution {
        credential_kind: "api_key".into(),
        credential_id: key_id.to_string(),
        agent_id: None,
        agent_name: None,
        act_for: org_id.to_string(),
    };
    let authorize = |ledger: &mut Ledger, max_cost: Money| {
        let call_id = CallId::from_random(ledger.random());
        ledger.when(&Command::Authorize {
            call_id,
            org_id: org_id.clone(),
            attribution: attribution.clone(),
            model: "m".into(),
            max_cost: Some(max_cost),
            hold_ttl_seconds: 600,
        })
    };
    let message = invalid_message(authorize(&mut ledger, money(MAX_AMOUNT_MICROS + 1)));
    assert_eq!(message, "max_cost exceeds the maximum of 1000000000.00 INR");
    authorize(&mut ledger, Money::MAX_AMOUNT).unwrap();
    assert_eq!(ledger.state.org(&org_id).unwrap().held, Money::MAX_AMOUNT);
}

#[test]
fn prices_and_token_counts_bound_a_call_cost_which_never_takes_a_balance_past_its_negative_limit() {
    let (mut ledger, org_id, key_id) = Ledger::with_org();
    let highest = money(MAX_PRICE_PER_MILLION_MICROS);
    let over = money(MAX_PRICE_PER_MILLION_MICROS + 1);
    let refused = ledger.when(&Command::SetPrice {
        model: "m".into(),
        price: Price { input_per_million: over, output_per_million: highest },
        default_hold: None,
    });
    assert!(matches!(refused, Err(DomainError::Invalid(_))));
    let price = Price { input_per_million: highest, output_per_million: highest };
    // A default hold of one micro-rupee: every call below is covered by its own hold when
    // authorized, and each may then cost the most a call can (the overshoot design.md
    // allows), until the balance's limit.
    ledger.when(&Command::SetPrice { model: "m".into(), price, default_hold: Some(money(1)) }).unwrap();
    let calls_to_limit = usize::try_from(MAX_BALANCE_MICROS / MAX_CALL_COST_MICROS).unwrap();
    let credit = i64::try_from(calls_to_limit).unwrap() + 1;
    ledger.grant(&org_id, money(credit)).unwrap();
    let attribution = CallAttribution {
        credential_kind: "api_key".into(),
        credential_id: key_id.to_string(),
        agent_id: None,
        agent_name: None,
        act_for: org_id.to_string(),
    };
    let mut calls = Vec::new();
    for _ in 0..=calls_to_limit {
        let call_id = CallId::from_random(ledger.random());
        ledger
            .when(&Command::Authorize {
                call_id: call_id.clone(),
                org_id: org_id.clone(),
                attribution: attribution.clone(),
                model: "m".into(),
                max_cost: None,
                hold_ttl_seconds: 600,
            })
            .unwrap();
        calls.push(call_id);
    }
    let usage = |call_id: &CallId, tokens: u64| Command::RecordUsage {
        call_id: call_id.clone(),
        model: "m".into(),
        input_tokens: tokens,
        output_tokens: tokens,
        status: bahi_domain::billing::UsageStatus::Succeeded,
        request_hash: "h".into(),
        usage_source: None,
    };
    let message = invalid_message(ledger.when(&usage(&calls[0], MAX_TOKENS_PER_CALL + 1)));
    assert_eq!(message, format!("token counts must be at most {MAX_TOKENS_PER_CALL}"));
    let (last, settled) = calls.split_last().unwrap();
    for call_id in settled {
        let events = ledger.when(&usage(call_id, MAX_TOKENS_PER_CALL)).unwrap();
        let Some(Event::UsageRecorded(recorded)) = events.last() else { panic!("{events:?}") };
        assert_eq!(recorded.cost, money(MAX_CALL_COST_MICROS));
    }
    // 501 micros - 500 × 2×10^9 INR: 501 micros above the negative limit.
    assert_eq!(ledger.balance(&org_id), money(credit - MAX_BALANCE_MICROS));
    let message = invalid_message(ledger.when(&usage(last, MAX_TOKENS_PER_CALL)));
    assert_eq!(message, "the balance would fall below the minimum of -1000000000000.00 INR");
    ledger.when(&usage(last, 0)).unwrap();
}
