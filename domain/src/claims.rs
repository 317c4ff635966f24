//! Claims of a bahi agent token (docs/api.md, "Credentials").
//!
//! Pure data and arithmetic: no clock, no randomness, no cryptography. Signing and
//! verifying live in the root crate (`bahi::agent_token`); this module only says what a
//! well-formed set of claims is, so the issuer and the verifier agree on it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How an agent acts (docs/api.md): on its own account, on behalf of a human, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Acts for its org; `act_for` is the org id.
    Autonomous,
    /// Acts for one human; `act_for` is a `usr_...` id.
    Delegated,
    /// Either, call by call; `act_for` is a `usr_...` id or the org id.
    Hybrid,
}

impl AgentMode {
    /// The wire spelling, as in the `mode` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Autonomous => "autonomous",
            AgentMode::Delegated => "delegated",
            AgentMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for AgentMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The value was not one of `autonomous`, `delegated`, `hybrid`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mode must be one of autonomous, delegated, hybrid")]
pub struct UnknownAgentMode;

impl FromStr for AgentMode {
    type Err = UnknownAgentMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "autonomous" => Ok(AgentMode::Autonomous),
            "delegated" => Ok(AgentMode::Delegated),
            "hybrid" => Ok(AgentMode::Hybrid),
            _ => Err(UnknownAgentMode),
        }
    }
}

/// The claims of an agent token minted by bahi's embedded issuer, field for field as in
/// docs/api.md. Times are epoch seconds (JWT NumericDate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaims {
    /// The issuer, e.g. `https://bahi.example.com`.
    pub iss: String,
    /// The audience the token is meant for.
    pub aud: String,
    /// The agent, `agt_...`.
    pub sub: String,
    /// The owner org, which pays: `org_...`.
    pub org: String,
    /// The principal the agent acts for: a `usr_...` (delegated) or the org (autonomous).
    pub act_for: String,
    pub mode: AgentMode,
    /// Space-separated scopes, as in OAuth 2.0 (RFC 6749 section 3.3).
    pub scope: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The token id, `tok_...`; revocation of a single token is by this id.
    pub jti: String,
}

/// Why a set of claims is not a well-formed bahi agent token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("claim `{claim}` must start with `{prefix}`")]
    WrongPrefix { claim: &'static str, prefix: &'static str },
    #[error("claim `act_for` must be the org id in autonomous mode")]
    AutonomousNotForOrg,
    #[error("claim `act_for` must be a `usr_` id in delegated mode")]
    DelegatedNotForUser,
    #[error("claim `act_for` must be a `usr_` id or the org id in hybrid mode")]
    HybridNotForUserOrOrg,
    #[error("claim `exp` must be after `nbf`, and `nbf` not before `iat`")]
    TimesOutOfOrder,
    #[error("claim `scope` must name at least one scope")]
    NoScope,
}

impl AgentClaims {
    /// The scopes of the `scope` claim, in order, without empty items.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }

    /// Checks the shape rules of docs/api.md that serde cannot express: id prefixes, the
    /// `act_for` that each mode allows, ordered times and a non-empty scope. The issuer
    /// checks before signing and the verifier after, so a bug on either side is caught.
    pub fn check_shape(&self) -> Result<(), ClaimsError> {
        require_prefix("sub", &self.sub, "agt_")?;
        require_prefix("org", &self.org, "org_")?;
        require_prefix("jti", &self.jti, "tok_")?;
        let acts_for_user = self.act_for.starts_with("usr_");
        let acts_for_org = self.act_for == self.org;
        match self.mode {
            AgentMode::Autonomous if !acts_for_org => return Err(ClaimsError::AutonomousNotForOrg),
            AgentMode::Delegated if !acts_for_user => return Err(ClaimsError::DelegatedNotForUser),
            AgentMode::Hybrid if !acts_for_user && !acts_for_org => {
                return Err(ClaimsError::HybridNotForUserOrOrg);
            }
            _ => {}
        }
        if self.iat > self.nbf || self.nbf >= self.exp {
            return Err(ClaimsError::TimesOutOfOrder);
        }
        if self.scopes().next().is_none() {
            return Err(ClaimsError::NoScope);
        }
        Ok(())
    }
}

fn require_prefix(claim: &'static str, value: &str, prefix: &'static str) -> Result<(), ClaimsError> {
    // A bare prefix names nothing, so it is as wrong as a missing one.
    if value.len() > prefix.len() && value.starts_with(prefix) {
        Ok(())
    } else {
        Err(ClaimsError::WrongPrefix { claim, prefix })
    }
}

/// Whether every requested scope is among the allowed ones. Used when a token is minted
/// with a narrower `scopes` list than its agent holds: a token may narrow, never widen.
/// The empty request is a subset of anything.
pub fn is_subset<Requested, Allowed>(requested: &[Requested], allowed: &[Allowed]) -> bool
where
    Requested: AsRef<str>,
    Allowed: AsRef<str>,
{
    // Scope lists are a handful of items, so a linear scan beats building a set.
    requested.iter().all(|wanted| allowed.iter().any(|held| held.as_ref() == wanted.as_ref()))
}

