//! Calls: authorization (a hold through the writer), usage (settlement at the authorized price), hold expiry.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::Authorize { call_id, org_id, attribution, model, max_cost, hold_ttl_seconds } => {
            decide_authorize(state, call_id, org_id, attribution, model, max_cost, hold_ttl_seconds, now)
        }
        Command::RecordUsage { call_id, model, input_tokens, output_tokens, status, request_hash, usage_source } => {
            let usage = (*input_tokens, *output_tokens, *usage_source);
            decide_record_usage(state, call_id, model, usage, status, request_hash, now)
        }
        Command::ExpireHolds => decide_expire_holds(state, now),
        other => unreachable!("call::decide was given {}", other.name()),
    }
}

#[allow(clippy::too_many_arguments)]
fn decide_authorize(
    state: &State,
    call_id: &CallId,
    org_id: &OrgId,
    attribution: &CallAttribution,
    model: &str,
    max_cost: &Option<Money>,
    hold_ttl_seconds: &i64,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    if state.calls.contains_key(call_id) {
        return Err(DomainError::Conflict("call id already used".into()));
    }
    let (price, hold) = check_authorization(state, org_id, attribution, model, *max_cost, now)?;
    Ok(vec![
        CallAuthorized {
            call_id: call_id.clone(),
            org_id: org_id.clone(),
            attribution: attribution.clone(),
            model: model.to_owned(),
            price,
            hold,
            authorized_at: now,
            hold_expires_at: now + chrono::Duration::seconds(*hold_ttl_seconds),
        }
        .into(),
    ])
}

#[allow(clippy::too_many_arguments)]
fn decide_record_usage(
    state: &State,
    call_id: &CallId,
    model: &str,
    (input_tokens, output_tokens, usage_source): (u64, u64, Option<UsageSource>),
    status: &UsageStatus,
    request_hash: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let (input_tokens, output_tokens) = (&input_tokens, &output_tokens);
    let call = state.calls.get(call_id).ok_or(DomainError::NotFound("call"))?;
    if let Some(settlement) = &call.settlement {
        return if settlement.request_hash == request_hash {
            Ok(Vec::new())
        } else {
            Err(DomainError::Conflict("this call's usage was already recorded with different content".into()))
        };
    }
    if model != call.model {
        return Err(DomainError::invalid(format!(
            "model {model:?} does not match the authorized call's {:?}",
            call.model
        )));
    }
    if *input_tokens > MAX_TOKENS_PER_CALL || *output_tokens > MAX_TOKENS_PER_CALL {
        return Err(DomainError::invalid(format!("token counts must be at most {MAX_TOKENS_PER_CALL}")));
    }
    let cost = call_cost(&call.price, *input_tokens, *output_tokens)?;
    let org = state.orgs.get(&call.org_id).ok_or(DomainError::NotFound("org"))?;
    let hold_released = if call.hold_open { call.hold } else { Money::ZERO };
    let balance_after = debited_balance(org, cost)?;
    check_usage_totals(state, org, &call.attribution, cost, hold_released)?;
    let recorded = UsageRecorded {
        call_id: call_id.clone(),
        org_id: call.org_id.clone(),
        attribution: call.attribution.clone(),
        model: model.to_owned(),
        input_tokens: *input_tokens,
        output_tokens: *output_tokens,
        status: status.as_str().to_owned(),
        cost,
        hold_released,
        balance_after,
        request_hash: request_hash.to_owned(),
        settled_at: now,
        usage_source,
    };
    Ok(vec![recorded.into()])
}

fn decide_expire_holds(state: &State, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    Ok(state
        .hold_expiries
        .range(..=TimeKey::last_at(now))
        .take(MAX_HOLDS_EXPIRED_PER_COMMAND)
        .filter_map(|(_, call_id)| state.calls.get(call_id))
        .map(|call| {
            HoldExpired { call_id: call.id.clone(), org_id: call.org_id.clone(), released: call.hold, expired_at: now }
                .into()
        })
        .collect())
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::CallAuthorized(authorized) => {
            fold_call_authorized(state, authorized, authorized.attribution.clone(), authorized.model.to_owned());
        }
        Event::UsageRecorded(recorded) => {
            fold_usage_recorded(state, recorded, recorded.status.clone(), recorded.request_hash.to_owned());
        }
        Event::HoldExpired(expired) => state.release_hold(&expired.call_id, expired.released),
        other => unreachable!("call::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn funded() -> Given {
        given(&[register_org(1), price("1000", "1000"), grant(1, "10")])
    }

    #[test]
    fn an_authorization_holds_what_the_org_can_cover_for_a_priced_model() {
        let past = funded();
        assert_eq!(types(&past.when(&authorize(1, 1, Some("5"))).unwrap()), ["CallAuthorized"]);
        let too_much = past.when(&authorize(1, 1, Some("11")));
        assert!(matches!(too_much, Err(DomainError::InsufficientCredits { .. })), "{too_much:?}");
        let mut unpriced = authorize(1, 1, Some("1"));
        if let Command::Authorize { model, .. } = &mut unpriced {
            *model = "unpriced".into();
        }
        assert!(matches!(past.when(&unpriced), Err(DomainError::UnknownModel(_))));
        let mut past = past;
        past.run(&authorize(1, 1, Some("5")));
        let reused = past.when(&authorize(1, 1, Some("1")));
        assert!(matches!(reused, Err(DomainError::Conflict(_))), "{reused:?}");
    }

    #[test]
    fn usage_settles_a_call_once_and_the_same_usage_again_is_a_replay() {
        let mut past = funded();
        past.run(&authorize(1, 1, Some("5")));
        assert_eq!(types(&past.when(&usage(1, 1000, 2000)).unwrap()), ["UsageRecorded"]);
        past.run(&usage(1, 1000, 2000));
        assert_eq!(past.when(&usage(1, 1000, 2000)).unwrap(), Vec::new());
        let different = past.when(&usage(1, 1000, 3000));
        assert!(matches!(different, Err(DomainError::Conflict(_))), "{different:?}");
        assert_eq!(past.when(&usage(9, 1, 1)), Err(DomainError::NotFound("call")));
        // 3,000 tokens at ₹1,000 a million: ₹3, from a balance of ₹10.
        assert_eq!(past.state.org(&org(1)).unwrap().balance, money("7"));
    }

    #[test]
    fn holds_expire_after_their_ttl_and_not_before() {
        let mut past = funded();
        past.run(&authorize(1, 1, Some("5")));
        assert_eq!(past.when(&Command::ExpireHolds).unwrap(), Vec::new());
        let past = past.later(601);
        assert_eq!(types(&past.when(&Command::ExpireHolds).unwrap()), ["HoldExpired"]);
    }
}
