//! The state every decision is made against: a pure fold of the log (`evolve`).
//!
//! The writer holds one copy that includes the batch being decided; each node holds
//! another, of committed events only, that the hot path reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The maps of the fold. foldhash instead of std's SipHash: SipHash was about a sixth of
/// the writer's CPU in `evolve` and the ledger's maps (perf, bench append). It is still
/// seeded at random per map, and nothing here depends on iteration order.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use chrono::{DateTime, Utc};

use crate::billing::{Price, Provider, period_key};
use crate::claims::AgentMode;
use crate::credential::{Environment, Role, Scope, SecretHash};
use crate::event::{Budget, CallAuthorized, Event, RateLimit, UsageRecorded};
use crate::event::{BudgetPeriod, CallAttribution};
use crate::ids::{AgentId, ApiKeyId, CallId, IssuerId, OrgId, TokenId, TopupId, UserId};
use crate::money::Money;

#[derive(Debug, Clone, PartialEq)]
pub struct Org {
    pub id: OrgId,
    pub display_name: String,
    pub plan: String,
    pub environment: Environment,
    pub registered_at: DateTime<Utc>,
    /// Credits minus debits, folded from the log.
    pub balance: Money,
    pub credits: Money,
    pub debits: Money,
    /// Credit held by authorized, unsettled calls.
    pub held: Money,
    /// How far settled costs exceeded their holds, summed: the only way `held + debits`
    /// may exceed `credits` (a served call is never free).
    pub overshoot: Money,
    pub api_keys: Vec<ApiKeyId>,
    pub members: Vec<UserId>,
    pub agents: Vec<AgentId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: AgentId,
    pub org_id: OrgId,
    pub name: String,
    pub mode: AgentMode,
    pub act_for: String,
    pub scopes: Vec<Scope>,
    pub budget: Option<Budget>,
    pub rate_limit: Option<RateLimit>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub usage_calls: u64,
    pub usage_cost: Money,
}

