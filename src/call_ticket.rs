//! Sealed call ids. A call authorized without a hold writes nothing: design.md keeps the
//! gateway's authorize off the database, and a group commit per call would cost it a
//! durable write and a few milliseconds. The binding the usage report needs (payer,
//! attribution, model, price in force, time) therefore travels in the call id itself, sealed
//! with HMAC-SHA256 under a key derived from the key-encryption key, which every node of one
//! log shares. Usage for such a call verifies the seal and records the authorization and
//! the settlement together, so a served call is billed even when no node ever held it in
//! memory (a restart, another node).
//!
//! Layout before base64url (no padding): version 1, authorized_at (i64 microseconds),
//! input and output price per million (i64 micro-rupees), 8 random bytes, then the strings
//! org id, credential kind, credential id, agent id, agent name, act_for and model, each a
//! big-endian u16 length (0xFFFF for none) and UTF-8 bytes; last, the first 16 bytes of the
//! HMAC of everything before it.

use aws_lc_rs::{constant_time, hmac};
use bahi_domain::Money;
use bahi_domain::billing::Price;
use bahi_domain::command::CallTicket;
use bahi_domain::event::CallAttribution;
use bahi_domain::ids::{CallId, MAX_ID_BODY_LENGTH, OrgId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;

const VERSION: u8 = 1;
const TAG_LENGTH: usize = 16;
const ABSENT: u16 = u16::MAX;

/// Seals and opens call tickets with one key.
pub struct CallTickets {
    key: hmac::Key,
}

impl CallTickets {
    /// The sealing key is derived from the key-encryption key, so that it is never stored
    /// and is the same on every node that can unseal the issuer's signing keys.
    pub fn new(key_encryption_key: &[u8; 32]) -> CallTickets {
        let master = hmac::Key::new(hmac::HMAC_SHA256, key_encryption_key);
        let derived = hmac::sign(&master, b"bahi call ticket key v1");
        CallTickets { key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()) }
    }

    /// A call id that carries `ticket`; `random` keeps two identical calls apart.
    pub fn seal(&self, ticket: &CallTicket, random: [u8; 8]) -> Result<CallId, TicketError> {
        let mut bytes = Vec::with_capacity(256);
        bytes.push(VERSION);
        bytes.extend_from_slice(&ticket.authorized_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(&ticket.price.input_per_million.micros().to_be_bytes());
        bytes.extend_from_slice(&ticket.price.output_per_million.micros().to_be_bytes());
        bytes.extend_from_slice(&random);
        let attribution = &ticket.attribution;
        for text in [
            Some(ticket.org_id.as_str()),
            Some(attribution.credential_kind.as_str()),
            Some(attribution.credential_id.as_str()),
            attribution.agent_id.as_deref(),
            attribution.agent_name.as_deref(),
            Some(attribution.act_for.as_str()),
            Some(ticket.model.as_str()),
        ] {
            push_text(&mut bytes, text);
        }
        let tag = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(&tag.as_ref()[..TAG_LENGTH]);
        // Every field is bounded (ids, names and model names are short), so the body is far
        // below MAX_CALL_ID_BODY_LENGTH and always longer than a plain id's.
        CallId::from_body(&URL_SAFE_NO_PAD.encode(&bytes)).map_err(|_| TicketError)
    }

    /// The ticket a call id carries: `Ok(None)` for a plain call id (a call with a hold,
    /// found in the log), `Err` for a sealed id whose seal or layout does not check out.
    pub fn open(&self, call_id: &CallId) -> Result<Option<CallTicket>, TicketError> {
        let body = call_id.as_str().strip_prefix(CallId::PREFIX).unwrap_or_default();
        if body.len() <= MAX_ID_BODY_LENGTH {
            return Ok(None);
        }
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| TicketError)?;
        let (sealed, tag) = bytes.split_at_checked(bytes.len().saturating_sub(TAG_LENGTH)).ok_or(TicketError)?;
        let expected = hmac::sign(&self.key, sealed);
        constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LENGTH], tag).map_err(|_| TicketError)?;
        let mut reader = Reader { bytes: sealed };
        if reader.take::<1>()? != [VERSION] {
            return Err(TicketError);
        }
        let authorized_at = DateTime::from_timestamp_micros(i64::from_be_bytes(reader.take()?)).ok_or(TicketError)?;
        let input_per_million = Money::from_micros(i64::from_be_bytes(reader.take()?)).map_err(|_| TicketError)?;
        let output_per_million = Money::from_micros(i64::from_be_bytes(reader.take()?)).map_err(|_| TicketError)?;
        reader.take::<8>()?;
        let org_id = OrgId::parse(&reader.required_text()?).map_err(|_| TicketError)?;
        let attribution = CallAttribution {
            credential_kind: reader.required_text()?,
            credential_id: reader.required_text()?,
            agent_id: reader.text()?,
            agent_name: reader.text()?,
            act_for: reader.required_text()?,
        };
        let model = reader.required_text()?;
        if !reader.bytes.is_empty() {
            return Err(TicketError);
        }
        Ok(Some(CallTicket {
            org_id,
            attribution,
            model,
            price: Price { input_per_million, output_per_million },
            authorized_at,
        }))
    }
}

