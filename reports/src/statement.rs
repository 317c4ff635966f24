//! INR statements, written a row at a time.
//!
//! The running balance is the opening balance plus credits minus debits so far, so
//! `opening + credits − debits = closing` holds exactly by construction; every entry also
//! carries the balance its event recorded, and `StatementTotals::recorded_mismatches` counts
//! entries where the two differ (zero unless the log itself is inconsistent).

use std::io::Write;

use bahi_domain::Money;
use bahi_domain::chain::format_recorded_at;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::json;

use crate::ReportError;
use crate::period::Period;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementFormat {
    Csv,
    Json,
}

impl StatementFormat {
    pub fn parse(text: &str) -> Result<StatementFormat, ReportError> {
        match text {
            "csv" => Ok(StatementFormat::Csv),
            "json" => Ok(StatementFormat::Json),
            other => Err(ReportError::UnknownFormat(other.to_owned())),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            StatementFormat::Csv => "text/csv; charset=utf-8",
            StatementFormat::Json => "application/json",
        }
    }
}

/// One ledger entry as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub entry_type: String,
    pub reference: String,
    pub description: Option<String>,
    pub call_id: Option<String>,
    pub credential_kind: Option<String>,
    pub credential_id: Option<String>,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub act_for: Option<String>,
    pub model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub debit: Money,
    pub credit: Money,
    pub hold_released: Money,
    pub balance_after: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementHeader {
    pub org_id: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub period: Period,
    /// The balance after the org's last entry before the period (zero if none).
    pub opening_balance: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementTotals {
    pub opening_balance: Money,
    pub credits: Money,
    pub debits: Money,
    pub closing_balance: Money,
    pub entries: u64,
    /// Entries whose recorded balance differs from the running balance (should be zero).
    pub recorded_mismatches: u64,
}

/// The opening and closing rows carry a balance only: their `debit`, `credit` and
/// `hold_released` cells are empty, so summing a column in a spreadsheet counts each
/// amount once, and opening + the credit column - the debit column = closing.
pub const CSV_HEADER: &str = "position,occurred_at,type,reference,description,call_id,credential_kind,credential_id,\
agent_id,agent_name,act_for,model,input_tokens,output_tokens,debit,credit,hold_released,balance\r\n";

/// Writes one statement; `begin`, then `entry` for each row in log order, then `finish`.
#[derive(Debug)]
pub struct StatementWriter {
    format: StatementFormat,
    header: StatementHeader,
    totals: StatementTotals,
}

/// A CSV field per RFC 4180: quoted when it holds a comma, quote or line break, quotes
/// doubled. Text a spreadsheet would run as a formula (leading `=`, `+`, `-`, `@`, tab or
/// carriage return) gets a leading apostrophe: statements are opened in spreadsheets, and
/// names and references come from users.
fn csv_text(out: &mut Vec<u8>, text: &str) {
    let guarded = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = guarded || text.contains([',', '"', '\r', '\n']);
    if quoted {
        out.push(b'"');
    }
    if guarded {
        out.push(b'\'');
    }
    for byte in text.bytes() {
        if byte == b'"' {
            out.push(b'"');
        }
        out.push(byte);
    }
    if quoted {
        out.push(b'"');
    }
}

fn csv_optional(out: &mut Vec<u8>, text: Option<&str>) {
    if let Some(text) = text {
        csv_text(out, text);
    }
    out.push(b',');
}

fn csv_number(out: &mut Vec<u8>, number: Option<i64>) {
    if let Some(number) = number {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{number}");
    }
    out.push(b',');
}

#[derive(Serialize)]
struct CredentialView<'a> {
    kind: &'a str,
    id: &'a str,
}

#[derive(Serialize)]
struct AgentView<'a> {
    id: &'a str,
    name: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    position: i64,
    occurred_at: String,
    #[serde(rename = "type")]
    entry_type: &'a str,
    reference: &'a str,
    description: Option<&'a str>,
    call_id: Option<&'a str>,
    credential: Option<CredentialView<'a>>,
    agent: Option<AgentView<'a>>,
    act_for: Option<&'a str>,
    model: Option<&'a str>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    debit: Money,
    credit: Money,
    hold_released: Money,
    balance: Money,
    /// The balance the event recorded; equal to `balance` in a consistent log.
    recorded_balance: Money,
}

fn period_bound(time: Option<DateTime<Utc>>) -> String {
    time.map(format_recorded_at).unwrap_or_default()
}

