//! Given/when/then support for the aggregates' tests: a state built by running commands
//! (given), one command (when), and the events or refusal it gives (then).
#![allow(clippy::unwrap_used)]

use super::*;
use crate::credential::{KeyPrefix, NewApiKey};
use crate::evolve;

pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc)
}

pub fn money(text: &str) -> Money {
    Money::parse(text).unwrap()
}

/// A state and the time commands are decided at.
pub struct Given {
    pub state: State,
    pub at: DateTime<Utc>,
}

/// Given these commands, each decided and folded in order (each must succeed).
pub fn given(commands: &[Command]) -> Given {
    let mut given = Given { state: State::default(), at: now() };
    for command in commands {
        given.run(command);
    }
    given
}

impl Given {
    /// Decides and folds one more command of the past.
    pub fn run(&mut self, command: &Command) -> Vec<Event> {
        let events =
            decide(&self.state, command, self.at).unwrap_or_else(|error| panic!("{}: {error}", command.name()));
        for event in &events {
            evolve(&mut self.state, event);
        }
        events
    }

    /// When `command` arrives now: its events or its refusal, without folding them.
    pub fn when(&self, command: &Command) -> Result<Vec<Event>, DomainError> {
        decide(&self.state, command, self.at)
    }

    pub fn later(mut self, seconds: i64) -> Given {
        self.at += chrono::Duration::seconds(seconds);
        self
    }
}

/// The event types, in order: the "then" of most tests.
pub fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::event_type).collect()
}

pub fn org(seed: u8) -> OrgId {
    OrgId::from_random([seed; 16])
}

pub fn key_record(seed: u8) -> NewKeyRecord {
    let key = NewApiKey::generate(&KeyPrefix::parse("bahi").unwrap(), Environment::Live, [seed; 32]);
    NewKeyRecord {
        key_id: ApiKeyId::from_random([seed; 16]),
        hash: key.hash,
        display_prefix: key.display_prefix,
        environment: Environment::Live,
        name: Some("key".into()),
        scopes: Scope::ORG_DEFAULT.to_vec(),
        expires_at: None,
        rate_limit: None,
        budget: None,
        metadata: None,
    }
}

/// An org registered by an agent, with its first key (`key_record(seed)`).
pub fn register_org(seed: u8) -> Command {
    Command::RegisterOrg {
        org_id: org(seed),
        display_name: format!("org {seed}"),
        environment: Environment::Live,
        first_key: key_record(seed),
        first_agent: None,
    }
}

pub fn user(seed: u8) -> UserId {
    UserId::from_random([seed; 16])
}

pub fn session(seed: u8) -> NewSession {
    NewSession { hash: SecretHash::of(&format!("session {seed}")), expires_at: now() + chrono::Duration::days(1) }
}

/// An org made by a human's signup: its owner is `user(seed)`, logged in with `session(seed)`.
pub fn sign_up(seed: u8) -> Command {
    Command::SignUp {
        org_id: org(seed),
        org_name: format!("org {seed}"),
        environment: Environment::Live,
        user_id: user(seed),
        email: format!("owner{seed}@example.com"),
        password_hash: "argon2 hash".into(),
        session: session(seed),
    }
}

pub fn agent(seed: u8) -> AgentId {
    AgentId::from_random([seed; 16])
}

pub fn create_agent(org_seed: u8, seed: u8) -> Command {
    Command::CreateAgent {
        org_id: org(org_seed),
        agent_id: agent(seed),
        name: format!("agent {seed}"),
        mode: AgentMode::Autonomous,
        act_for: org(org_seed).to_string(),
        scopes: vec![Scope::Inference, Scope::AccountRead],
        budget: None,
        rate_limit: None,
    }
}

pub fn signing_key(name: &str) -> NewSigningKey {
    NewSigningKey {
        key_id: name.into(),
        public_jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "kid": name}),
        sealed_private_key: format!("sealed {name}"),
    }
}

pub fn price(input: &str, output: &str) -> Command {
    Command::SetPrice {
        model: "m".into(),
        price: Price { input_per_million: money(input), output_per_million: money(output) },
        default_hold: None,
    }
}

pub fn grant(org_seed: u8, amount: &str) -> Command {
    Command::Grant {
        org_id: org(org_seed),
        grant_id: TopupId::from_random([org_seed.wrapping_add(100); 16]),
        amount: money(amount),
        reason: "welcome".into(),
    }
}

pub fn call(seed: u8) -> CallId {
    CallId::from_random([seed; 16])
}

pub fn authorize(org_seed: u8, call_seed: u8, max_cost: Option<&str>) -> Command {
    Command::Authorize {
        call_id: call(call_seed),
        org_id: org(org_seed),
        attribution: CallAttribution {
            credential_kind: "api_key".into(),
            credential_id: ApiKeyId::from_random([org_seed; 16]).to_string(),
            agent_id: None,
            agent_name: None,
            act_for: org(org_seed).to_string(),
        },
        model: "m".into(),
        max_cost: max_cost.map(money),
        hold_ttl_seconds: 600,
    }
}

pub fn usage(call_seed: u8, input_tokens: u64, output_tokens: u64) -> Command {
    Command::RecordUsage {
        call_id: call(call_seed),
        model: "m".into(),
        input_tokens,
        output_tokens,
        status: UsageStatus::Succeeded,
        request_hash: format!("{input_tokens}/{output_tokens}"),
        usage_source: None,
    }
}
