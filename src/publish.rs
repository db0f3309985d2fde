//! The publish grammars: hasses' `TOKEN[-UNIQ]=MESSAGE` and the JSON object, each into a
//! [`Publish`], and why a part is refused ([`CommandError`]).
//!
//! Below the sources that read publishes: the control thread (a line's part) and the HTTP API (a
//! request's body, JSON or a form with the same fields). Pure functions over bytes: no socket,
//! no log line; a source says a refusal in its own dialect.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;
use smallvec::smallvec;

use crate::event::{Audience, Publish, Target};
use crate::limits::{Limits, MAX_ID_LEN, MAX_TOKEN_LEN};

/// Whether a publish is answered (`OK <id>` or `ERR <reason>`) on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ack {
    /// As the connection's `ack on` / `ack off` says (off unless asked: hasses' publishers
    /// read no answers).
    #[default]
    AsConnection,
    /// Answered whatever the connection says: a JSON publish with `"ack":true`.
    Asked,
}

/// Why a part of a control line is not a command. The rest of the line still goes through.
///
/// Every variant carries `part`: the offending part as sent, escaped for a log line (control
/// characters and invalid UTF-8 shown as escapes) and cut after 80 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a command word and no `=`: neither a command nor a message.
    #[error("not a command and not TOKEN=MESSAGE (no '='): \"{part}\"")]
    NotACommand {
        /// The part, shortened and escaped.
        part: String,
    },
    /// Nothing before the `=` (or before the `-`): nobody to send to.
    #[error("empty target token: \"{part}\"")]
    EmptyTarget {
        /// The part, shortened and escaped.
        part: String,
    },
    /// A `-` with no client id after it (`a-=x`), or an empty `"except"`.
    #[error("empty client id to except: \"{part}\"")]
    EmptyExcept {
        /// The part, shortened and escaped.
        part: String,
    },
    /// A `*` after the `-` (`a-b*=x`): the wildcard belongs to the target, before the `-`.
    #[error("a '-' before a '*' is malformed: \"{part}\"")]
    StarAfterDash {
        /// The part, shortened and escaped.
        part: String,
    },
    /// The target token (or prefix) is longer than any client may subscribe to.
    #[error("target token is {len} bytes, over the {max}-byte limit: \"{part}\"")]
    TokenTooLong {
        /// The token's length in bytes.
        len: usize,
        /// The limit ([`MAX_TOKEN_LEN`]).
        max: usize,
        /// The part, shortened and escaped.
        part: String,
    },
    /// The client id after `-` is longer than any client id may be.
    #[error("client id is {len} bytes, over the {max}-byte limit: \"{part}\"")]
    IdTooLong {
        /// The id's length in bytes.
        len: usize,
        /// The limit ([`MAX_ID_LEN`]).
        max: usize,
        /// The part, shortened and escaped.
        part: String,
    },
    /// The message is over the configured maximum (hasses would have cut it and corrupted the stream).
    #[error("message is {len} bytes, over the {max}-byte limit: \"{part}\"")]
    MessageTooLong {
        /// The message's length in bytes.
        len: usize,
        /// The limit ([`Limits::max_message`]).
        max: usize,
        /// The part, shortened and escaped.
        part: String,
    },
    /// A token or client id that is not UTF-8 (no client can have subscribed to it).
    #[error("token or client id is not valid UTF-8: \"{part}\"")]
    NotUtf8 {
        /// The part, shortened and escaped.
        part: String,
    },
    /// Starts with `{` but is not JSON, and not `TOKEN=MESSAGE` either: most likely a JSON
    /// command with a typo, so the JSON parser's complaint says where.
    #[error("not JSON ({error}) and not TOKEN=MESSAGE (no '='): \"{part}\"")]
    NotJson {
        /// What the JSON parser found wrong, and where (line and column).
        error: String,
        /// The part, shortened and escaped.
        part: String,
    },
    /// A JSON object whose fields are not a publish: an unknown field (a typo such as
    /// `"date"`), a missing `to` or `data`, a field of the wrong type, a `retry` that is not a
    /// whole number of milliseconds from 0 to 2^32-1.
    #[error("JSON command refused: {error}: \"{part}\"")]
    BadJson {
        /// What serde found wrong, naming the field, and where (line and column).
        error: String,
        /// The part, shortened and escaped.
        part: String,
    },
    /// A JSON `"to"` that is an empty array: nobody to send to.
    #[error("\"to\" names no target: \"{part}\"")]
    NoTarget {
        /// The part, shortened and escaped.
        part: String,
    },
    /// A JSON target that is not `TOKEN`, `pre*` or `*`.
    #[error("target \"{target}\" {fault}: \"{part}\"")]
    BadTarget {
        /// The target, escaped.
        target: String,
        /// What is wrong with it.
        fault: TargetFault,
        /// The part, shortened and escaped.
        part: String,
    },
    /// A JSON `"event"` with a line break, which would end the `event:` field on the wire.
    #[error("\"event\" holds a line break: \"{part}\"")]
    EventLineBreak {
        /// The part, shortened and escaped.
        part: String,
    },
    /// A JSON `"event"` longer than any sensible event type.
    #[error("\"event\" is {len} bytes, over the {max}-byte limit: \"{part}\"")]
    EventTooLong {
        /// The event type's length in bytes.
        len: usize,
        /// The limit ([`MAX_EVENT_LEN`]).
        max: usize,
        /// The part, shortened and escaped.
        part: String,
    },
}

