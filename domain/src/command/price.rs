//! Model prices, and the default hold of an authorization without `max_cost`.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(_state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::SetPrice { model, price, default_hold } => decide_set_price(model, price, default_hold, now),
        other => unreachable!("price::decide was given {}", other.name()),
    }
}

fn decide_set_price(
    model: &str,
    price: &Price,
    default_hold: &Option<Money>,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    check_model_name(model)?;
    for amount in [price.input_per_million, price.output_per_million] {
        if amount.is_negative() || amount.micros() > MAX_PRICE_PER_MILLION_MICROS {
            return Err(DomainError::invalid("prices must be between 0 and 10000000 rupees per million tokens"));
        }
    }
    if let Some(hold) = default_hold {
        check_amount(*hold, "default_hold")?;
    }
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
        other => unreachable!("price::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

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
