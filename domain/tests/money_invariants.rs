//! Property tests of the credit invariants over random interleavings of grants,
//! authorizations (with `max_cost`, and without it, holding the model's default hold),
//! settlements, replays, conflicting retries,
//! time passing and hold expiries:
//! - for every org at every position: holds + debits <= credits + overshoot, where the
//!   overshoot is what settled calls cost beyond their still-open holds (a served call is
//!   never free, so this is the only excess; see ARCHITECTURE.md for its bound);
//! - the balance equals credits − debits folded independently from the events;
//! - every hold resolves exactly once (settled or expired), and held equals open holds;
//! - the state's expiry index holds exactly the open holds, and its retention index every
//!   call in memory, each once (calls of one command share a timestamp, so this also
//!   checks that ties are kept apart);
//! - folding the same events with `evolve_taking` (loading's fold) reaches the same state.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use bahi_domain::billing::{Price, UsageStatus};
use bahi_domain::command::NewKeyRecord;
use bahi_domain::credential::{Environment, KeyPrefix, NewApiKey, Scope};
use bahi_domain::event::{Budget, BudgetPeriod, CallAttribution, Event};
use bahi_domain::ids::{ApiKeyId, CallId, OrgId, TopupId};
use bahi_domain::state::evolve_taking;
use bahi_domain::{Command, DomainError, Money, State, decide, evolve};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Operation {
    Grant { org: usize, micros: i64 },
    Authorize { org: usize, max_cost_micros: Option<i64> },
    Settle { call: usize, input: u64, output: u64 },
    Replay { call: usize },
    ConflictingRetry { call: usize },
    Advance { seconds: i64 },
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (0..3usize, 1..20_000_000i64).prop_map(|(org, micros)| Operation::Grant { org, micros }),
        (0..3usize, proptest::option::of(1..8_000_000i64))
            .prop_map(|(org, max_cost_micros)| Operation::Authorize { org, max_cost_micros }),
        (0..64usize, 0..40_000u64, 0..40_000u64).prop_map(|(call, input, output)| Operation::Settle {
            call,
            input,
            output
        }),
        (0..64usize).prop_map(|call| Operation::Replay { call }),
        (0..64usize).prop_map(|call| Operation::ConflictingRetry { call }),
        (0..400i64).prop_map(|seconds| Operation::Advance { seconds }),
    ]
}

struct World {
    state: State,
    now: DateTime<Utc>,
    orgs: Vec<OrgId>,
    keys: Vec<ApiKeyId>,
    calls: Vec<CallId>,
    settled_requests: HashMap<CallId, (u64, u64)>,
    events: Vec<Event>,
    counter: u8,
}