/// Why a JSON target is not `TOKEN`, `pre*` or `*`. hasses' grammar reads these leniently
/// (`a-b` excepts `b`, `a*b` is `a*`); a JSON target has no such second meaning to fall back
/// on, so it is refused rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFault {
    /// A `-`: in hasses' grammar it starts the client id to except, which JSON says in `"except"`.
    Dash,
    /// A `*` that does not end it: only `pre*` and `*` are wildcards.
    InnerStar,
    /// A control character: no client may subscribe to such a token.
    ControlChar,
}

impl fmt::Display for TargetFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetFault::Dash => "holds a '-' (a client id to leave out goes in \"except\")",
            TargetFault::InnerStar => "has a '*' before its end (only TOKEN, pre* or *)",
            TargetFault::ControlChar => "holds a control character",
        })
    }
}

/// The longest JSON `"event"` type, in bytes: types are short words such as `chat`; a long one
/// is a mistake, and it would be repeated in every frame.
pub const MAX_EVENT_LEN: usize = 128;

/// A publish written as one JSON object, on a line of its own:
///
/// ```text
/// {"to":["room1","user*"],"event":"chat","data":"line 1\nline 2"}
/// ```
///
/// - `to` (required): a target as hasses writes it, `TOKEN`, `pre*` or `*`, or an array of
///   them; a client that several match gets one copy.
/// - `data` (required): the message, a string; its line breaks (`\n`, `\r\n`, `\r`) start new
///   `data:` lines, which the browser joins back with `\n`.
/// - `except`: the id of a client that must not get it.
/// - `event`: the SSE event type (`event:`), one line, at most [`MAX_EVENT_LEN`] bytes.
/// - `retry`: the reconnection time to set in the browser (`retry:`), in milliseconds.
/// - `ack`: `true` asks for this publish's receipt (`OK <id>` or `ERR <reason>`) on a control
///   connection whose acknowledgments are off; the HTTP API answers every publish anyway.
///
/// Unknown fields are refused, not ignored: a typo such as `"date"` must not publish nothing
/// without a word.
///
/// The target and the data are borrowed from what they were read from when they need no
/// unescaping: the publish is the first copy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPublish<'a> {
    #[serde(borrow)]
    to: Targets<'a>,
    #[serde(borrow)]
    data: Cow<'a, str>,
    except: Option<String>,
    event: Option<String>,
    retry: Option<u32>,
    #[serde(default)]
    ack: bool,
}

