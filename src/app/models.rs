//! The models bahi proxies: the operator configures each (upstream, sealed upstream key,
//! price) as one event; credentials list them in OpenAI's shape; the proxy opens the
//! upstream key of one model when it forwards a call.

use bahi_domain::billing::{DEFAULT_MAX_OUTPUT_TOKENS, Price, Provider};
use bahi_domain::credential::Scope;
use bahi_domain::{Command, Money};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use p256::elliptic_curve::zeroize::Zeroizing;
use serde::{Deserialize, Serialize};

use super::{AppError, AppResult, Operator, Principal, Services};
use crate::agent_token::{UPSTREAM_KEY_DOMAIN, seal_in_domain, unseal_in_domain};
use crate::identity::random_bytes;

/// Longest upstream API key accepted (provider keys are far shorter).
pub const MAX_UPSTREAM_API_KEY_LENGTH: usize = 1024;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigureModel {
    #[schemars(schema_with = "super::schema::provider")]
    pub provider: Provider,
    pub upstream_base_url: String,
    pub upstream_api_key: String,
    pub upstream_model: Option<String>,
    #[schemars(schema_with = "super::schema::money")]
    pub input_per_million: Money,
    #[schemars(schema_with = "super::schema::money")]
    pub output_per_million: Money,
    #[schemars(default, schema_with = "super::schema::optional_money")]
    pub default_hold: Option<Money>,
    pub max_output_tokens: Option<u64>,
}

/// A configured model as the operator sees it: never its upstream key.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ModelView {
    pub model: String,
    #[schemars(schema_with = "super::schema::provider")]
    pub provider: Provider,
    pub upstream_base_url: String,
    pub upstream_model: String,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub input_per_million: Money,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub output_per_million: Money,
    #[schemars(schema_with = "super::schema::money_answer")]
    pub default_hold: Money,
    pub max_output_tokens: u64,
    #[serde(serialize_with = "super::time::micros")]
    pub configured_at: DateTime<Utc>,
}

/// Sets a model's upstream and price in one event; the upstream key is sealed first.
pub async fn configure_model(
    services: &Services,
    operator: &Operator,
    model: String,
    request: ConfigureModel,
) -> AppResult<ModelView> {
    operator.require(Scope::PricesWrite)?;
    check_upstream(&request)?;
    let sealed = seal_in_domain(
        UPSTREAM_KEY_DOMAIN,
        request.upstream_api_key.as_bytes(),
        services.identity.key_encryption_key(),
        random_bytes(),
        &model,
    )
    .map_err(AppError::internal)?;
    let price = Price { input_per_million: request.input_per_million, output_per_million: request.output_per_million };
    let command = Command::ConfigureModel {
        model: model.clone(),
        provider: request.provider,
        upstream_base_url: request.upstream_base_url.clone(),
        sealed_upstream_api_key: URL_SAFE_NO_PAD.encode(sealed),
        upstream_model: request.upstream_model.clone(),
        price,
        default_hold: request.default_hold,
        max_output_tokens: request.max_output_tokens,
    };
    let outcome = services.submit(command, operator.actor()).await?;
    let configured_at = outcome.events.first().map(|committed| committed.recorded_at);
    let configured_at = configured_at.ok_or_else(|| AppError::internal("model configuration recorded no event"))?;
    Ok(ModelView {
        upstream_model: request.upstream_model.unwrap_or_else(|| model.clone()),
        model,
        provider: request.provider,
        upstream_base_url: request.upstream_base_url,
        input_per_million: price.input_per_million,
        output_per_million: price.output_per_million,
        default_hold: bahi_domain::command::default_hold(request.default_hold, &price)?,
        max_output_tokens: request.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
        configured_at,
    })
}

/// What the domain cannot check without I/O-free parsing of URLs: the base URL parses, and
/// the upstream key is printable text of a sane length.
fn check_upstream(request: &ConfigureModel) -> AppResult<()> {
    let url = reqwest::Url::parse(&request.upstream_base_url)
        .map_err(|error| AppError::invalid_request(format!("upstream_base_url: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.query().is_some() {
        return Err(AppError::invalid_request("upstream_base_url must be an http(s) URL with a host and no query"));
    }
    let key = &request.upstream_api_key;
    if key.is_empty() || key.len() > MAX_UPSTREAM_API_KEY_LENGTH || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(AppError::invalid_request(format!(
            "upstream_api_key must be 1 to {MAX_UPSTREAM_API_KEY_LENGTH} printable characters without spaces"
        )));
    }
    Ok(())
}

/// `GET /v1/models`, in OpenAI's shape (SDKs and tools call it).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ListedModel>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ListedModel {
    pub id: String,
    pub object: &'static str,
    /// Unix seconds, as OpenAI gives it.
    pub created: i64,
    pub owned_by: &'static str,
}

/// The models a credential may call through the proxy: every configured model, for a
/// credential with the `inference` scope.
pub fn list_models(services: &Services, principal: &Principal) -> AppResult<ModelList> {
    principal.require(Scope::Inference)?;
    let ledger = services.ledger.read();
    let mut data: Vec<ListedModel> = ledger
        .state
        .models
        .iter()
        .map(|(name, upstream)| ListedModel {
            id: name.clone(),
            object: "model",
            created: upstream.configured_at.timestamp(),
            owned_by: upstream.provider.as_str(),
        })
        .collect();
    data.sort_by(|left, right| left.id.cmp(&right.id));
    Ok(ModelList { object: "list", data })
}

/// Where one proxied call goes, with the upstream key opened for this call only.
pub struct Upstream {
    pub provider: Provider,
    pub base_url: String,
    pub api_key: Zeroizing<String>,
    pub upstream_model: Option<String>,
    pub max_output_tokens: u64,
    pub price: Price,
}

/// The upstream of `model`, or 404 `model_not_found` when bahi does not proxy it.
pub fn upstream(services: &Services, model: &str) -> AppResult<Upstream> {
    let ledger = services.ledger.read();
    let state = &ledger.state;
    let (Some(configured), Some(price)) = (state.models.get(model), state.prices.get(model)) else {
        return Err(AppError::NotFound(format!("model {model:?}")));
    };
    let sealed = URL_SAFE_NO_PAD.decode(&configured.sealed_upstream_api_key).map_err(AppError::internal)?;
    let opened = unseal_in_domain(UPSTREAM_KEY_DOMAIN, &sealed, services.identity.key_encryption_key(), model)
        .map_err(AppError::internal)?;
    let api_key = String::from_utf8(opened.to_vec()).map_err(AppError::internal)?;
    Ok(Upstream {
        provider: configured.provider,
        base_url: configured.upstream_base_url.clone(),
        api_key: Zeroizing::new(api_key),
        upstream_model: configured.upstream_model.clone(),
        max_output_tokens: configured.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
        price: *price,
    })
}
