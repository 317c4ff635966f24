//! JSON Schemas of the domain's wire types, for request types that derive
//! `schemars::JsonSchema` (the MCP tools' input schemas are made from the same request types
//! as the JSON API). The domain crate stays free of schemars; these describe what its serde
//! implementations accept.

use schemars::{Schema, SchemaGenerator, json_schema};

/// `Money` in a request: the object `{"currency": "inr", "amount": "42.50"}` or the bare
/// decimal string.
pub fn money(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "INR, exact: a decimal string with at most 6 places (\"42.50\"), or {\"currency\": \"inr\", \"amount\": \"42.50\"}",
        "anyOf": [
            {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,6})?$"},
            {
                "type": "object",
                "description": "other fields are ignored",
                "properties": {"currency": {"const": "inr"}, "amount": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,6})?$"}},
                "required": ["currency", "amount"]
            }
        ]
    })
}

fn rate_limit_object() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "description": "a token bucket: requests per interval_seconds",
        "properties": {
            "requests": {"type": "integer", "minimum": 1},
            "interval_seconds": {"type": "integer", "minimum": 1}
        },
        "required": ["requests", "interval_seconds"],
        "additionalProperties": false
    })
}

fn budget_object(generator: &mut SchemaGenerator) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "amount": money(generator),
            "period": {"enum": ["day", "month", "total"]}
        },
        "required": ["amount", "period"],
        "additionalProperties": false
    })
}

/// An optional `RateLimit`.
pub fn optional_rate_limit(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [rate_limit_object(), {"type": "null"}]})
}

/// An optional `Budget`.
pub fn optional_budget(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [budget_object(generator), {"type": "null"}]})
}

/// An optional `AgentMode`.
pub fn optional_agent_mode(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [{"enum": ["autonomous", "delegated", "hybrid"]}, {"type": "null"}]})
}

/// An optional `Money`.
pub fn optional_money(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [money(generator), {"type": "null"}]})
}

/// `UsageStatus`, as serde names it.
pub fn usage_status(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["succeeded", "failed", "cancelled"]})
}

/// `Role`, as serde names it.
pub fn role(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["owner", "admin", "finance", "auditor", "member"]})
}

/// `Provider`, as serde names it.
pub fn provider(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["openai", "anthropic"]})
}

// Answers: what the response types serialize (answers always use the money object).

/// `Money` in an answer: always the object.
pub fn money_answer(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "properties": {"currency": {"const": "inr"}, "amount": {"type": "string", "description": "exact decimal, at most 6 places"}},
        "required": ["currency", "amount"]
    })
}

/// A prefixed id (`key_...`, `agt_...`, `tok_...`).
pub fn id(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "description": "a prefixed id"})
}

/// An optional prefixed id.
pub fn optional_id(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["string", "null"], "description": "a prefixed id"})
}

/// Scopes, as their names.
pub fn scopes(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": {"type": "string", "description": "inference, keys:write, agents:write, audit:read, statements:read, account:read, ..."}})
}

/// `AgentMode`, as serde names it.
pub fn agent_mode(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["autonomous", "delegated", "hybrid"]})
}

/// `BudgetPeriod`, as serde names it.
pub fn budget_period(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"enum": ["day", "month", "total"]})
}

/// A map of names to prefixed ids (an issuer's owners to orgs).
pub fn id_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// An optional `Money` in an answer: the object, or null.
pub fn optional_money_answer(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({"anyOf": [money_answer(generator), {"type": "null"}]})
}

/// The sums of an attribution row or of the totals.
fn attribution_sums(generator: &mut SchemaGenerator) -> serde_json::Value {
    serde_json::json!({
        "calls": {"type": "integer"},
        "input_tokens": {"type": "integer"},
        "output_tokens": {"type": "integer"},
        "cost": money_answer(generator),
    })
}

/// Attribution rows: the requested group keys (`agent` as `{id, name}`, `act_for`, `model`,
/// `api_key`, `day`; null where a call has none), then the sums.
pub fn attribution_rows(generator: &mut SchemaGenerator) -> Schema {
    let mut properties = attribution_sums(generator);
    let nullable_string = serde_json::json!({"type": ["string", "null"]});
    properties["agent"] = serde_json::json!({
        "anyOf": [
            {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": ["string", "null"]}}, "required": ["id", "name"]},
            {"type": "null"}
        ]
    });
    for key in ["act_for", "model", "api_key", "day"] {
        properties[key] = nullable_string.clone();
    }
    json_schema!({
        "type": "array",
        "items": {"type": "object", "properties": properties, "required": ["calls", "input_tokens", "output_tokens", "cost"]}
    })
}

/// Attribution totals: the sums of every row.
pub fn attribution_totals(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "properties": attribution_sums(generator),
        "required": ["calls", "input_tokens", "output_tokens", "cost"]
    })
}

/// An event's payload as served: an object whose fields depend on the event's type.
pub fn event_payload(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "description": "the event's fields (see domain/src/event), secrets redacted"})
}

/// Scopes asked for: at least one (leave the field out for the default), each a name an org
/// credential can hold; null is the default too.
pub fn requested_scopes(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            {
                "type": "array",
                "minItems": 1,
                "items": {"enum": ["inference", "keys:write", "agents:write", "audit:read", "statements:read", "account:read"]}
            },
            {"type": "null"}
        ]
    })
}