/// `"to"`: one target or several, as written. One, the usual, needs no list of its own.
#[derive(Debug)]
pub enum Targets<'a> {
    /// One target.
    One(Cow<'a, str>),
    /// None, or several.
    Many(Vec<Cow<'a, str>>),
}

impl Default for Targets<'_> {
    fn default() -> Self {
        Targets::Many(Vec::new())
    }
}

impl<'a> Targets<'a> {
    /// Adds a target.
    pub fn push(&mut self, target: Cow<'a, str>) {
        match self {
            Targets::Many(none) if none.is_empty() => *self = Targets::One(target),
            Targets::One(first) => *self = Targets::Many(vec![std::mem::take(first), target]),
            Targets::Many(many) => many.push(target),
        }
    }

    /// The targets, in order.
    pub fn as_slice(&self) -> &[Cow<'a, str>] {
        match self {
            Targets::One(one) => std::slice::from_ref(one),
            Targets::Many(many) => many,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Targets<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Targets<'a>, D::Error> {
        // By hand rather than an untagged enum, whose error would not say what was expected.
        struct OneOrMany;
        impl<'de> de::Visitor<'de> for OneOrMany {
            type Value = Targets<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a target or an array of targets")
            }

            fn visit_borrowed_str<E: de::Error>(self, target: &'de str) -> Result<Targets<'de>, E> {
                Ok(Targets::One(Cow::Borrowed(target)))
            }

            fn visit_str<E: de::Error>(self, target: &str) -> Result<Targets<'de>, E> {
                Ok(Targets::One(Cow::Owned(target.to_owned())))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Targets<'de>, A::Error> {
                let mut targets = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(target) = seq.next_element::<String>()? {
                    targets.push(Cow::Owned(target));
                }
                Ok(Targets::Many(targets))
            }
        }
        deserializer.deserialize_any(OneOrMany)
    }
}

impl<'a> JsonPublish<'a> {
    /// The publish an HTML form's fields ask for (the HTTP API's other body): the same fields,
    /// checked the same way by [`JsonPublish::check`].
    pub fn from_form(
        to: Targets<'a>,
        data: Cow<'a, str>,
        except: Option<String>,
        event: Option<String>,
        retry: Option<u32>,
    ) -> JsonPublish<'a> {
        JsonPublish { to, data, except, event, retry, ack: false }
    }

    /// Checks every field as hasses' grammar checks its own, into the publish it asks for;
    /// `part` is what the fields came from, for the error's excerpt.
    pub fn check(self, part: &[u8], limits: &Limits) -> Result<Publish, CommandError> {
        self.check_with_ack(part, limits).map(|(publish, _)| publish)
    }

    /// [`JsonPublish::check`], and whether it asks for its receipt.
    fn check_with_ack(self, part: &[u8], limits: &Limits) -> Result<(Publish, Ack), CommandError> {
        let ack = if self.ack { Ack::Asked } else { Ack::AsConnection };
        let to = self.to.as_slice();
        if to.is_empty() {
            return Err(CommandError::NoTarget { part: excerpt(part) });
        }
        let targets = to.iter().map(|target| json_target(target, part)).collect::<Result<_, _>>()?;
        let except = self.except.map(|id| check_id(id, part)).transpose()?;
        check_message_len(self.data.len(), limits, part)?;
        if let Some(event) = &self.event {
            check_event(event, part)?;
        }
        let audience = Audience { targets, except };
        let message = self.data.into_owned().into_bytes();
        Ok((Publish { audience, message, event: self.event, retry: self.retry }, ack))
    }
}

/// `TOKEN`, `pre*` or `*`, strictly: see [`TargetFault`].
fn json_target(target: &str, part: &[u8]) -> Result<Target, CommandError> {
    match target_fault(target) {
        Some(fault) => {
            Err(CommandError::BadTarget { target: excerpt(target.as_bytes()), fault, part: excerpt(part) })
        }
        None => parse_target(target, part),
    }
}