/// A minted token, kept until it has expired (plus leeway) so that it can be revoked by id.
#[derive(Debug, Clone, PartialEq)]
pub struct MintedToken {
    pub agent_id: AgentId,
    pub org_id: OrgId,
    pub expires_at: DateTime<Utc>,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyRecord {
    pub key_id: String,
    pub public_jwk: serde_json::Value,
    pub sealed_private_key: String,
    pub added_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    pub verify_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IssuerRecord {
    pub id: IssuerId,
    pub org_id: OrgId,
    pub issuer: String,
    pub jwks: Option<serde_json::Value>,
    pub jwks_uri: Option<String>,
    pub audience: Option<String>,
    pub owner_claim: String,
    pub owners: BTreeMap<String, OrgId>,
    pub registered_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub status: String,
    pub cost: Money,
    pub hold_released: Money,
    pub request_hash: String,
    pub balance_after: Money,
    pub settled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: CallId,
    pub org_id: OrgId,
    pub attribution: CallAttribution,
    pub model: String,
    pub price: Price,
    pub hold: Money,
    pub hold_open: bool,
    pub authorized_at: DateTime<Utc>,
    pub hold_expires_at: DateTime<Utc>,
    pub settlement: Option<Settlement>,
    /// The order in which the fold met the call (`State::calls_folded` then), which ranks
    /// it among calls with the same timestamp in the expiry and retention indexes.
    pub serial: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopupRecord {
    pub topup_id: TopupId,
    pub amount: Money,
    pub balance_after: Money,
}

/// Spend and holds of one budget subject (an API key or an agent), per period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetUsage {
    /// `period_key` of the day `day_spent` belongs to (0 before the first spend).
    pub day_key: i64,
    pub day_spent: Money,
    /// `period_key` of the month `month_spent` belongs to (0 before the first spend).
    pub month_key: i64,
    pub month_spent: Money,
    pub total_spent: Money,
    pub held: Money,
}

impl BudgetUsage {
    /// What was spent in the period containing `now` (zero once the period rolled over).
    pub fn spent_in(&self, period: BudgetPeriod, now: DateTime<Utc>) -> Money {
        match period {
            BudgetPeriod::Day if self.day_key == period_key(period, now) => self.day_spent,
            BudgetPeriod::Month if self.month_key == period_key(period, now) => self.month_spent,
            BudgetPeriod::Total => self.total_spent,
            _ => Money::ZERO,
        }
    }

    fn add_spend(&mut self, cost: Money, at: DateTime<Utc>) {
        for (period, key, spent) in [
            (BudgetPeriod::Day, &mut self.day_key, &mut self.day_spent),
            (BudgetPeriod::Month, &mut self.month_key, &mut self.month_spent),
        ] {
            let current = period_key(period, at);
            if *key != current {
                *key = current;
                *spent = Money::ZERO;
            }
            *spent = fold_sum(*spent, cost);
        }
        self.total_spent = fold_sum(self.total_spent, cost);
    }
}

/// A sum in the fold. `decide` refuses every command whose events would overflow one of the
/// fold's sums (amounts and balances are bounded, usage checks the lifetime totals it adds
/// to, a hold is at most the available credit), so an overflow here comes from an event
/// this code's writer never records: stop rather than fold a wrong amount.
pub(crate) fn fold_sum(total: Money, amount: Money) -> Money {
    total.checked_add(amount).expect("a sum in the fold overflowed, which decide refuses")
}

/// A difference in the fold; see `fold_sum`.
pub(crate) fn fold_difference(total: Money, amount: Money) -> Money {
    total.checked_sub(amount).expect("a difference in the fold overflowed, which decide refuses")
}

/// What a settled call cost beyond the hold it released (zero when the hold covered it).
/// Both are bounded (a call's cost, a single amount), so the difference cannot overflow.
pub fn overshoot_of(cost: Money, hold_released: Money) -> Money {
    fold_difference(cost, hold_released).max(Money::ZERO)
}

/// Whose budget a call counts against: its agent (bahi agents only) or its API key.
pub fn budget_subject(attribution: &CallAttribution) -> Option<&str> {
    match &attribution.agent_id {
        Some(agent) if agent.starts_with(AgentId::PREFIX) => Some(agent),
        Some(_) => None,
        None if attribution.credential_kind == "api_key" => Some(&attribution.credential_id),
        None => None,
    }
}

/// Applies `change` to the budget usage of `subject`, adding it on first use. The subject's
/// text is copied only then: every call's events reach here, and an `entry` needed an owned
/// key each time.
pub(crate) fn change_budget_usage(
    budget_usage: &mut FastMap<String, BudgetUsage>,
    subject: &str,
    change: impl FnOnce(&mut BudgetUsage),
) {
    if let Some(usage) = budget_usage.get_mut(subject) {
        change(usage);
        return;
    }
    let mut usage = BudgetUsage::default();
    change(&mut usage);
    budget_usage.insert(subject.to_owned(), usage);
}

/// The key of the two time-ordered indexes, hold expiries and call retention: a time and a
/// call's serial packed into one integer whose order is theirs (time first, then serial).
///
/// Calls arrive in time order, so every insert lands at the right end of the tree and is
/// compared with every key of each node on its way down; comparing a `(DateTime, u64)`
/// field by field made those inserts most of the fold's time in a count of loading a
/// gateway's log (callgrind: about 880 instructions an insert).
///
/// Layout, high bits first: seconds since the Unix epoch offset by 2^43 (44 bits: chrono's
/// whole range of years), the nanoseconds of the second (31 bits: chrono gives a leap second
/// up to 1,999,999,999), the serial (53 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeKey(u128);

const TIME_KEY_SERIAL_BITS: u32 = 53;
const TIME_KEY_NANOSECOND_BITS: u32 = 31;
const TIME_KEY_SECONDS_OFFSET: i64 = 1 << 43;

impl TimeKey {
    /// The largest serial a key can carry: 2^53 - 1 calls, centuries at a million a second.
    /// A larger one is kept at this (the order of such calls would then fall to the map).
    pub const MAX_SERIAL: u64 = (1 << TIME_KEY_SERIAL_BITS) - 1;

    pub fn new(time: DateTime<Utc>, serial: u64) -> TimeKey {
        // chrono's times lie within +-2^43 seconds of the epoch, so the shifted seconds are
        // positive and below 2^44; the clamp only keeps the arithmetic total.
        let seconds = (time.timestamp() + TIME_KEY_SECONDS_OFFSET).clamp(0, (1 << 44) - 1) as u128;
        let nanoseconds = u128::from(time.timestamp_subsec_nanos());
        let serial = u128::from(serial.min(TimeKey::MAX_SERIAL));
        TimeKey(
            (seconds << (TIME_KEY_NANOSECOND_BITS + TIME_KEY_SERIAL_BITS))
                | (nanoseconds << TIME_KEY_SERIAL_BITS)
                | serial,
        )
    }

    /// The largest key at `time`: every key at `time` or before it is at most this one.
    pub fn last_at(time: DateTime<Utc>) -> TimeKey {
        TimeKey::new(time, TimeKey::MAX_SERIAL)
    }

    pub fn time(self) -> DateTime<Utc> {
        let seconds = (self.0 >> (TIME_KEY_NANOSECOND_BITS + TIME_KEY_SERIAL_BITS)) as i64 - TIME_KEY_SECONDS_OFFSET;
        let nanoseconds = ((self.0 >> TIME_KEY_SERIAL_BITS) & ((1 << TIME_KEY_NANOSECOND_BITS) - 1)) as u32;
        DateTime::from_timestamp(seconds, nanoseconds)
            .unwrap_or_else(|| panic!("a time key holds a time chrono made ({seconds} s, {nanoseconds} ns)"))
    }

    pub fn serial(self) -> u64 {
        (self.0 & u128::from(TimeKey::MAX_SERIAL)) as u64
    }
}

/// Releases the hold of `call`, if still open, from the indexes and totals that count it.
/// Takes the fields it changes rather than the state, so that a caller holding the call
/// from `State::calls` need not look it up again.
pub(crate) fn release_open_hold(
    call: &mut Call,
    amount: Money,
    hold_expiries: &mut BTreeMap<TimeKey, CallId>,
    orgs: &mut FastMap<OrgId, Box<Org>>,
    budget_usage: &mut FastMap<String, BudgetUsage>,
) {
    if !call.hold_open {
        return;
    }
    call.hold_open = false;
    hold_expiries.remove(&Call::expiry_key(call.hold_expires_at, call.serial));
    if let Some(org) = orgs.get_mut(&call.org_id) {
        org.held = fold_difference(org.held, amount);
    }
    if let Some(subject) = budget_subject(&call.attribution) {
        change_budget_usage(budget_usage, subject, |usage| usage.held = fold_difference(usage.held, amount));
    }
}

/// `time` moved by `seconds`, held at the ends of chrono's calendar rather than panicking:
/// `evolve` is total, and an event whose time lies there (a log edited by hand; bahi's clock
/// never writes one) must fold like any other, as `TimeKey::new` clamps too.
pub fn shifted(time: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    time.checked_add_signed(chrono::Duration::seconds(seconds)).unwrap_or(if seconds < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

impl Call {
    // The two keys a call is filed under from its authorization on, each computed in one
    // place so that what releases or settles the call removes exactly what was inserted.

    /// The call's key in `State::hold_expiries` while its hold is open.
    pub(crate) fn expiry_key(hold_expires_at: DateTime<Utc>, serial: u64) -> TimeKey {
        TimeKey::new(hold_expires_at, serial)
    }

    /// The call's key in `State::call_retention` until it is settled.
    pub(crate) fn unsettled_retention_key(authorized_at: DateTime<Utc>, serial: u64) -> TimeKey {
        TimeKey::new(shifted(authorized_at, UNSETTLED_CALL_RETENTION_SECONDS), serial)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayKey {
    pub id: ApiKeyId,
    pub name: Option<String>,
    pub display_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A minted token is forgotten this long after it expired (beyond any verifier leeway).
pub const TOKEN_FORGET_AFTER_SECONDS: i64 = 300;
/// A settled call stays in memory this long, so a usage replay within it gets the recorded
/// answer (afterwards the call is in the SQL read models and the log only; a replay is 404).
pub const SETTLED_CALL_RETENTION_SECONDS: i64 = 86_400;
/// An unsettled call stays this long waiting for late usage.
pub const UNSETTLED_CALL_RETENTION_SECONDS: i64 = 7 * 86_400;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: Option<String>,
    pub hash: SecretHash,
    pub display_prefix: String,
    pub environment: Environment,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    pub metadata: Option<serde_json::Value>,
    /// The last use recorded in the log (at most once a minute; the node keeps the exact one).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Deleted keys are revoked and hidden from listings.
    pub deleted: bool,
    /// The agent the key speaks for (`ApiKeyBoundToAgent`), if any.
    pub agent_id: Option<AgentId>,
    /// Settled calls made with this key and what they cost (folded from usage events).
    pub usage_calls: u64,
    pub usage_cost: Money,
}

/// Where a proxied model's calls go (`ModelConfigured`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUpstream {
    pub provider: Provider,
    pub upstream_base_url: String,
    pub sealed_upstream_api_key: String,
    pub upstream_model: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub configured_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    /// Incremented by logout-everywhere; a session is valid only in the epoch it began in.
    pub session_epoch: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub epoch: u64,
    pub ended: bool,
}

impl ApiKey {
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|expires_at| expires_at <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Large values are boxed: a rehash then moves pointers, not 200-350 byte structs
    /// (orgs, keys and calls grow with use; ARCHITECTURE.md, "In-memory state").
    pub orgs: FastMap<OrgId, Box<Org>>,
    pub api_keys: FastMap<ApiKeyId, Box<ApiKey>>,
    pub api_keys_by_hash: FastMap<SecretHash, ApiKeyId>,
    pub users: FastMap<UserId, User>,
    pub users_by_email: FastMap<String, UserId>,
    pub sessions: FastMap<SecretHash, Session>,
    pub agents: FastMap<AgentId, Agent>,
    pub tokens: FastMap<TokenId, MintedToken>,
    /// Token expiries in order, so that expired tokens are forgotten as time passes.
    pub token_expiries: BTreeSet<(DateTime<Utc>, TokenId)>,
    /// In the order added; the last one not retired signs.
    pub signing_keys: Vec<SigningKeyRecord>,
    pub issuers: FastMap<IssuerId, IssuerRecord>,
    pub prices: FastMap<String, Price>,
    /// The operator's default hold per model, where one was set with its price.
    pub default_holds: FastMap<String, Money>,
    /// The models bahi proxies, by bahi's model name.
    pub models: FastMap<String, ModelUpstream>,
    pub calls: FastMap<CallId, Box<Call>>,
    /// Calls folded so far: the next call's `serial`.
    pub calls_folded: u64,
    /// Open holds by expiry, so expired ones are found without a scan. Keyed by the call's
    /// serial, not its id: the calls of one writer batch share a timestamp, and comparing
    /// ids there followed a pointer to each id's text (a fifth of the fold's time in a
    /// profile of loading a gateway's log, with `call_retention`).
    pub hold_expiries: BTreeMap<TimeKey, CallId>,
    /// When each call leaves memory, so that memory does not grow with the number of calls.
    pub call_retention: BTreeMap<TimeKey, CallId>,
    pub topups: FastMap<(OrgId, String), TopupRecord>,
    pub budget_usage: FastMap<String, BudgetUsage>,
    pub gateway_keys: FastMap<ApiKeyId, GatewayKey>,
    pub gateway_keys_by_hash: FastMap<SecretHash, ApiKeyId>,
    /// Bumped by every signing-key and issuer event, so that a token verifier built from
    /// this state knows when to rebuild.
    pub credentials_generation: u64,
}

impl State {
    pub fn org(&self, org_id: &OrgId) -> Option<&Org> {
        self.orgs.get(org_id).map(|org| &**org)
    }

    pub fn api_key_by_hash(&self, hash: &SecretHash) -> Option<&ApiKey> {
        self.api_keys_by_hash.get(hash).and_then(|id| self.api_keys.get(id)).map(|key| &**key)
    }

    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        self.users_by_email.get(email).and_then(|id| self.users.get(id))
    }

    /// The user behind a session cookie's hash, if the session is live at `now`.
    pub fn live_session(&self, hash: &SecretHash, now: DateTime<Utc>) -> Option<(&Session, &User)> {
        let session = self.sessions.get(hash)?;
        let user = self.users.get(&session.user_id)?;
        let live = !session.ended && session.expires_at > now && session.epoch == user.session_epoch;
        live.then_some((session, user))
    }

    /// Balance minus holds: what new calls can still be authorized against.
    pub fn available(&self, org_id: &OrgId) -> Money {
        self.orgs.get(org_id).map_or(Money::ZERO, |org| fold_difference(org.balance, org.held))
    }

    pub(crate) fn credit(&mut self, org_id: &OrgId, amount: Money) {
        if let Some(org) = self.orgs.get_mut(org_id) {
            org.credits = fold_sum(org.credits, amount);
            org.balance = fold_sum(org.balance, amount);
        }
    }

    pub(crate) fn release_hold(&mut self, call_id: &CallId, amount: Money) {
        if let Some(call) = self.calls.get_mut(call_id) {
            release_open_hold(call, amount, &mut self.hold_expiries, &mut self.orgs, &mut self.budget_usage);
        }
    }

    /// The key that signs new tokens: the newest one not retired.
    pub fn current_signing_key(&self) -> Option<&SigningKeyRecord> {
        self.signing_keys.iter().rev().find(|key| key.retired_at.is_none())
    }

    pub(crate) fn forget_old_calls(&mut self, now: DateTime<Utc>) {
        let horizon = TimeKey::last_at(now);
        while let Some(entry) = self.call_retention.first_entry() {
            if *entry.key() > horizon {
                break;
            }
            let call_id = entry.remove();
            if let Some(call) = self.calls.remove(&call_id) {
                // Holds expire long before a call is forgotten; this only guards the books.
                self.hold_expiries.remove(&Call::expiry_key(call.hold_expires_at, call.serial));
            }
        }
    }

    pub(crate) fn forget_expired_tokens(&mut self, now: DateTime<Utc>) {
        let horizon = shifted(now, -TOKEN_FORGET_AFTER_SECONDS);
        while let Some((expires_at, token_id)) = self.token_expiries.first().cloned() {
            if expires_at >= horizon {
                break;
            }
            self.token_expiries.pop_first();
            self.tokens.remove(&token_id);
        }
    }

    pub(crate) fn add_user(&mut self, user: User) {
        if let Some(org) = self.orgs.get_mut(&user.org_id) {
            org.members.push(user.id.clone());
        }
        self.users_by_email.insert(user.email.clone(), user.id.clone());
        self.users.insert(user.id.clone(), user);
    }
}

/// Applies one committed (or just decided) event. Total: an event that was valid when it
/// was decided is applied without further checks, because the log is the truth.
pub fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::OrgRegistered(_)
        | Event::UserSignedUp(_)
        | Event::MemberAdded(_)
        | Event::SessionStarted(_)
        | Event::SessionEnded(_)
        | Event::UserSessionsEnded(_) => crate::command::org::evolve(state, event),
        Event::ApiKeyCreated(_)
        | Event::ApiKeyRevoked(_)
        | Event::ApiKeyUsed(_)
        | Event::GatewayKeyCreated(_)
        | Event::GatewayKeyRevoked(_)
        | Event::ApiKeyBoundToAgent(_) => crate::command::key::evolve(state, event),
        Event::AgentCreated(_) | Event::AgentRevoked(_) | Event::AgentTokenMinted(_) | Event::AgentTokenRevoked(_) => {
            crate::command::agent::evolve(state, event)
        }
        Event::SigningKeyAdded(_)
        | Event::SigningKeyRetired(_)
        | Event::IssuerRegistered(_)
        | Event::IssuerRevoked(_) => crate::command::issuer::evolve(state, event),
        Event::PriceSet(_) | Event::ModelConfigured(_) => crate::command::price::evolve(state, event),
        Event::CreditsToppedUp(_) | Event::CreditsGranted(_) => crate::command::credit::evolve(state, event),
        Event::CallAuthorized(_) | Event::UsageRecorded(_) | Event::HoldExpired(_) => {
            crate::command::call::evolve(state, event)
        }
    }
}

/// `evolve` for an event the caller will only drop: the text a call's events leave in the
/// state is taken out of the event (leaving it empty there) instead of copied. Loading folds
/// a million such events; the copies, and freeing the originals, were a tenth of it.
pub fn evolve_taking(state: &mut State, event: &mut Event) {
    match event {
        Event::CallAuthorized(authorized) => {
            let attribution = std::mem::take(&mut authorized.attribution);
            let model = std::mem::take(&mut authorized.model);
            fold_call_authorized(state, authorized, attribution, model);
        }
        Event::UsageRecorded(recorded) => {
            let status = std::mem::take(&mut recorded.status);
            let request_hash = std::mem::take(&mut recorded.request_hash);
            fold_usage_recorded(state, recorded, status, request_hash);
        }
        other => evolve(state, other),
    }
}

/// Folds a call's authorization; `attribution` and `model` are the event's own, copied or
/// taken by the caller, and are read here in place of the event's.
pub(crate) fn fold_call_authorized(
    state: &mut State,
    authorized: &CallAuthorized,
    attribution: CallAttribution,
    model: String,
) {
    let serial = state.calls_folded;
    state.calls_folded += 1;
    let hold_open = authorized.hold.is_positive();
    if hold_open {
        state.hold_expiries.insert(Call::expiry_key(authorized.hold_expires_at, serial), authorized.call_id.clone());
        if let Some(org) = state.orgs.get_mut(&authorized.org_id) {
            org.held = fold_sum(org.held, authorized.hold);
        }
        if let Some(subject) = budget_subject(&attribution) {
            change_budget_usage(&mut state.budget_usage, subject, |usage| {
                usage.held = fold_sum(usage.held, authorized.hold);
            });
        }
    }
    state.forget_old_calls(authorized.authorized_at);
    state
        .call_retention
        .insert(Call::unsettled_retention_key(authorized.authorized_at, serial), authorized.call_id.clone());
    state.calls.insert(
        authorized.call_id.clone(),
        Box::new(Call {
            id: authorized.call_id.clone(),
            org_id: authorized.org_id.clone(),
            attribution,
            model,
            price: authorized.price,
            hold: authorized.hold,
            hold_open,
            authorized_at: authorized.authorized_at,
            hold_expires_at: authorized.hold_expires_at,
            settlement: None,
            serial,
        }),
    );
}

/// Folds a call's usage; `status` and `request_hash` are the event's own, copied or taken by
/// the caller.
pub(crate) fn fold_usage_recorded(state: &mut State, recorded: &UsageRecorded, status: String, request_hash: String) {
    // The call is looked up once, for its hold, its retention and its settlement.
    let mut call = state.calls.get_mut(&recorded.call_id);
    if let Some(call) = call.as_deref_mut() {
        release_open_hold(
            call,
            recorded.hold_released,
            &mut state.hold_expiries,
            &mut state.orgs,
            &mut state.budget_usage,
        );
        state.call_retention.remove(&Call::unsettled_retention_key(call.authorized_at, call.serial));
        state.call_retention.insert(
            TimeKey::new(shifted(recorded.settled_at, SETTLED_CALL_RETENTION_SECONDS), call.serial),
            recorded.call_id.clone(),
        );
    }
    if let Some(org) = state.orgs.get_mut(&recorded.org_id) {
        org.debits = fold_sum(org.debits, recorded.cost);
        org.balance = fold_difference(org.balance, recorded.cost);
        org.overshoot = fold_sum(org.overshoot, overshoot_of(recorded.cost, recorded.hold_released));
    }
    if let Some(subject) = budget_subject(&recorded.attribution) {
        change_budget_usage(&mut state.budget_usage, subject, |usage| {
            usage.add_spend(recorded.cost, recorded.settled_at);
        });
    }
    let attribution = &recorded.attribution;
    // Looked up by text: an id that does not parse is in no map either.
    if let Some(agent) = attribution.agent_id.as_deref().and_then(|id| state.agents.get_mut(id)) {
        agent.usage_calls += 1;
        agent.usage_cost = fold_sum(agent.usage_cost, recorded.cost);
    }
    if attribution.credential_kind == "api_key"
        && let Some(key) = state.api_keys.get_mut(attribution.credential_id.as_str())
    {
        key.usage_calls += 1;
        key.usage_cost = fold_sum(key.usage_cost, recorded.cost);
    }
    if let Some(call) = call {
        call.settlement = Some(Settlement {
            input_tokens: recorded.input_tokens,
            output_tokens: recorded.output_tokens,
            status,
            cost: recorded.cost,
            hold_released: recorded.hold_released,
            request_hash,
            balance_after: recorded.balance_after,
            settled_at: recorded.settled_at,
        });
    }
    // After the settlement: the call's new retention lies ahead of `settled_at`, so this
    // never forgets the call just settled.
    state.forget_old_calls(recorded.settled_at);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, NaiveTime};
    use proptest::prelude::*;

    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        // chrono's whole range of days, any nanosecond, and leap seconds (a nanosecond
        // count of a second or more, at 23:59:59).
        let first = NaiveDate::MIN.num_days_from_ce();
        let last = NaiveDate::MAX.num_days_from_ce();
        (first..=last, 0..86_400u32, 0..1_000_000_000u32, any::<bool>()).prop_map(|(day, second, nanosecond, leap)| {
            let date = NaiveDate::from_num_days_from_ce_opt(day).unwrap();
            let time = if leap {
                NaiveTime::from_hms_nano_opt(23, 59, 59, 1_000_000_000 + nanosecond).unwrap()
            } else {
                NaiveTime::from_num_seconds_from_midnight_opt(second, nanosecond).unwrap()
            };
            date.and_time(time).and_utc()
        })
    }