impl StatementWriter {
    pub fn begin(format: StatementFormat, header: StatementHeader, out: &mut Vec<u8>) -> StatementWriter {
        let opening = header.opening_balance;
        match format {
            StatementFormat::Csv => {
                out.extend_from_slice(CSV_HEADER.as_bytes());
                let _ = write!(
                    out,
                    ",{},opening_balance,{},,,,,,,,,,,,,,{opening}\r\n",
                    period_bound(header.period.from),
                    header.org_id
                );
            }
            StatementFormat::Json => {
                let prelude = json!({
                    "org_id": header.org_id,
                    "currency": "inr",
                    "from": header.from.to_string(),
                    "to": header.to.to_string(),
                    "period_start": period_bound(header.period.from),
                    "period_end": period_bound(header.period.until),
                    "opening_balance": opening,
                });
                let text = prelude.to_string();
                // Reopen the object to append the rows and the closing fields as they come.
                out.extend_from_slice(text.trim_end_matches('}').as_bytes());
                out.extend_from_slice(b",\"rows\":[");
            }
        }
        let totals = StatementTotals {
            opening_balance: opening,
            credits: Money::ZERO,
            debits: Money::ZERO,
            closing_balance: opening,
            entries: 0,
            recorded_mismatches: 0,
        };
        StatementWriter { format, header, totals }
    }

    pub fn entry(&mut self, entry: &LedgerEntry, out: &mut Vec<u8>) -> Result<(), ReportError> {
        let totals = &mut self.totals;
        totals.credits = totals.credits.checked_add(entry.credit).map_err(|_| ReportError::Overflow)?;
        totals.debits = totals.debits.checked_add(entry.debit).map_err(|_| ReportError::Overflow)?;
        totals.closing_balance = totals
            .closing_balance
            .checked_add(entry.credit)
            .and_then(|balance| balance.checked_sub(entry.debit))
            .map_err(|_| ReportError::Overflow)?;
        if totals.closing_balance != entry.balance_after {
            totals.recorded_mismatches += 1;
        }
        let balance = totals.closing_balance;
        let first = totals.entries == 0;
        totals.entries += 1;
        match self.format {
            StatementFormat::Csv => {
                let _ = write!(out, "{},{},", entry.position, format_recorded_at(entry.occurred_at));
                csv_optional(out, Some(&entry.entry_type));
                csv_optional(out, Some(&entry.reference));
                csv_optional(out, entry.description.as_deref());
                csv_optional(out, entry.call_id.as_deref());
                csv_optional(out, entry.credential_kind.as_deref());
                csv_optional(out, entry.credential_id.as_deref());
                csv_optional(out, entry.agent_id.as_deref());
                csv_optional(out, entry.agent_name.as_deref());
                csv_optional(out, entry.act_for.as_deref());
                csv_optional(out, entry.model.as_deref());
                csv_number(out, entry.input_tokens);
                csv_number(out, entry.output_tokens);
                let _ = write!(out, "{},{},{},{balance}\r\n", entry.debit, entry.credit, entry.hold_released);
            }
            StatementFormat::Json => {
                if !first {
                    out.push(b',');
                }
                let view = JsonEntry {
                    position: entry.position,
                    occurred_at: format_recorded_at(entry.occurred_at),
                    entry_type: &entry.entry_type,
                    reference: &entry.reference,
                    description: entry.description.as_deref(),
                    call_id: entry.call_id.as_deref(),
                    credential: match (&entry.credential_kind, &entry.credential_id) {
                        (Some(kind), Some(id)) => Some(CredentialView { kind, id }),
                        _ => None,
                    },
                    agent: entry.agent_id.as_deref().map(|id| AgentView { id, name: entry.agent_name.as_deref() }),
                    act_for: entry.act_for.as_deref(),
                    model: entry.model.as_deref(),
                    input_tokens: entry.input_tokens,
                    output_tokens: entry.output_tokens,
                    debit: entry.debit,
                    credit: entry.credit,
                    hold_released: entry.hold_released,
                    balance,
                    recorded_balance: entry.balance_after,
                };
                // Serializing strings, integers and money into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &view);
            }
        }
        Ok(())
    }

    pub fn finish(self, out: &mut Vec<u8>) -> StatementTotals {
        let totals = self.totals;
        match self.format {
            StatementFormat::Csv => {
                let _ = write!(
                    out,
                    ",{},closing_balance,{},,,,,,,,,,,,,,{}\r\n",
                    // The period's last microsecond, so that a statement to 31 December closes
                    // on 31 December (its bound, the next midnight, is the next period's).
                    period_bound(self.header.period.until.map(|until| until - chrono::TimeDelta::microseconds(1))),
                    self.header.org_id,
                    totals.closing_balance
                );
            }
            StatementFormat::Json => {
                let tail = json!({
                    "entries": totals.entries,
                    "total_credits": totals.credits,
                    "total_debits": totals.debits,
                    "closing_balance": totals.closing_balance,
                })
                .to_string();
                out.extend_from_slice(b"],");
                out.extend_from_slice(tail.trim_start_matches('{').as_bytes());
                out.push(b'\n');
            }
        }
        totals
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::statement_period;

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn entry(position: i64, credit: &str, debit: &str, balance: &str, description: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            position,
            occurred_at: "2026-01-05T10:00:00Z".parse().unwrap(),
            entry_type: if credit == "0" { "usage".into() } else { "topup".into() },
            reference: format!("ref_{position}"),
            description: description.map(str::to_owned),
            call_id: None,
            credential_kind: None,
            credential_id: None,
            agent_id: None,
            agent_name: None,
            act_for: None,
            model: None,
            input_tokens: Some(7),
            output_tokens: None,
            debit: money(debit),
            credit: money(credit),
            hold_released: Money::ZERO,
            balance_after: money(balance),
        }
    }