/// What is wrong with a JSON target, if anything: a `-` before all else, then a `*` before its
/// end, then a control character. One pass over its bytes (a target is a few bytes, for which
/// a byte loop beats a search's set-up); a C1 control character is looked for only in a
/// target that is not ASCII.
fn target_fault(target: &str) -> Option<TargetFault> {
    let last = target.len().saturating_sub(1);
    let (mut inner_star, mut control, mut ascii) = (false, false, true);
    for (at, &byte) in target.as_bytes().iter().enumerate() {
        match byte {
            b'-' => return Some(TargetFault::Dash),
            b'*' => inner_star |= at < last,
            0x00..=0x1f | 0x7f => control = true,
            0x80.. => ascii = false,
            _ => {}
        }
    }
    if inner_star {
        Some(TargetFault::InnerStar)
    } else if control || (!ascii && target.contains(char::is_control)) {
        Some(TargetFault::ControlChar)
    } else {
        None
    }
}

fn check_event(event: &str, part: &[u8]) -> Result<(), CommandError> {
    if event.contains(['\r', '\n']) {
        Err(CommandError::EventLineBreak { part: excerpt(part) })
    } else if event.len() > MAX_EVENT_LEN {
        Err(CommandError::EventTooLong { len: event.len(), max: MAX_EVENT_LEN, part: excerpt(part) })
    } else {
        Ok(())
    }
}

/// How many bytes of an offending part an error keeps: enough to recognise it in a log line,
/// not a whole 64 KiB message.
const EXCERPT_LEN: usize = 80;
/// How many bytes of the JSON parser's complaint an error keeps: the longest it writes about a
/// sensible field fits.
const JSON_ERROR_LEN: usize = 160;

/// Reads `json`, which must be a JSON object, as a publish ([`JsonPublish`]): what a JSON
/// control line and the HTTP API's publish both say.
pub fn parse_json_publish(json: &[u8], limits: &Limits) -> Result<Publish, CommandError> {
    parse_json(json, limits).map(|(publish, _)| publish)
}

pub(crate) fn parse_json(json: &[u8], limits: &Limits) -> Result<(Publish, Ack), CommandError> {
    match serde_json::from_slice::<JsonPublish>(json) {
        Ok(publish) => publish.check_with_ack(json, limits),
        Err(e) => Err(CommandError::BadJson { error: json_error(&e), part: excerpt(json) }),
    }
}

/// Whether `part`, a command that was refused, is a JSON object asking for its receipt
/// (`"ack":true`): its publisher waits for an answer, so it is told why. Read again only on
/// this error path.
pub fn asks_ack(part: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct AckField {
        #[serde(default)]
        ack: serde_json::Value,
    }
    opens_json(part)
        && serde_json::from_slice::<AckField>(part)
            .is_ok_and(|fields| fields.ack == serde_json::Value::Bool(true))
}

/// Whether `line` is a JSON object: its first non-blank byte is `{` and it parses as JSON (a
/// value that opens with `{` is an object). Such a line is one command, separators and all.
pub fn is_json_object(line: &[u8]) -> bool {
    opens_json(line) && serde_json::from_slice::<IgnoredAny>(line).is_ok()
}

/// Whether the first non-blank byte of `part` is `{`: it may be JSON. [`LineStart`] reads the
/// same from a line's first bytes.
pub(crate) fn opens_json(part: &[u8]) -> bool {
    part.trim_ascii_start().first() == Some(&JSON_OPEN)
}

/// `TOKEN[-UNIQ]=MESSAGE`: only the token is trimmed; the message is kept byte for byte.
pub(crate) fn parse_publish(part: &[u8], limits: &Limits) -> Result<Publish, CommandError> {
    let Some(eq) = part.iter().position(|b| *b == b'=') else {
        return Err(CommandError::NotACommand { part: excerpt(part) });
    };
    let (token, message) = (utf8(part[..eq].trim_ascii(), part)?, &part[eq + 1..]);
    let (target, except) = match token.split_once('-') {
        Some((target, except)) => (target, Some(except)),
        None => (token, None),
    };
    let target = parse_target(target, part)?;
    let except = except.map(|id| parse_except(id, part)).transpose()?;
    check_message_len(message.len(), limits, part)?;
    let audience = Audience { targets: smallvec![target], except };
    Ok(Publish { audience, message: message.to_vec(), event: None, retry: None })
}