impl World {
    fn new() -> World {
        let mut world = World {
            state: State::default(),
            now: DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc),
            orgs: Vec::new(),
            keys: Vec::new(),
            calls: Vec::new(),
            settled_requests: HashMap::new(),
            events: Vec::new(),
            counter: 0,
        };
        for index in 0..3u8 {
            let org_id = OrgId::from_random([index + 1; 16]);
            let key_id = ApiKeyId::from_random([index + 1; 16]);
            let key = NewApiKey::generate(&KeyPrefix::parse("bahi").unwrap(), Environment::Live, [index + 1; 32]);
            // The third org's key has a budget, so budget refusals interleave too.
            let budget =
                (index == 2).then(|| Budget { amount: Money::parse("15").unwrap(), period: BudgetPeriod::Day });
            world
                .run(&Command::RegisterOrg {
                    org_id: org_id.clone(),
                    display_name: format!("org {index}"),
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
                        budget,
                        metadata: None,
                    },
                    first_agent: None,
                })
                .unwrap();
            world.orgs.push(org_id);
            world.keys.push(key_id);
        }
        let price =
            Price { input_per_million: Money::parse("150").unwrap(), output_per_million: Money::parse("600").unwrap() };
        world.run(&Command::SetPrice { model: "m".into(), price, default_hold: None }).unwrap();
        world
    }

    fn next_random(&mut self) -> [u8; 16] {
        self.counter = self.counter.wrapping_add(1);
        let mut random = [self.counter; 16];
        random[0] = 0xAB;
        random[1] = (self.calls.len() % 251) as u8;
        random[2] = (self.events.len() % 251) as u8;
        random[3] = (self.events.len() / 251 % 251) as u8;
        random
    }

    fn run(&mut self, command: &Command) -> Result<Vec<Event>, DomainError> {
        let events = decide(&self.state, command, self.now)?;
        for event in &events {
            evolve(&mut self.state, event);
            self.events.push(event.clone());
        }
        Ok(events)
    }

    fn usage(&self, call_id: &CallId, input: u64, output: u64) -> Command {
        Command::RecordUsage {
            call_id: call_id.clone(),
            model: "m".into(),
            input_tokens: input,
            output_tokens: output,
            status: UsageStatus::Succeeded,
            request_hash: format!("{input}/{output}"),
            usage_source: None,
        }
    }

    fn apply(&mut self, operation: &Operation) {
        match operation.clone() {
            Operation::Grant { org, micros } => {
                let grant_id = TopupId::from_random(self.next_random());
                let command = Command::Grant {
                    org_id: self.orgs[org].clone(),
                    grant_id,
                    amount: Money::from_micros(micros).unwrap(),
                    reason: "test".into(),
                };
                self.run(&command).unwrap();
            }
            Operation::Authorize { org, max_cost_micros } => {
                let call_id = CallId::from_random(self.next_random());
                let attribution = CallAttribution {
                    credential_kind: "api_key".into(),
                    credential_id: self.keys[org].to_string(),
                    agent_id: None,
                    agent_name: None,
                    act_for: self.orgs[org].to_string(),
                };
                let command = Command::Authorize {
                    call_id: call_id.clone(),
                    org_id: self.orgs[org].clone(),
                    attribution,
                    model: "m".into(),
                    max_cost: max_cost_micros.map(|micros| Money::from_micros(micros).unwrap()),
                    hold_ttl_seconds: 600,
                };
                match self.run(&command) {
                    Ok(_) => self.calls.push(call_id),
                    Err(DomainError::InsufficientCredits { .. } | DomainError::BudgetExceeded { .. }) => {}
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }
            Operation::Settle { call, input, output } => {
                let Some(call_id) = self.calls.get(call % self.calls.len().max(1)).cloned() else { return };
                match self.run(&self.usage(&call_id, input, output)) {
                    Ok(events) if !events.is_empty() => {
                        self.settled_requests.insert(call_id, (input, output));
                    }
                    Ok(_) => assert_eq!(self.settled_requests.get(&call_id), Some(&(input, output))),
                    Err(DomainError::Conflict(_)) => {
                        assert_ne!(self.settled_requests.get(&call_id), Some(&(input, output)))
                    }
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            }
            Operation::Replay { call } => {
                let Some(call_id) = self.calls.get(call % self.calls.len().max(1)).cloned() else { return };
                if let Some((input, output)) = self.settled_requests.get(&call_id).copied() {
                    let before = self.events.len();
                    assert!(
                        self.run(&self.usage(&call_id, input, output)).unwrap().is_empty(),
                        "a replay appends nothing"
                    );
                    assert_eq!(self.events.len(), before);
                }
            }
            Operation::ConflictingRetry { call } => {
                let Some(call_id) = self.calls.get(call % self.calls.len().max(1)).cloned() else { return };
                if let Some((input, output)) = self.settled_requests.get(&call_id).copied() {
                    let refusal = self.run(&self.usage(&call_id, input + 1, output));
                    assert!(matches!(refusal, Err(DomainError::Conflict(_))));
                }
            }
            Operation::Advance { seconds } => {
                self.now += Duration::seconds(seconds);
                loop {
                    if self.run(&Command::ExpireHolds).unwrap().is_empty() {
                        break;
                    }
                }
            }
        }
    }

    fn check_invariants(&self) {
        let mut credits: HashMap<&OrgId, i64> = HashMap::new();
        let mut debits: HashMap<&OrgId, i64> = HashMap::new();
        let mut resolutions: HashMap<&CallId, u32> = HashMap::new();
        let mut holds: HashMap<&CallId, (&OrgId, i64)> = HashMap::new();
        let mut authorizations: HashMap<&CallId, u32> = HashMap::new();
        let mut settlements: HashMap<&CallId, u32> = HashMap::new();
        for event in &self.events {
            match event {
                Event::CallAuthorized(authorized) => *authorizations.entry(&authorized.call_id).or_default() += 1,
                Event::UsageRecorded(recorded) => *settlements.entry(&recorded.call_id).or_default() += 1,
                _ => {}
            }
            match event {
                Event::CreditsGranted(granted) => {
                    *credits.entry(&granted.org_id).or_default() += granted.amount.micros()
                }
                Event::CreditsToppedUp(topped) => *credits.entry(&topped.org_id).or_default() += topped.amount.micros(),
                Event::CallAuthorized(authorized) if authorized.hold.is_positive() => {
                    holds.insert(&authorized.call_id, (&authorized.org_id, authorized.hold.micros()));
                }
                Event::UsageRecorded(recorded) => {
                    *debits.entry(&recorded.org_id).or_default() += recorded.cost.micros();
                    if recorded.hold_released.is_positive() {
                        *resolutions.entry(&recorded.call_id).or_default() += 1;
                        holds.remove(&recorded.call_id);
                    }
                }
                Event::HoldExpired(expired) => {
                    *resolutions.entry(&expired.call_id).or_default() += 1;
                    holds.remove(&expired.call_id);
                }
                _ => {}
            }
        }
        assert!(resolutions.values().all(|&count| count == 1), "a hold resolves exactly once");
        let indexed_holds: HashSet<&CallId> = self.state.hold_expiries.values().collect();
        assert_eq!(indexed_holds.len(), self.state.hold_expiries.len(), "a hold is indexed once");
        assert_eq!(indexed_holds, holds.keys().copied().collect::<HashSet<_>>(), "the expiry index = open holds");
        let retained: HashSet<&CallId> = self.state.call_retention.values().collect();
        assert_eq!(retained.len(), self.state.call_retention.len(), "a call is retained once");
        assert_eq!(retained, self.state.calls.keys().collect::<HashSet<_>>(), "the retention index = calls in memory");
        assert!(authorizations.values().all(|&count| count == 1), "a call is authorized once in the log");
        assert!(settlements.values().all(|&count| count == 1), "a call is billed at most once");
        assert!(settlements.keys().all(|call_id| authorizations.contains_key(call_id)), "no usage without its call");
        for org_id in &self.orgs {
            let org = self.state.org(org_id).unwrap();
            let credit = credits.get(org_id).copied().unwrap_or(0);
            let debit = debits.get(org_id).copied().unwrap_or(0);
            let open: i64 = holds.values().filter(|(org, _)| *org == org_id).map(|(_, hold)| hold).sum();
            assert_eq!(org.credits.micros(), credit);
            assert_eq!(org.debits.micros(), debit);
            assert_eq!(org.balance.micros(), credit - debit, "balance = credits − debits");
            assert_eq!(org.held.micros(), open, "held = open holds");
            assert!(org.held.micros() >= 0);
            assert!(
                open + debit <= credit + org.overshoot.micros(),
                "holds + debits <= credits + overshoot for {org_id}: {open} + {debit} > {credit} + {}",
                org.overshoot.micros()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn credit_invariants_hold_at_every_position(operations in proptest::collection::vec(operation(), 1..120)) {
        let mut world = World::new();
        world.check_invariants();
        for operation in &operations {
            world.apply(operation);
            world.check_invariants();
        }
        // Loading folds with `evolve_taking`, which moves the text it keeps out of each
        // event instead of copying it: the state it reaches must be the same.
        let mut taken = State::default();
        for mut event in world.events.clone() {
            evolve_taking(&mut taken, &mut event);
        }
        prop_assert_eq!(taken, world.state);
    }

    /// With holds sized to cover every call (max_cost >= cost), nothing overshoots at all:
    /// holds + debits <= credits exactly, TigerBeetle's invariant.
    #[test]
    fn covered_calls_never_overshoot(calls in proptest::collection::vec((0..3usize, 0..5_000u64, 0..5_000u64), 1..60)) {
        let mut world = World::new();
        for org in 0..3 {
            world.apply(&Operation::Grant { org, micros: 20_000_000 });
        }
        for (org, input, output) in calls {
            // 5,000 tokens each way at ₹150/₹600 per million costs at most 3.75.
            world.apply(&Operation::Authorize { org, max_cost_micros: Some(3_750_000) });
            let index = world.calls.len().saturating_sub(1);
            if world.calls.len() > index && !world.settled_requests.contains_key(&world.calls[index]) {
                world.apply(&Operation::Settle { call: index, input, output });
            }
            world.check_invariants();
            for org_id in &world.orgs {
                let org = world.state.org(org_id).unwrap();
                prop_assert_eq!(org.overshoot, Money::ZERO);
                prop_assert!(org.held.micros() + org.debits.micros() <= org.credits.micros());
                prop_assert!(!org.balance.is_negative());
            }
        }
    }
}
