//! Money in: top-ups by a human, grants by the operator.

use super::*;
use crate::state::*;

/// Decides one of this aggregate's commands.
pub(crate) fn decide(state: &State, command: &Command, now: DateTime<Utc>) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::TopUp { org_id, topup_id, amount, payment_reference, user_id } => {
            decide_top_up(state, org_id, topup_id, amount, payment_reference, user_id, now)
        }
        Command::Grant { org_id, grant_id, amount, reason } => {
            decide_grant(state, org_id, grant_id, amount, reason, now)
        }
        other => unreachable!("credit::decide was given {}", other.name()),
    }
}

fn decide_top_up(
    state: &State,
    org_id: &OrgId,
    topup_id: &TopupId,
    amount: &Money,
    payment_reference: &str,
    user_id: &UserId,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let org = state.orgs.get(org_id).ok_or(DomainError::NotFound("org"))?;
    check_amount(*amount, "amount")?;
    check_printable(payment_reference, "payment_reference", MAX_REFERENCE_LENGTH)?;
    if let Some(existing) = state.topups.get(&(org_id.clone(), payment_reference.to_owned())) {
        // The same payment again: nothing new happens; a different amount is a conflict.
        return if existing.amount == *amount {
            Ok(Vec::new())
        } else {
            Err(DomainError::Conflict("payment_reference was already used with a different amount".into()))
        };
    }
    Ok(vec![
        CreditsToppedUp {
            topup_id: topup_id.clone(),
            org_id: org_id.clone(),
            amount: *amount,
            payment_reference: payment_reference.to_owned(),
            user_id: user_id.clone(),
            balance_after: credited_balance(org, *amount)?,
            topped_up_at: now,
        }
        .into(),
    ])
}

fn decide_grant(
    state: &State,
    org_id: &OrgId,
    grant_id: &TopupId,
    amount: &Money,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, DomainError> {
    let org = state.orgs.get(org_id).ok_or(DomainError::NotFound("org"))?;
    check_amount(*amount, "amount")?;
    check_printable(reason, "reason", MAX_REASON_LENGTH)?;
    Ok(vec![
        CreditsGranted {
            grant_id: grant_id.clone(),
            org_id: org_id.clone(),
            amount: *amount,
            reason: reason.to_owned(),
            balance_after: credited_balance(org, *amount)?,
            granted_at: now,
        }
        .into(),
    ])
}

/// Folds one of this aggregate's events into the state (see `crate::evolve`).
pub(crate) fn evolve(state: &mut State, event: &Event) {
    match event {
        Event::CreditsToppedUp(topped_up) => {
            state.credit(&topped_up.org_id, topped_up.amount);
            state.topups.insert(
                (topped_up.org_id.clone(), topped_up.payment_reference.to_owned()),
                TopupRecord {
                    topup_id: topped_up.topup_id.clone(),
                    amount: topped_up.amount,
                    balance_after: topped_up.balance_after,
                },
            );
        }
        Event::CreditsGranted(granted) => state.credit(&granted.org_id, granted.amount),
        other => unreachable!("credit::evolve was given {}", other.event_type()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn top_up(amount: &str, reference: &str) -> Command {
        Command::TopUp {
            org_id: org(1),
            topup_id: TopupId::from_random([3; 16]),
            amount: money(amount),
            payment_reference: reference.into(),
            user_id: user(1),
        }
    }

    #[test]
    fn a_top_up_credits_once_per_payment_reference() {
        let mut past = given(&[sign_up(1)]);
        assert_eq!(types(&past.when(&top_up("100", "pay-1")).unwrap()), ["CreditsToppedUp"]);
        past.run(&top_up("100", "pay-1"));
        assert_eq!(past.when(&top_up("100", "pay-1")).unwrap(), Vec::new(), "the same payment again");
        let different = past.when(&top_up("90", "pay-1"));
        assert!(matches!(different, Err(DomainError::Conflict(_))), "{different:?}");
        assert_eq!(past.state.org(&org(1)).unwrap().balance, money("100"));
        assert_eq!(given(&[]).when(&top_up("100", "pay-1")), Err(DomainError::NotFound("org")));
    }

    #[test]
    fn a_grant_credits_a_positive_bounded_amount() {
        let past = given(&[register_org(1)]);
        assert_eq!(types(&past.when(&grant(1, "50")).unwrap()), ["CreditsGranted"]);
        for amount in ["0", "-5", "1000000000.000001"] {
            assert!(past.when(&grant(1, amount)).is_err(), "{amount}");
        }
    }
}