    fn any_serial() -> impl Strategy<Value = u64> {
        prop_oneof![0..4u64, 0..=TimeKey::MAX_SERIAL, Just(TimeKey::MAX_SERIAL)]
    }

    proptest! {
        #[test]
        fn a_time_key_orders_as_its_time_then_its_serial(
            first in (any_time(), any_serial()),
            second in (any_time(), any_serial()),
        ) {
            let (one, other) = (TimeKey::new(first.0, first.1), TimeKey::new(second.0, second.1));
            prop_assert_eq!(one.cmp(&other), first.cmp(&second));
            prop_assert_eq!((one.time(), one.serial()), first);
            prop_assert_eq!(one <= TimeKey::last_at(second.0), first.0 <= second.0);
        }

        #[test]
        fn keys_a_nanosecond_apart_keep_their_order(time in any_time(), serial in any_serial()) {
            if let Some(later) = time.checked_add_signed(chrono::Duration::nanoseconds(1)) {
                prop_assert!(TimeKey::new(time, serial) < TimeKey::new(later, 0));
            }
        }
    }

    #[test]
    fn a_serial_past_the_largest_is_kept_at_it() {
        let time = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(TimeKey::new(time, u64::MAX), TimeKey::last_at(time));
        assert_eq!(TimeKey::new(time, u64::MAX).serial(), TimeKey::MAX_SERIAL);
    }
}