/// Joins scopes into the space-separated form of the `scope` claim.
pub fn join_scopes<Scope: AsRef<str>>(scopes: &[Scope]) -> String {
    let mut joined = String::new();
    for scope in scopes {
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(scope.as_ref());
    }
    joined
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn delegated_claims() -> AgentClaims {
        AgentClaims {
            iss: "https://bahi.example".into(),
            aud: "bahi".into(),
            sub: "agt_1".into(),
            org: "org_1".into(),
            act_for: "usr_1".into(),
            mode: AgentMode::Delegated,
            scope: "inference audit:read".into(),
            iat: 1_000,
            nbf: 1_000,
            exp: 1_600,
            jti: "tok_1".into(),
        }
    }

    #[test]
    fn serializes_with_the_field_names_of_the_contract() {
        let value = serde_json::to_value(delegated_claims()).unwrap();
        let mut names: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["act_for", "aud", "exp", "iat", "iss", "jti", "mode", "nbf", "org", "scope", "sub"]);
        assert_eq!(value["mode"], "delegated");
        let back: AgentClaims = serde_json::from_value(value).unwrap();
        assert_eq!(back, delegated_claims());
    }

    #[test]
    fn mode_spellings_round_trip() {
        for mode in [AgentMode::Autonomous, AgentMode::Delegated, AgentMode::Hybrid] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            assert_eq!(mode.as_str().parse::<AgentMode>().unwrap(), mode);
        }
        assert!("Autonomous".parse::<AgentMode>().is_err());
        assert!(serde_json::from_str::<AgentMode>("\"robot\"").is_err());
    }

    #[test]
    fn scopes_split_on_any_whitespace_and_skip_empty_items() {
        let mut claims = delegated_claims();
        claims.scope = "  inference\taudit:read  keys:write ".into();
        assert_eq!(claims.scopes().collect::<Vec<_>>(), ["inference", "audit:read", "keys:write"]);
    }

    #[test]
    fn shape_accepts_each_mode_with_its_principal() {
        assert_eq!(delegated_claims().check_shape(), Ok(()));
        let mut autonomous = delegated_claims();
        autonomous.mode = AgentMode::Autonomous;
        autonomous.act_for = "org_1".into();
        assert_eq!(autonomous.check_shape(), Ok(()));
        let mut hybrid = delegated_claims();
        hybrid.mode = AgentMode::Hybrid;
        assert_eq!(hybrid.check_shape(), Ok(()));
        hybrid.act_for = "org_1".into();
        assert_eq!(hybrid.check_shape(), Ok(()));
    }

    #[test]
    fn shape_refuses_wrong_principals_prefixes_times_and_empty_scope() {
        let mut claims = delegated_claims();
        claims.act_for = "org_1".into();
        assert_eq!(claims.check_shape(), Err(ClaimsError::DelegatedNotForUser));

        let mut claims = delegated_claims();
        claims.mode = AgentMode::Autonomous;
        assert_eq!(claims.check_shape(), Err(ClaimsError::AutonomousNotForOrg));

        let mut claims = delegated_claims();
        claims.mode = AgentMode::Hybrid;
        claims.act_for = "org_2".into();
        assert_eq!(claims.check_shape(), Err(ClaimsError::HybridNotForUserOrOrg));

        let mut claims = delegated_claims();
        claims.sub = "usr_1".into();
        assert_eq!(claims.check_shape(), Err(ClaimsError::WrongPrefix { claim: "sub", prefix: "agt_" }));

        let mut claims = delegated_claims();
        claims.jti = "tok_".into();
        assert_eq!(claims.check_shape(), Err(ClaimsError::WrongPrefix { claim: "jti", prefix: "tok_" }));

        let mut claims = delegated_claims();
        claims.exp = claims.nbf;
        assert_eq!(claims.check_shape(), Err(ClaimsError::TimesOutOfOrder));

        let mut claims = delegated_claims();
        claims.scope = "   ".into();
        assert_eq!(claims.check_shape(), Err(ClaimsError::NoScope));
    }

    #[test]
    fn subset_examples() {
        let allowed = ["inference", "audit:read"];
        assert!(is_subset(&["inference"], &allowed));
        assert!(is_subset::<&str, &str>(&[], &allowed));
        assert!(!is_subset(&["inference", "keys:write"], &allowed));
        assert!(!is_subset(&["inference"], &Vec::<String>::new()));
    }

    proptest! {
        #[test]
        fn joined_scopes_split_back(scopes in proptest::collection::vec("[a-z:]{1,12}", 0..8)) {
            let claims = AgentClaims { scope: join_scopes(&scopes), ..delegated_claims() };
            let split: Vec<&str> = claims.scopes().collect();
            prop_assert_eq!(split, scopes.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn subset_matches_set_inclusion(
            requested in proptest::collection::vec("[a-d]", 0..6),
            allowed in proptest::collection::vec("[a-d]", 0..6),
        ) {
            let expected = requested.iter().all(|scope| allowed.contains(scope));
            prop_assert_eq!(is_subset(&requested, &allowed), expected);
            prop_assert!(is_subset(&requested, &requested));
        }
    }
}
