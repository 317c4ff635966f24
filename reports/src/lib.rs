//! INR statements and attribution reports.
//!
//! Pure formatting and arithmetic over rows the store reads: no I/O here. A statement is
//! written incrementally (`StatementWriter`: header, one entry at a time, footer) so that the
//! caller can stream it in bounded memory whatever the number of rows.

pub mod attribution;
pub mod period;
pub mod statement;

pub use attribution::{AttributionRow, GroupKey, parse_group_by};
pub use period::{DayRange, DaySplit, Period, parse_bound, parse_date, statement_period};
pub use statement::{LedgerEntry, StatementFormat, StatementHeader, StatementTotals, StatementWriter};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("{what} must be a date (YYYY-MM-DD){also}, not {text:?}")]
    BadDate { what: &'static str, text: String, also: &'static str },
    #[error("from must not be after to")]
    FromAfterTo,
    #[error("format must be csv or json, not {0:?}")]
    UnknownFormat(String),
    #[error("unknown group_by value {0:?}: use agent, act_for, model, api_key or day")]
    UnknownGroup(String),
    #[error("amounts overflow")]
    Overflow,
}
