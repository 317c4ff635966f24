//! The gateway-facing core: authorize a call (placing a hold), record its usage (settling
//! it at the price in force when it was authorized), set prices, add credit, and the
//! operator's gateway keys.

use bahi_domain::billing::{Price, UsageStatus};
use bahi_domain::credential::{NewApiKey, Role, Scope};
use bahi_domain::event::{CallAttribution, Event};
use bahi_domain::ids::{ApiKeyId, CallId, OrgId, TopupId};
use bahi_domain::{Command, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AppError, AppResult, Operator, Principal, Services};
use crate::identity::{new_id_bytes, random_bytes};
use crate::ledger::Idempotency;
use crate::writer::Outcome;

/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LENGTH: usize = 255;

/// A client's idempotency key for `request`, scoped to `caller` so two callers never collide.
pub fn idempotency(key: Option<&str>, caller: &str, request: &impl Serialize) -> AppResult<Option<Idempotency>> {
    let Some(key) = key else { return Ok(None) };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LENGTH {
        return Err(AppError::invalid_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )));
    }
    let body = serde_json::to_string(request).map_err(AppError::internal)?;
    Ok(Some(Idempotency { key: format!("{caller}:{key}"), request_hash: Sha256::digest(body.as_bytes()).into() }))
}

/// The first event the writer recorded for a command, which the command must have recorded.
fn first_event<'a>(outcome: &'a Outcome, what: &str) -> AppResult<&'a Event> {
    outcome
        .events
        .first()
        .map(|committed| &committed.event)
        .ok_or_else(|| AppError::internal(format!("{what} recorded no event")))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorize {
    #[schemars(regex(pattern = "^[A-Za-z0-9._:/@-]{1,128}$"))]
    pub model: String,
    #[schemars(default, schema_with = "super::schema::optional_money")]
    pub max_cost: Option<Money>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Authorized {
    #[schemars(schema_with = "super::schema::id")]
    pub call_id: CallId,
    #[schemars(schema_with = "super::schema::id")]
    pub org_id: OrgId,
    pub agent_id: Option<String>,
    pub act_for: String,
    pub credential_id: String,
    pub credential_kind: &'static str,
    #[schemars(schema_with = "super::schema::scopes")]
    pub scopes: Vec<bahi_domain::credential::Scope>,
    pub model: String,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub hold: Money,
    #[serde(serialize_with = "super::time::micros")]
    pub hold_expires_at: DateTime<Utc>,
}

/// Every authorization holds credit through the writer, `max_cost` or the model's default
/// hold: concurrent calls can never commit more than the org has.
pub async fn authorize(services: &Services, principal: &Principal, request: Authorize) -> AppResult<Authorized> {
    principal.require(Scope::Inference)?;
    bahi_domain::command::check_model_name(&request.model)?;
    let (call_id, authorized) = place_hold(services, principal, &request.model, request.max_cost).await?;
    Ok(Authorized {
        call_id,
        org_id: principal.org_id.clone(),
        agent_id: principal.agent.as_ref().map(|agent| agent.id.clone()),
        act_for: principal.act_for.clone(),
        credential_id: principal.credential_id.clone(),
        credential_kind: principal.credential_kind.as_str(),
        scopes: principal.scopes.clone(),
        model: request.model,
        hold: authorized.hold,
        hold_expires_at: authorized.hold_expires_at,
    })
}

/// A new call of `principal`'s, attributed to it, with its hold placed through the writer:
/// the one authorization of `POST /v1/authorize`, forward-auth and the proxy.
pub(super) async fn place_hold(
    services: &Services,
    principal: &Principal,
    model: &str,
    max_cost: Option<Money>,
) -> AppResult<(CallId, bahi_domain::event::CallAuthorized)> {
    let attribution = CallAttribution {
        credential_kind: principal.credential_kind.as_str().to_owned(),
        credential_id: principal.credential_id.clone(),
        agent_id: principal.agent.as_ref().map(|agent| agent.id.clone()),
        agent_name: principal.agent.as_ref().and_then(|agent| agent.name.clone()),
        act_for: principal.act_for.clone(),
    };
    let call_id = CallId::from_random(new_id_bytes());
    let command = Command::Authorize {
        call_id: call_id.clone(),
        org_id: principal.org_id.clone(),
        attribution,
        model: model.to_owned(),
        max_cost,
        hold_ttl_seconds: i64::try_from(services.config.hold_ttl_seconds)
            .map_err(|_| AppError::internal("the hold TTL does not fit in seconds"))?,
    };
    let outcome = services.submit(command, principal.actor()).await?;
    let Event::CallAuthorized(authorized) = first_event(&outcome, "authorization")? else {
        return Err(AppError::internal("authorization recorded another event"));
    };
    Ok((call_id, authorized.clone()))
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordUsage {
    #[schemars(regex(pattern = "^call_[0-9A-Za-z]{1,64}$"))]
    pub call_id: String,
    #[schemars(regex(pattern = "^[A-Za-z0-9._:/@-]{1,128}$"))]
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[schemars(schema_with = "super::schema::usage_status")]
    pub status: UsageStatus,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Settled {
    #[schemars(schema_with = "super::schema::id")]
    pub call_id: CallId,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub cost: Money,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub balance: Money,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(serialize_with = "super::time::micros")]
    pub settled_at: DateTime<Utc>,
}

pub async fn record_usage(services: &Services, operator: &Operator, request: RecordUsage) -> AppResult<Settled> {
    operator.require(Scope::UsageWrite)?;
    let call_id = CallId::parse(&request.call_id)?;
    let body = serde_json::to_string(&request).map_err(AppError::internal)?;
    let command = Command::RecordUsage {
        call_id: call_id.clone(),
        model: request.model,
        input_tokens: request.input_tokens,
        output_tokens: request.output_tokens,
        status: request.status,
        request_hash: hex::encode(Sha256::digest(body.as_bytes())),
        usage_source: None,
    };
    let outcome = services.submit(command, operator.actor()).await?;
    if let Some(Event::UsageRecorded(recorded)) = outcome.events.first().map(|committed| &committed.event) {
        return Ok(Settled {
            call_id,
            cost: recorded.cost,
            balance: recorded.balance_after,
            input_tokens: recorded.input_tokens,
            output_tokens: recorded.output_tokens,
            settled_at: recorded.settled_at,
        });
    }
    // A replay records nothing: the same body gets the answer of the settlement as recorded,
    // byte for byte.
    let ledger = services.ledger.read();
    let settlement = ledger
        .state
        .calls
        .get(&call_id)
        .and_then(|call| call.settlement.clone())
        .ok_or_else(|| AppError::internal("a replayed settlement is not in the read model"))?;
    Ok(Settled {
        call_id,
        cost: settlement.cost,
        balance: settlement.balance_after,
        input_tokens: settlement.input_tokens,
        output_tokens: settlement.output_tokens,
        settled_at: settlement.settled_at,
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrice {
    #[schemars(schema_with = "super::schema::money")]
    pub input_per_million: Money,
    #[schemars(schema_with = "super::schema::money")]
    pub output_per_million: Money,
    #[schemars(default, schema_with = "super::schema::optional_money")]
    pub default_hold: Option<Money>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PriceView {
    pub model: String,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub input_per_million: Money,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub output_per_million: Money,
    /// What an authorization without `max_cost` holds: the operator's, or the default.
    #[schemars(schema_with = "super::schema::money_answer")]
    pub default_hold: Money,
    #[serde(serialize_with = "super::time::micros")]
    pub set_at: DateTime<Utc>,
}

pub async fn set_price(
    services: &Services,
    operator: &Operator,
    model: String,
    request: SetPrice,
) -> AppResult<PriceView> {
    operator.require(Scope::PricesWrite)?;
    let price = Price { input_per_million: request.input_per_million, output_per_million: request.output_per_million };
    let command = Command::SetPrice { model: model.clone(), price, default_hold: request.default_hold };
    let outcome = services.submit(command, operator.actor()).await?;
    let set_at = outcome.events.first().map(|committed| committed.recorded_at);
    let set_at = set_at.ok_or_else(|| AppError::internal("price set recorded no event"))?;
    let default_hold = bahi_domain::command::default_hold(request.default_hold, &price)?;
    Ok(PriceView {
        model,
        input_per_million: price.input_per_million,
        output_per_million: price.output_per_million,
        default_hold,
        set_at,
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[schemars(schema_with = "super::schema::money")]
    pub amount: Money,
    pub payment_reference: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ToppedUp {
    #[schemars(schema_with = "super::schema::id")]
    pub topup_id: TopupId,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub amount: Money,
    pub payment_reference: String,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub balance: Money,
}

/// Money in: a human with the owner or finance role, never a key or an agent.
pub async fn top_up(services: &Services, principal: &Principal, request: TopUp) -> AppResult<ToppedUp> {
    let (user_id, _) = principal.require_human(&[Role::Owner, Role::Finance])?;
    let command = Command::TopUp {
        org_id: principal.org_id.clone(),
        topup_id: TopupId::from_random(new_id_bytes()),
        amount: request.amount,
        payment_reference: request.payment_reference.clone(),
        user_id,
    };
    let outcome = services.submit(command, principal.actor()).await?;
    if let Some(Event::CreditsToppedUp(topped_up)) = outcome.events.first().map(|committed| &committed.event) {
        return Ok(ToppedUp {
            topup_id: topped_up.topup_id.clone(),
            amount: topped_up.amount,
            payment_reference: topped_up.payment_reference.clone(),
            balance: topped_up.balance_after,
        });
    }
    // The same payment again records nothing: answer with the top-up recorded for it.
    let ledger = services.ledger.read();
    let record = ledger
        .state
        .topups
        .get(&(principal.org_id.clone(), request.payment_reference.clone()))
        .ok_or_else(|| AppError::internal("a replayed top-up is not in the read model"))?;
    Ok(ToppedUp {
        topup_id: record.topup_id.clone(),
        amount: record.amount,
        payment_reference: request.payment_reference,
        balance: record.balance_after,
    })
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub org_id: String,
    #[schemars(schema_with = "super::schema::money")]
    pub amount: Money,
    pub reason: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Granted {
    #[schemars(schema_with = "super::schema::id")]
    pub grant_id: TopupId,
    #[schemars(schema_with = "super::schema::id")]
    pub org_id: OrgId,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub amount: Money,
    pub reason: String,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub balance: Money,
}

/// The operator grants credit; `idempotency_key` makes a retry answer the first grant.
pub async fn grant(
    services: &Services,
    operator: &Operator,
    idempotency_key: Option<&str>,
    request: Grant,
) -> AppResult<Granted> {
    operator.require(Scope::CreditsGrant)?;
    let idempotency = idempotency(idempotency_key, "operator", &request)?;
    let org_id = OrgId::parse(&request.org_id)?;
    let command = Command::Grant {
        org_id: org_id.clone(),
        grant_id: TopupId::from_random(new_id_bytes()),
        amount: request.amount,
        reason: request.reason,
    };
    let outcome = services.submit_idempotent(command, operator.actor(), idempotency).await?;
    let Event::CreditsGranted(granted) = first_event(&outcome, "grant")? else {
        return Err(AppError::internal("grant recorded another event"));
    };
    Ok(Granted {
        grant_id: granted.grant_id.clone(),
        org_id,
        amount: granted.amount,
        reason: granted.reason.clone(),
        balance: granted.balance_after,
    })
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGatewayKey {
    pub name: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CreatedGatewayKey {
    pub api_key: String,
    #[schemars(schema_with = "super::schema::id")]
    pub api_key_id: ApiKeyId,
    pub name: Option<String>,
    pub prefix: String,
    #[schemars(schema_with = "super::schema::scopes")]
    pub scopes: Vec<Scope>,
}

pub async fn create_gateway_key(
    services: &Services,
    operator: &Operator,
    request: CreateGatewayKey,
) -> AppResult<CreatedGatewayKey> {
    operator.require_operator("creating gateway keys")?;
    let key_id = ApiKeyId::from_random(new_id_bytes());
    let new_key = NewApiKey::generate(&services.config.key_prefix, services.config.environment, random_bytes());
    let command = Command::CreateGatewayKey {
        key_id: key_id.clone(),
        name: request.name.clone(),
        hash: new_key.hash,
        display_prefix: new_key.display_prefix.clone(),
    };
    services.submit(command, operator.actor()).await?;
    Ok(CreatedGatewayKey {
        api_key: new_key.secret,
        api_key_id: key_id,
        name: request.name,
        prefix: new_key.display_prefix,
        scopes: vec![Scope::UsageWrite],
    })
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct GatewayKeyRevoked {
    #[schemars(schema_with = "super::schema::id")]
    pub api_key_id: ApiKeyId,
    pub status: &'static str,
}

pub async fn revoke_gateway_key(services: &Services, operator: &Operator, id: &str) -> AppResult<GatewayKeyRevoked> {
    operator.require_operator("revoking gateway keys")?;
    let key_id = ApiKeyId::parse(id)?;
    services.submit(Command::RevokeGatewayKey { key_id: key_id.clone() }, operator.actor()).await?;
    Ok(GatewayKeyRevoked { api_key_id: key_id, status: "revoked" })
}
