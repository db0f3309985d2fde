//! The control command grammar: one part of a control line becomes one typed [`Command`].
//!
//! Owns the exact command words of hasses 1.30 and the `TOKEN[-UNIQ]=MESSAGE` publish syntax.
//! Pure functions over bytes: it never touches a socket, a shard or a log.

use std::fmt;

use crate::limits::{Limits, MAX_ID_LEN, MAX_TOKEN_LEN};
use crate::pipeline::write_escaped;
pub use crate::pipeline::{Audience, Target};

/// What one part of a control line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A question about the server, and where its answer goes: `status` and the other plain
    /// words write hasses' lines to the log; their `tcp…` twins answer the asking connection.
    Query(Query, Answer),
    /// `loglevel_quiet` / `loglevel_normal` / `loglevel_debug`: 0 / 1 / 2.
    SetLogLevel(u8),
    /// `reinit_enable` / `reinit_disable`.
    SetReinit(bool),
    /// `TOKEN[-UNIQ]=MESSAGE`.
    Publish(Publish),
}

/// A question about the server, answered off the publish path (by [`crate::admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `status`: the status block; `tcpstatus`: the same as JSON.
    Status,
    /// `clientlist`: a block per client; `tcpclientlist`: a JSON array (ours; hasses has none).
    ClientList,
    /// `numberofclients`: `Number of connected clients: N`; `tcpnumberofclients`:
    /// `{"numberofclients": N}`.
    NumberOfClients,
    /// `subscribedclients:TOKEN`: `Client count subscribed for "TOKEN": N`;
    /// `tcpsubscribedclients:TOKEN`: `{"subscribedclients": N, "subscribedfor": "TOKEN"}`.
    SubscribedClients(String),
}

/// Where the answer to a [`Query`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// hasses' lines, to the log, whatever the log level.
    Log,
    /// JSON, to the TCP connection that asked (the FIFO cannot be answered).
    Reply,
}

/// The commands that are one fixed word, as hasses spells them.
const WORDS: [Command; 11] = [
    Command::Query(Query::Status, Answer::Log),
    Command::Query(Query::Status, Answer::Reply),
    Command::Query(Query::ClientList, Answer::Log),
    Command::Query(Query::ClientList, Answer::Reply),
    Command::Query(Query::NumberOfClients, Answer::Log),
    Command::Query(Query::NumberOfClients, Answer::Reply),
    Command::SetLogLevel(0),
    Command::SetLogLevel(1),
    Command::SetLogLevel(2),
    Command::SetReinit(true),
    Command::SetReinit(false),
];

impl Command {
    /// The word of a one-word command; `None` for those that carry a token or a message.
    fn word(&self) -> Option<&'static str> {
        Some(match self {
            Command::Query(Query::Status, Answer::Log) => "status",
            Command::Query(Query::Status, Answer::Reply) => "tcpstatus",
            Command::Query(Query::ClientList, Answer::Log) => "clientlist",
            Command::Query(Query::ClientList, Answer::Reply) => "tcpclientlist",
            Command::Query(Query::NumberOfClients, Answer::Log) => "numberofclients",
            Command::Query(Query::NumberOfClients, Answer::Reply) => "tcpnumberofclients",
            Command::SetLogLevel(0) => "loglevel_quiet",
            Command::SetLogLevel(1) => "loglevel_normal",
            Command::SetLogLevel(_) => "loglevel_debug",
            Command::SetReinit(true) => "reinit_enable",
            Command::SetReinit(false) => "reinit_disable",
            Command::Query(Query::SubscribedClients(_), _) | Command::Publish(_) => return None,
        })
    }
}

/// A message and who gets it: `TOKEN[-UNIQ]=MESSAGE`.
///
/// ```text
/// room1=hello        Token("room1"), to clients subscribed to room1
/// *=hello            All
/// room*=hello        Prefix("room"), to clients subscribed to room1, room2, …
/// room1-abc=hello    Token("room1"), except the client whose id is abc (also *-abc, room*-abc)
/// ```
///
/// ASCII whitespace around `TOKEN[-UNIQ]` is ignored; the message is everything after the first
/// `=`, byte for byte (it may hold `=`, be empty, or be any bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Who gets it: the subscribers its targets match, less the client `-UNIQ` names.
    pub audience: Audience,
    /// Everything after the first `=`, as sent: the event's data.
    pub message: Vec<u8>,
    /// The event's type (`event:`), from a JSON command; none for hasses' form.
    pub event: Option<String>,
    /// The reconnection time to set (`retry:`, milliseconds), from a JSON command.
    pub retry: Option<u32>,
}

