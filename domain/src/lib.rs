//! bahi's domain: identifiers, exact money, credential formats, events, commands, and the
//! pure `decide`/`evolve` pair. Nothing here performs I/O, reads a clock or draws random
//! bytes: time and randomness are passed in, so every rule is a deterministic function.

pub mod billing;
pub mod chain;
pub mod claims;
pub mod command;
pub mod credential;
pub mod error;
pub mod event;
pub mod ids;
pub mod money;
pub mod rate_limit;
pub mod state;
pub mod timestamp;

pub use command::{Command, decide};
pub use error::DomainError;
pub use event::Event;
pub use money::Money;
pub use state::{State, evolve};