/// A sealed call id that was not made by this log's key, or is damaged: to the caller it is
/// an unknown call. (Sealing fails only for a ticket too big for a call id.)
#[derive(Debug, PartialEq, Eq)]
pub struct TicketError;

fn push_text(bytes: &mut Vec<u8>, text: Option<&str>) {
    match text {
        // Lengths above u16 never occur (every field is capped far below it); clamp rather
        // than panic, and the seal would then simply not open.
        Some(text) => {
            let length = u16::try_from(text.len()).unwrap_or(ABSENT - 1);
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(&text.as_bytes()[..usize::from(length)]);
        }
        None => bytes.extend_from_slice(&ABSENT.to_be_bytes()),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(TicketError)?;
        self.bytes = rest;
        Ok(*head)
    }

    fn text(&mut self) -> Result<Option<String>, TicketError> {
        let length = u16::from_be_bytes(self.take()?);
        if length == ABSENT {
            return Ok(None);
        }
        let (text, rest) = self.bytes.split_at_checked(usize::from(length)).ok_or(TicketError)?;
        self.bytes = rest;
        String::from_utf8(text.to_vec()).map(Some).map_err(|_| TicketError)
    }

    fn required_text(&mut self) -> Result<String, TicketError> {
        self.text()?.ok_or(TicketError)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ticket(agent: bool) -> CallTicket {
        CallTicket {
            org_id: OrgId::from_random([7; 16]),
            attribution: CallAttribution {
                credential_kind: if agent { "agent_token" } else { "api_key" }.to_owned(),
                credential_id: "tok_0000000000000000000001".to_owned(),
                agent_id: agent.then(|| "iss_0000000000000000000002:robot-7".to_owned()),
                agent_name: agent.then(|| "Ravi's researcher ✓".to_owned()),
                act_for: "usr_0000000000000000000003".to_owned(),
            },
            model: "gpt-4o-mini".to_owned(),
            price: Price {
                input_per_million: Money::from_micros(150_000).unwrap(),
                output_per_million: Money::from_micros(600_000).unwrap(),
            },
            authorized_at: DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap(),
        }
    }

    #[test]
    fn a_sealed_call_id_opens_to_the_same_ticket() {
        let tickets = CallTickets::new(&[9; 32]);
        for agent in [false, true] {
            let call_id = tickets.seal(&ticket(agent), [1; 8]).unwrap();
            assert!(call_id.as_str().len() > CallId::PREFIX.len() + MAX_ID_BODY_LENGTH);
            assert_eq!(CallId::parse(call_id.as_str()).unwrap(), call_id);
            assert_eq!(tickets.open(&call_id).unwrap(), Some(ticket(agent)));
        }
        assert_ne!(tickets.seal(&ticket(false), [1; 8]).unwrap(), tickets.seal(&ticket(false), [2; 8]).unwrap());
    }

    #[test]
    fn a_plain_call_id_carries_no_ticket() {
        let tickets = CallTickets::new(&[9; 32]);
        assert_eq!(tickets.open(&CallId::from_random([3; 16])).unwrap(), None);
    }

    #[test]
    fn another_key_or_any_changed_byte_does_not_open() {
        let tickets = CallTickets::new(&[9; 32]);
        let call_id = tickets.seal(&ticket(true), [1; 8]).unwrap();
        assert_eq!(CallTickets::new(&[8; 32]).open(&call_id), Err(TicketError));
        let bytes = URL_SAFE_NO_PAD.decode(&call_id.as_str()[CallId::PREFIX.len()..]).unwrap();
        for index in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[index] ^= 0x01;
            let forged = CallId::from_body(&URL_SAFE_NO_PAD.encode(&changed)).unwrap();
            assert_eq!(tickets.open(&forged), Err(TicketError), "byte {index}");
        }
        let truncated = CallId::from_body(&URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1])).unwrap();
        assert_eq!(tickets.open(&truncated), Err(TicketError));
    }
}