/// As a publisher writes it, for log lines; the message is shown by its size only.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Query(Query::SubscribedClients(token), answer) => {
                if *answer == Answer::Reply {
                    f.write_str("tcp")?;
                }
                f.write_str("subscribedclients:")?;
                write_escaped(f, token)
            }
            Command::Publish(publish) => write!(f, "{}=({} bytes)", publish.audience, publish.message.len()),
            one_word => f.write_str(one_word.word().unwrap_or_default()),
        }
    }
}

/// `"room1"`, `"room1" except "abc"`: whom a publish is for, in the words of hasses' log line.
impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, target) in self.audience.targets.iter().enumerate() {
            f.write_str(if i == 0 { "\"" } else { ", \"" })?;
            write!(f, "{target}\"")?;
        }
        if let Some(except) = &self.audience.except {
            f.write_str(" except \"")?;
            write_escaped(f, except)?;
            f.write_str("\"")?;
        }
        Ok(())
    }
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
    /// A `-` with no client id after it (`a-=x`).
    #[error("empty client id after '-': \"{part}\"")]
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
}

/// How many bytes of an offending part an error keeps: enough to recognise it in a log line,
/// not a whole 64 KiB message.
const EXCERPT_LEN: usize = 80;

/// Parses one part (a line already split on the separator, not empty) into a command.
///
/// Command words are matched exactly (case-sensitive) after trimming ASCII whitespace at both
/// ends; anything else must be `TOKEN[-UNIQ]=MESSAGE`, see [`Publish`].
pub fn parse_command(part: &[u8], limits: &Limits) -> Result<Command, CommandError> {
    match parse_word(part.trim_ascii()) {
        Some(command) => command,
        None => parse_publish(part, limits).map(Command::Publish),
    }
}

/// The command words; `None` when `word` is none of them (then it may be a publish).
fn parse_word(word: &[u8]) -> Option<Result<Command, CommandError>> {
    match WORDS.iter().find(|command| command.word().is_some_and(|w| w.as_bytes() == word)) {
        Some(command) => Some(Ok(command.clone())),
        None => parse_count_query(word),
    }
}

/// `subscribedclients:TOKEN` and `tcpsubscribedclients:TOKEN`. The token is taken as is (even
/// empty, even holding `=`): command words come before the publish syntax, so
/// `subscribedclients:a=b` asks about the token `a=b` rather than publishing.
fn parse_count_query(word: &[u8]) -> Option<Result<Command, CommandError>> {
    let (token, answer) = match word.strip_prefix(b"tcp") {
        Some(rest) => (rest.strip_prefix(b"subscribedclients:")?, Answer::Reply),
        None => (word.strip_prefix(b"subscribedclients:")?, Answer::Log),
    };
    Some(utf8(token, word).map(|t| Command::Query(Query::SubscribedClients(t.to_owned()), answer)))
}

/// `TOKEN[-UNIQ]=MESSAGE`: only the token is trimmed; the message is kept byte for byte.
fn parse_publish(part: &[u8], limits: &Limits) -> Result<Publish, CommandError> {
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
    if message.len() > limits.max_message {
        return Err(CommandError::MessageTooLong {
            len: message.len(),
            max: limits.max_message,
            part: excerpt(part),
        });
    }
    let audience = Audience { targets: vec![target], except };
    Ok(Publish { audience, message: message.to_vec(), event: None, retry: None })
}

/// `*`, `pre*` (anything after the first `*` ignored, as hasses does) or a plain token.
fn parse_target(target: &str, part: &[u8]) -> Result<Target, CommandError> {
    let (name, wildcard) = match target.split_once('*') {
        Some((prefix, _ignored)) => (prefix, true),
        None => (target, false),
    };
    if name.len() > MAX_TOKEN_LEN {
        let (len, max) = (name.len(), MAX_TOKEN_LEN);
        return Err(CommandError::TokenTooLong { len, max, part: excerpt(part) });
    }
    match (name.is_empty(), wildcard) {
        (true, false) => Err(CommandError::EmptyTarget { part: excerpt(part) }),
        (true, true) => Ok(Target::All),
        (false, true) => Ok(Target::Prefix(name.to_owned())),
        (false, false) => Ok(Target::Token(name.to_owned())),
    }
}

