//! Model prices, the default hold of an authorization without `max_cost`, and the models
//! bahi proxies (a price with an upstream).

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(_state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::SetPrice { model, price, default_hold } => decide_set_price(model, price, default_hold, now),
        Command::ConfigureModel { .. } => decide_configure_model(command, now),
        other => unreachable!("price::decide was given {}", other.name()),
    }
}

/// Longest upstream base URL and sealed upstream key accepted.
pub const MAX_UPSTREAM_URL_LENGTH: usize = 2048;
pub const MAX_SEALED_UPSTREAM_KEY_LENGTH: usize = 4096;

fn decide_configure_model(command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    let Command::ConfigureModel {
        model,
        provider,
        upstream_base_url,
        sealed_upstream_api_key,
        upstream_model,
        price,
        default_hold,
        max_output_tokens,
    } = command
    else {
        unreachable!("decide_configure_model was given {}", command.name())
    };
    check_price(model, price, default_hold)?;
    let scheme_ok = upstream_base_url.starts_with("https://") || upstream_base_url.starts_with("http://");
    if !scheme_ok || upstream_base_url.len() > MAX_UPSTREAM_URL_LENGTH || upstream_base_url.ends_with('/') {
        return Err(DomainError::invalid(format!(
            "upstream_base_url must be an http(s) URL of at most {MAX_UPSTREAM_URL_LENGTH} characters, without a trailing /"
        )));
    }
    if sealed_upstream_api_key.is_empty() || sealed_upstream_api_key.len() > MAX_SEALED_UPSTREAM_KEY_LENGTH {
        return Err(DomainError::invalid("the sealed upstream key is empty or too long"));
    }
    if let Some(name) = upstream_model {
        check_model_name(name)
            .map_err(|_| DomainError::invalid("upstream_model has the same rules as a model name"))?;
    }
    if max_output_tokens.is_some_and(|tokens| tokens == 0 || tokens > MAX_TOKENS_PER_CALL) {
        return Err(DomainError::invalid(format!("max_output_tokens must be 1 to {MAX_TOKENS_PER_CALL}")));
    }
    Ok(vec![
        ModelConfigured {
            model: model.to_owned(),
            provider: *provider,
            upstream_base_url: upstream_base_url.to_owned(),
            sealed_upstream_api_key: sealed_upstream_api_key.to_owned(),
            upstream_model: upstream_model.clone(),
            price: *price,
            default_hold: *default_hold,
            max_output_tokens: *max_output_tokens,
            configured_at: now,
        }
        .into(),
    ])
}

/// A model's name, its price within bounds, and a positive default hold if one is set.
fn check_price(model: &str, price: &Price, default_hold: &Option<Money>) -> Result<(), DomainError> {
    check_model_name(model)?;
    for amount in [price.input_per_million, price.output_per_million] {
        if amount.is_negative() || amount.micros() > MAX_PRICE_PER_MILLION_MICROS {
            return Err(DomainError::invalid("prices must be between 0 and 10000000 rupees per million tokens"));
        }
    }
    if let Some(hold) = default_hold {
        check_amount(*hold, "default_hold")?;
    }
    Ok(())
}

fn decide_set_price(
    model: &str,
    price: &Price,
    default_hold: &Option<Money>,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    check_price(model, price, default_hold)?;
    Ok(vec![PriceSet { model: model.to_owned(), price: *price, default_hold: *default_hold, set_at: now }.into()])
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::PriceSet(set) => {
            state.prices.insert(set.model.to_owned(), set.price);
            // Each price set replaces the whole price, its default hold included.
            match set.default_hold {
                Some(hold) => state.default_holds.insert(set.model.to_owned(), hold),
                None => state.default_holds.remove(&set.model),
            };
        }
        Event::ModelConfigured(configured) => {
            state.prices.insert(configured.model.to_owned(), configured.price);
            match configured.default_hold {
                Some(hold) => state.default_holds.insert(configured.model.to_owned(), hold),
                None => state.default_holds.remove(&configured.model),
            };
            state.models.insert(
                configured.model.to_owned(),
                ModelUpstream {
                    provider: configured.provider,
                    upstream_base_url: configured.upstream_base_url.clone(),
                    sealed_upstream_api_key: configured.sealed_upstream_api_key.clone(),
                    upstream_model: configured.upstream_model.clone(),
                    max_output_tokens: configured.max_output_tokens,
                    configured_at: configured.configured_at,
                },
            );
        }
        other => unreachable!("price::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn configure(base_url: &str) -> Command {
        Command::ConfigureModel {
            model: "gpt-4o".into(),
            provider: Provider::OpenAi,
            upstream_base_url: base_url.into(),
            sealed_upstream_api_key: "c2VhbGVk".into(),
            upstream_model: Some("gpt-4o-2024-08-06".into()),
            price: Price { input_per_million: money("250"), output_per_million: money("1000") },
            default_hold: None,
            max_output_tokens: Some(8192),
        }
    }

    #[test]
    fn configuring_a_model_sets_its_price_and_its_upstream() {
        let mut past = given(&[]);
        assert_eq!(types(&past.run(&configure("https://api.openai.com/v1"))), ["ModelConfigured"]);
        assert_eq!(past.state.prices["gpt-4o"].output_per_million, money("1000"));
        assert_eq!(past.state.models["gpt-4o"].upstream_model.as_deref(), Some("gpt-4o-2024-08-06"));
        // A later price set changes the price and keeps the upstream.
        let mut repriced = price("1", "2");
        if let Command::SetPrice { model, .. } = &mut repriced {
            *model = "gpt-4o".into();
        }
        past.run(&repriced);
        assert_eq!(past.state.prices["gpt-4o"].output_per_million, money("2"));
        assert_eq!(past.state.models["gpt-4o"].provider, Provider::OpenAi);
    }

    #[test]
    fn a_model_upstream_must_be_an_http_url_and_its_limits_bounded() {
        for url in ["ftp://x", "api.openai.com", "https://x/", ""] {
            assert!(matches!(given(&[]).when(&configure(url)), Err(DomainError::Invalid(_))), "{url}");
        }
        let mut unbounded = configure("https://x");
        if let Command::ConfigureModel { max_output_tokens, .. } = &mut unbounded {
            *max_output_tokens = Some(0);
        }
        assert!(matches!(given(&[]).when(&unbounded), Err(DomainError::Invalid(_))));
    }

    #[test]
    fn a_price_is_set_within_bounds_with_an_optional_default_hold() {
        assert_eq!(types(&given(&[]).when(&price("1.5", "2")).unwrap()), ["PriceSet"]);
        let negative = given(&[]).when(&price("-1", "2"));
        assert!(matches!(negative, Err(DomainError::Invalid(_))), "{negative:?}");
        let mut held = price("1", "1");
        if let Command::SetPrice { default_hold, .. } = &mut held {
            *default_hold = Some(money("0.25"));
        }
        assert_eq!(types(&given(&[]).when(&held).unwrap()), ["PriceSet"]);
        let mut bad_name = price("1", "1");
        if let Command::SetPrice { model, .. } = &mut bad_name {
            *model = "bad\nname".into();
        }
        assert!(given(&[]).when(&bad_name).is_err());
    }
}
