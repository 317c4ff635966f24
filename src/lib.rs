//! bahi: an event-sourced billing and audit ledger for AI inference gateways.
//!
//! This crate holds everything that touches the outside world: the event store (SQLite and
//! PostgreSQL), the single writer, the projection runner, HTTP, credentials, CLI and
//! telemetry. The rules live in `bahi-domain`; see ARCHITECTURE.md for the map.

pub mod agent_token;
pub mod allocator;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod finance;
pub mod http;
pub mod identity;
pub mod ledger;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod projection_feed;
pub mod projector;
pub mod server;
pub mod store;
pub mod tailer;
pub mod transport;
pub mod writer;