/// The client id after the first `-`. Later `-`s belong to the id.
fn parse_except(id: &str, part: &[u8]) -> Result<String, CommandError> {
    let part = || excerpt(part);
    if id.is_empty() {
        Err(CommandError::EmptyExcept { part: part() })
    } else if id.contains('*') {
        Err(CommandError::StarAfterDash { part: part() })
    } else if id.len() > MAX_ID_LEN {
        let (len, max) = (id.len(), MAX_ID_LEN);
        Err(CommandError::IdTooLong { len, max, part: part() })
    } else {
        Ok(id.to_owned())
    }
}

/// Tokens and ids are compared with what clients sent in their (UTF-8) query string.
fn utf8<'a>(bytes: &'a [u8], part: &[u8]) -> Result<&'a str, CommandError> {
    std::str::from_utf8(bytes).map_err(|_| CommandError::NotUtf8 { part: excerpt(part) })
}

/// The start of `part`, safe to put in a log line: a control byte can't break or forge a line.
fn excerpt(part: &[u8]) -> String {
    let shown = &part[..part.len().min(EXCERPT_LEN)];
    let mut out = String::new();
    for chunk in shown.utf8_chunks() {
        out.extend(chunk.valid().escape_debug());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    if shown.len() < part.len() {
        out.push_str(&format!("... ({} bytes)", part.len()));
    }
    out
}

/// The word that starts an auth line.
const AUTH: &[u8] = b"auth";

/// What the start of a line says about it being an auth line, read a byte at a time.
///
/// Line framing needs this at every separator: an auth line is never split on the separator
/// (its secret may hold one), so a separator ends a command only on a line that can no longer
/// be an auth line. Reading stops as soon as the answer is known, so a line costs at most its
/// leading whitespace and five bytes. It agrees with [`auth_secret`]: a line whose start reads
/// [`Auth`](Self::Auth) is an auth line whatever follows, one whose start reads
/// [`Other`](Self::Other) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStart {
    /// Whitespace, then the first `n` bytes of `auth`: it may still be an auth line.
    Open(usize),
    /// `auth` and a whitespace byte: an auth line.
    Auth,
    /// Anything else: not an auth line.
    Other,
}

impl Default for LineStart {
    fn default() -> Self {
        LineStart::Open(0)
    }
}

impl LineStart {
    /// The state after reading `bytes`, the next bytes of the line.
    pub fn read(self, bytes: &[u8]) -> LineStart {
        let mut state = self;
        for &byte in bytes {
            state = match state {
                LineStart::Open(0) if byte.is_ascii_whitespace() => state,
                LineStart::Open(n) if n == AUTH.len() && byte.is_ascii_whitespace() => LineStart::Auth,
                LineStart::Open(n) if AUTH.get(n) == Some(&byte) => LineStart::Open(n + 1),
                LineStart::Open(_) => LineStart::Other,
                decided => return decided,
            };
        }
        state
    }
}

/// The secret given by an `auth SECRET` line, or `None` when `line` is not an auth line.
///
/// An auth line is a whole line, never split on the separator: the word `auth`, then ASCII
/// whitespace, then the secret (whitespace around the line and the secret ignored; a secret may
/// hold the separator). `auth` alone gives an empty secret. `authx …` is not an auth line.
pub fn auth_secret(line: &[u8]) -> Option<&[u8]> {
    let rest = line.trim_ascii().strip_prefix(AUTH)?;
    match rest.first() {
        None => Some(rest),
        Some(b) if b.is_ascii_whitespace() => Some(rest.trim_ascii()),
        Some(_) => None,
    }
}

