use crate::ids::IdError;
use crate::money::MoneyError;

/// Why a command was refused. Each variant maps to one status of the HTTP contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The command is malformed or names an impossible value (400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error(transparent)]
    Id(#[from] IdError),
    /// No such resource in the caller's org (404); never says whether it exists elsewhere.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The same idempotency key or id with a different request (409).
    #[error("{0}")]
    Conflict(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// The agent was revoked; nothing more may be done in its name (409).
    #[error("this agent was revoked")]
    AgentRevoked,
    /// The org's available credit cannot cover the call (402).
    #[error("insufficient credits: available {available}, needed {needed}")]
    InsufficientCredits { available: crate::money::Money, needed: crate::money::Money },
    /// The key's or agent's budget for the period is spent (402).
    #[error("budget exceeded: {spent} of {budget} spent this period")]
    BudgetExceeded { spent: crate::money::Money, budget: crate::money::Money },
    /// No price is set for the model (400).
    #[error("unknown model {0:?}: no price is set for it")]
    UnknownModel(String),
}

impl DomainError {
    pub fn invalid(message: impl Into<String>) -> DomainError {
        DomainError::Invalid(message.into())
    }
}