/// `*`, `pre*` (anything after the first `*` ignored, as hasses does) or a plain token.
fn parse_target(target: &str, part: &[u8]) -> Result<Target, CommandError> {
    let (name, wildcard) = match target.bytes().position(|b| b == b'*') {
        Some(star) => (&target[..star], true),
        None => (target, false),
    };
    if name.len() > MAX_TOKEN_LEN {
        let (len, max) = (name.len(), MAX_TOKEN_LEN);
        return Err(CommandError::TokenTooLong { len, max, part: excerpt(part) });
    }
    match (name.is_empty(), wildcard) {
        (true, false) => Err(CommandError::EmptyTarget { part: excerpt(part) }),
        (true, true) => Ok(Target::All),
        (false, true) => Ok(Target::Prefix(name.into())),
        (false, false) => Ok(Target::Token(name.into())),
    }
}

/// The client id after the first `-`. Later `-`s belong to the id.
fn parse_except(id: &str, part: &[u8]) -> Result<String, CommandError> {
    // A `*` here is the wildcard of a target misplaced after the `-` (`a-b*=x`).
    if id.contains('*') {
        return Err(CommandError::StarAfterDash { part: excerpt(part) });
    }
    check_id(id.to_owned(), part)
}

/// A client id to except: not empty, not longer than any client's id may be.
fn check_id(id: String, part: &[u8]) -> Result<String, CommandError> {
    if id.is_empty() {
        Err(CommandError::EmptyExcept { part: excerpt(part) })
    } else if id.len() > MAX_ID_LEN {
        Err(CommandError::IdTooLong { len: id.len(), max: MAX_ID_LEN, part: excerpt(part) })
    } else {
        Ok(id)
    }
}

/// hasses would have cut a longer message and corrupted the stream; we refuse it.
fn check_message_len(len: usize, limits: &Limits, part: &[u8]) -> Result<(), CommandError> {
    if len > limits.max_message {
        return Err(CommandError::MessageTooLong { len, max: limits.max_message, part: excerpt(part) });
    }
    Ok(())
}

/// Tokens and ids are compared with what clients sent in their (UTF-8) query string.
pub(crate) fn utf8<'a>(bytes: &'a [u8], part: &[u8]) -> Result<&'a str, CommandError> {
    std::str::from_utf8(bytes).map_err(|_| CommandError::NotUtf8 { part: excerpt(part) })
}

/// The start of `part`, safe to put in a log line: a control byte can't break or forge a line.
pub(crate) fn excerpt(part: &[u8]) -> String {
    shortened(part, EXCERPT_LEN)
}

/// What the JSON parser says is wrong, safe to put in a log line: it quotes the publisher's own
/// text (an unknown field's name), which may be long or hold a line break.
fn json_error(e: &serde_json::Error) -> String {
    shortened(e.to_string().as_bytes(), JSON_ERROR_LEN)
}

/// The first `max` bytes of `text`, escaped, with its size when it was longer.
fn shortened(text: &[u8], max: usize) -> String {
    let shown = &text[..text.len().min(max)];
    let mut out = String::new();
    for chunk in shown.utf8_chunks() {
        out.extend(chunk.valid().escape_debug());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    if shown.len() < text.len() {
        out.push_str(&format!("... ({} bytes)", text.len()));
    }
    out
}

/// The byte that opens a JSON object, and so may start a JSON command.
pub(crate) const JSON_OPEN: u8 = b'{';

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_targets_fault_is_what_three_searches_find(target in "[ab*\\-\u{1}\u{7f}\u{85}é]{0,8}") {
            let searched = if target.contains('-') {
                Some(TargetFault::Dash)
            } else if target.find('*').is_some_and(|star| star + 1 < target.len()) {
                Some(TargetFault::InnerStar)
            } else if target.contains(char::is_control) {
                Some(TargetFault::ControlChar)
            } else {
                None
            };
            proptest::prop_assert_eq!(target_fault(&target), searched);
        }
    }
}