/// Splits a line on `separator`, dropping empty and blank parts.
pub fn split_parts(line: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    // `status; ` leaves a blank part behind: nothing was asked there, so nothing to log.
    line.split(move |b| *b == separator).filter(|p| !p.trim_ascii().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(part: &[u8]) -> Result<Command, CommandError> {
        parse_command(part, &Limits::default())
    }

    fn publish(target: Target, except: Option<&str>, message: &[u8]) -> Result<Command, CommandError> {
        let audience = Audience { targets: vec![target], except: except.map(str::to_owned) };
        Ok(Command::Publish(Publish { audience, message: message.to_vec(), event: None, retry: None }))
    }

    fn token(name: &str) -> Target {
        Target::Token(name.to_owned())
    }

    fn prefix(name: &str) -> Target {
        Target::Prefix(name.to_owned())
    }

    fn shown(part: &str) -> String {
        parse(part.as_bytes()).unwrap().to_string()
    }

    #[test]
    fn commands_show_as_a_publisher_writes_them() {
        for word in [
            "status",
            "tcpstatus",
            "clientlist",
            "tcpclientlist",
            "numberofclients",
            "tcpnumberofclients",
            "loglevel_quiet",
            "loglevel_normal",
            "loglevel_debug",
            "reinit_enable",
            "reinit_disable",
            "subscribedclients:room1",
            "tcpsubscribedclients:a=b",
        ] {
            assert_eq!(shown(word), word);
        }
        assert_eq!(shown("room1-abc=hello"), "room1-abc=(5 bytes)");
        assert_eq!(shown("*=x"), "*=(1 bytes)");
        assert_eq!(shown("news*-u1=x"), "news*-u1=(1 bytes)");
        assert_eq!(shown("tcpsubscribedclients:a\x1bb"), "tcpsubscribedclients:a\\u{1b}b");
    }

    #[test]
    fn a_publish_names_its_recipients_in_hasses_words() {
        let recipients = |part: &str| match parse(part.as_bytes()) {
            Ok(Command::Publish(publish)) => publish.to_string(),
            other => panic!("{part}: {other:?}"),
        };
        assert_eq!(recipients("room1=x"), "\"room1\"");
        assert_eq!(recipients("room1-abc=x"), "\"room1\" except \"abc\"");
        assert_eq!(recipients("*=x"), "\"*\"");
        assert_eq!(recipients("news*=x"), "\"news*\"");
        assert_eq!(recipients("a\tb=x"), "\"a\\tb\"");
    }

    #[test]
    fn every_command_word() {
        let words: [(&[u8], Command); 11] = [
            (b"status", Command::Query(Query::Status, Answer::Log)),
            (b"tcpstatus", Command::Query(Query::Status, Answer::Reply)),
            (b"clientlist", Command::Query(Query::ClientList, Answer::Log)),
            (b"tcpclientlist", Command::Query(Query::ClientList, Answer::Reply)),
            (b"numberofclients", Command::Query(Query::NumberOfClients, Answer::Log)),
            (b"tcpnumberofclients", Command::Query(Query::NumberOfClients, Answer::Reply)),
            (b"loglevel_quiet", Command::SetLogLevel(0)),
            (b"loglevel_normal", Command::SetLogLevel(1)),
            (b"loglevel_debug", Command::SetLogLevel(2)),
            (b"reinit_enable", Command::SetReinit(true)),
            (b"reinit_disable", Command::SetReinit(false)),
        ];
        for (word, command) in words {
            assert_eq!(parse(word), Ok(command), "{}", word.escape_ascii());
        }
    }

    #[test]
    fn count_queries_take_the_token_as_is() {
        let count = |t: &str| Ok(Command::Query(Query::SubscribedClients(t.to_owned()), Answer::Log));
        let tcp_count = |t: &str| Ok(Command::Query(Query::SubscribedClients(t.to_owned()), Answer::Reply));
        assert_eq!(parse(b"subscribedclients:room1"), count("room1"));
        assert_eq!(parse(b"subscribedclients:"), count(""));
        assert_eq!(parse(b"subscribedclients:a:b=c"), count("a:b=c"));
        assert_eq!(parse(b"tcpsubscribedclients:room1"), tcp_count("room1"));
        assert_eq!(parse(b"tcpsubscribedclients:"), tcp_count(""));
    }

    #[test]
    fn words_are_trimmed_and_case_sensitive() {
        assert_eq!(parse(b" \tstatus \r"), Ok(Command::Query(Query::Status, Answer::Log)));
        let count = Command::Query(Query::SubscribedClients("x".into()), Answer::Log);
        assert_eq!(parse(b" subscribedclients:x "), Ok(count));
        assert!(matches!(parse(b"Status"), Err(CommandError::NotACommand { .. })));
        assert!(matches!(parse(b"statusx"), Err(CommandError::NotACommand { .. })));
        assert!(matches!(parse(b"SubscribedClients:x"), Err(CommandError::NotACommand { .. })));
    }

    #[test]
    fn only_tcp_commands_reply_over_tcp() {
        let tcp =
            [b"tcpstatus".as_slice(), b"tcpclientlist", b"tcpnumberofclients", b"tcpsubscribedclients:x"];
        for word in tcp {
            assert!(matches!(parse(word), Ok(Command::Query(_, Answer::Reply))), "{word:?}");
        }
        let local = [b"status".as_slice(), b"clientlist", b"numberofclients", b"subscribedclients:x"];
        for word in local {
            assert!(matches!(parse(word), Ok(Command::Query(_, Answer::Log))), "{word:?}");
        }
    }

    #[test]
    fn publish_forms_from_the_spec() {
        assert_eq!(parse(b"room1=hello"), publish(token("room1"), None, b"hello"));
        assert_eq!(parse(b"*=x"), publish(Target::All, None, b"x"));
        assert_eq!(parse(b"room*=x"), publish(prefix("room"), None, b"x"));
        assert_eq!(parse(b"room1-abc=x"), publish(token("room1"), Some("abc"), b"x"));
        assert_eq!(parse(b"*-abc=x"), publish(Target::All, Some("abc"), b"x"));
        assert_eq!(parse(b"room*-abc=x"), publish(prefix("room"), Some("abc"), b"x"));
        assert_eq!(parse(b"a=x=y"), publish(token("a"), None, b"x=y"));
    }

    #[test]
    fn publish_edge_forms() {
        assert_eq!(parse(b"a="), publish(token("a"), None, b""));
        assert_eq!(parse(b"room*ignored=x"), publish(prefix("room"), None, b"x"));
        assert_eq!(parse(b"**=x"), publish(Target::All, None, b"x"));
        assert_eq!(parse(b"a-b-c=x"), publish(token("a"), Some("b-c"), b"x"));
        assert_eq!(parse(b"status=x"), publish(token("status"), None, b"x"));
        assert_eq!(parse(b"a:b=x"), publish(token("a:b"), None, b"x"));
    }

    #[test]
    fn only_the_token_is_trimmed() {
        assert_eq!(parse(b" \troom1 = hello \r"), publish(token("room1"), None, b" hello \r"));
        assert_eq!(parse(b"a=\xff\x00\r"), publish(token("a"), None, b"\xff\x00\r"));
    }

    #[test]
    fn malformed_parts() {
        assert!(matches!(parse(b"hello"), Err(CommandError::NotACommand { .. })));
        assert!(matches!(parse(b"   "), Err(CommandError::NotACommand { .. })));
        assert!(matches!(parse(b"=x"), Err(CommandError::EmptyTarget { .. })));
        assert!(matches!(parse(b" =x"), Err(CommandError::EmptyTarget { .. })));
        assert!(matches!(parse(b"-abc=x"), Err(CommandError::EmptyTarget { .. })));
        assert!(matches!(parse(b"a-=x"), Err(CommandError::EmptyExcept { .. })));
        assert!(matches!(parse(b"*-=x"), Err(CommandError::EmptyExcept { .. })));
        assert!(matches!(parse(b"a-b*=x"), Err(CommandError::StarAfterDash { .. })));
        assert!(matches!(parse(b"a-*=x"), Err(CommandError::StarAfterDash { .. })));
    }

    #[test]
    fn limits_are_inclusive() {
        let at = |n: usize| "t".repeat(n);
        let ok = format!("{}-{}=x", at(MAX_TOKEN_LEN), at(MAX_ID_LEN));
        assert!(parse(ok.as_bytes()).is_ok());
        let long_token = format!("{}=x", at(MAX_TOKEN_LEN + 1));
        let err = parse(long_token.as_bytes()).unwrap_err();
        assert!(matches!(err, CommandError::TokenTooLong { len: 129, max: 128, .. }), "{err}");
        let long_prefix = format!("{}*=x", at(MAX_TOKEN_LEN + 1));
        assert!(matches!(parse(long_prefix.as_bytes()), Err(CommandError::TokenTooLong { .. })));
        let long_id = format!("a-{}=x", at(MAX_ID_LEN + 1));
        assert!(matches!(parse(long_id.as_bytes()), Err(CommandError::IdTooLong { len: 65, max: 64, .. })));
    }

    #[test]
    fn message_over_the_limit_is_refused() {
        let limits = Limits { max_message: 5 };
        assert!(parse_command(b"a=12345", &limits).is_ok());
        let err = parse_command(b"a=123456", &limits).unwrap_err();
        assert!(matches!(err, CommandError::MessageTooLong { len: 6, max: 5, .. }), "{err}");
    }

    #[test]
    fn non_utf8_tokens_and_ids_are_refused() {
        for part in
            [b"a\xff=x".as_slice(), b"a-\xff=x", b"subscribedclients:\xff", b"tcpsubscribedclients:\xc3"]
        {
            assert!(matches!(parse(part), Err(CommandError::NotUtf8 { .. })), "{}", part.escape_ascii());
        }
    }

    #[test]
    fn error_text_is_short_and_escaped() {
        let mut part = b"x\xff\r\x1b\"".to_vec();
        part.resize(part.len() + 100_000, b'y');
        let text = parse(&part).unwrap_err().to_string();
        assert!(
            text.starts_with(r#"not a command and not TOKEN=MESSAGE (no '='): "x\xff\r\u{1b}\"yyy"#),
            "{text}"
        );
        assert!(text.ends_with("... (100005 bytes)\""), "{text}");
        assert!(text.len() < 200);
        assert!(!text.contains(['\r', '\n']));
    }

    #[test]
    fn auth_lines() {
        assert_eq!(auth_secret(b"auth s3cret"), Some(&b"s3cret"[..]));
        assert_eq!(auth_secret(b"  auth \t s3 cr;et  "), Some(&b"s3 cr;et"[..]));
        assert_eq!(auth_secret(b"auth"), Some(&b""[..]));
        assert_eq!(auth_secret(b"auth  "), Some(&b""[..]));
        assert_eq!(auth_secret(b"authx"), None);
        assert_eq!(auth_secret(b"auth=x"), None);
        assert_eq!(auth_secret(b"Auth x"), None);
        assert_eq!(auth_secret(b"status"), None);
        assert_eq!(auth_secret(b""), None);
    }

    #[test]
    fn line_starts() {
        let read = |bytes: &[u8]| LineStart::default().read(bytes);
        assert_eq!(read(b""), LineStart::Open(0));
        assert_eq!(read(b" \t "), LineStart::Open(0));
        assert_eq!(read(b" aut"), LineStart::Open(3));
        assert_eq!(read(b"auth"), LineStart::Open(4));
        assert_eq!(read(b"auth "), LineStart::Auth);
        assert_eq!(read(b"  auth\ts;x"), LineStart::Auth);
        assert_eq!(read(b"auth;"), LineStart::Other);
        assert_eq!(read(b"authx"), LineStart::Other);
        assert_eq!(read(b"au;th "), LineStart::Other);
        assert_eq!(read(b"a=1"), LineStart::Other);
        assert_eq!(read(b";"), LineStart::Other);
        assert_eq!(LineStart::Other.read(b"auth "), LineStart::Other);
        assert_eq!(LineStart::Auth.read(b"x"), LineStart::Auth);
    }

    proptest! {
        #[test]
        fn a_line_start_agrees_with_auth_secret(
            line in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'u'), Just(b't'), Just(b'h'), Just(b' '), Just(b'\t'), Just(b';'), any::<u8>()],
                0..12,
            ),
            cut in 0usize..12,
        ) {
            let head = &line[..cut.min(line.len())];
            match LineStart::default().read(head) {
                LineStart::Auth => prop_assert!(auth_secret(&line).is_some()),
                LineStart::Other => prop_assert!(auth_secret(&line).is_none()),
                LineStart::Open(_) => {}
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(part in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(err) = parse(&part) {
                let text = err.to_string();
                prop_assert!(!text.contains(['\r', '\n']));
            }
        }

        #[test]
        fn grammar_like_bytes_never_panic(part in "[ a*=:\\-\\xff]{0,40}") {
            let _ = parse(part.as_bytes());
        }

        #[test]
        fn a_valid_publish_keeps_its_message(
            name in "[a-z0-9_]{1,20}",
            message in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut part = format!("{name}=").into_bytes();
            part.extend_from_slice(&message);
            let parsed = parse(&part);
            prop_assert_eq!(parsed, publish(token(&name), None, &message));
        }
    }
}