    fn header(format_opening: &str) -> StatementHeader {
        let (from, to, period) = statement_period("2026-01-01", "2026-01-31").unwrap();
        StatementHeader { org_id: "org_A".into(), from, to, period, opening_balance: money(format_opening) }
    }

    fn write_all(format: StatementFormat, entries: &[LedgerEntry]) -> (String, StatementTotals) {
        let mut out = Vec::new();
        let mut writer = StatementWriter::begin(format, header("10"), &mut out);
        for entry in entries {
            writer.entry(entry, &mut out).unwrap();
        }
        let totals = writer.finish(&mut out);
        (String::from_utf8(out).unwrap(), totals)
    }

    #[test]
    fn csv_quotes_per_rfc_4180_and_reconciles() {
        let entries = [
            entry(3, "42.5", "0", "52.50", Some("pay, \"ref\"\nline")),
            entry(9, "0", "0.000001", "52.499999", Some("=HYPERLINK(1)")),
        ];
        let (csv, totals) = write_all(StatementFormat::Csv, &entries);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER.trim_end());
        assert_eq!(lines[1], ",2026-01-01T00:00:00.000000Z,opening_balance,org_A,,,,,,,,,,,,,,10.00");
        assert!(lines[2].starts_with("3,2026-01-05T10:00:00.000000Z,topup,ref_3,\"pay, \"\"ref\"\"\nline\","));
        assert!(lines[2].ends_with(",7,,0.00,42.50,0.00,52.50"), "{}", lines[2]);
        assert!(lines[3].contains(",\"'=HYPERLINK(1)\","), "{}", lines[3]);
        assert!(lines[3].ends_with(",0.000001,0.00,0.00,52.499999"), "{}", lines[3]);
        assert_eq!(lines[4], ",2026-01-31T23:59:59.999999Z,closing_balance,org_A,,,,,,,,,,,,,,52.499999");
        assert_eq!(lines[5], "");
        assert_eq!(totals.closing_balance, money("52.499999"));
        assert_eq!(
            totals.opening_balance.checked_add(totals.credits).unwrap().checked_sub(totals.debits).unwrap(),
            totals.closing_balance
        );
        assert_eq!(totals.recorded_mismatches, 0);
    }

    #[test]
    fn summing_the_csv_amount_columns_counts_each_entry_once() {
        let entries = [
            entry(3, "42.5", "0", "52.50", None),
            entry(4, "0", "2.25", "50.25", None),
            entry(5, "0", "0.000001", "50.249999", None),
        ];
        let (csv, totals) = write_all(StatementFormat::Csv, &entries);
        let rows: Vec<Vec<&str>> =
            csv.split("\r\n").skip(1).filter(|line| !line.is_empty()).map(|line| line.split(',').collect()).collect();
        let column_sum = |index: usize| {
            rows.iter()
                .filter(|row| !row[index].is_empty())
                .fold(Money::ZERO, |sum, row| sum.checked_add(money(row[index])).unwrap())
        };
        assert_eq!(column_sum(14), totals.debits);
        assert_eq!(column_sum(15), totals.credits);
        assert_eq!(column_sum(14), money("2.250001"));
        let opening = money(rows[0][17]);
        let closing = money(rows.last().unwrap()[17]);
        assert_eq!(opening.checked_add(column_sum(15)).unwrap().checked_sub(column_sum(14)).unwrap(), closing);
    }

    #[test]
    fn json_is_one_valid_document() {
        let entries = [entry(3, "42.5", "0", "52.50", None), entry(4, "0", "2", "50.50", None)];
        let (text, totals) = write_all(StatementFormat::Json, &entries);
        let document: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(document["opening_balance"]["amount"], "10.00");
        assert_eq!(document["closing_balance"]["amount"], "50.50");
        assert_eq!(document["rows"].as_array().unwrap().len(), 2);
        assert_eq!(document["rows"][1]["balance"]["amount"], "50.50");
        assert_eq!(totals.entries, 2);
        let (empty, _) = write_all(StatementFormat::Json, &[]);
        let empty: serde_json::Value = serde_json::from_str(&empty).unwrap();
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(empty["closing_balance"]["amount"], "10.00");
    }

    #[test]
    fn a_balance_that_disagrees_with_the_running_one_is_counted() {
        let (_, totals) = write_all(StatementFormat::Csv, &[entry(1, "1", "0", "99", None)]);
        assert_eq!(totals.recorded_mismatches, 1);
        assert_eq!(totals.closing_balance, money("11"));
    }
}
