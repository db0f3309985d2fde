//! The control command grammar: one part of a control line becomes one typed [`Command`].
//!
//! Owns the exact command words of hasses 1.30, and where a part is a publish, which the
//! publish grammars ([`crate::publish`]) read: hasses' `TOKEN[-UNIQ]=MESSAGE`, and ours beside
//! it: a publish written as a JSON object ([`JsonPublish`](crate::publish::JsonPublish)), which can say what
//! hasses' cannot (several targets, an event type, a reconnection time, line breaks in the data).
//! Pure functions over bytes: it never touches a socket, a shard or a log.
//!
//! # JSON or hasses
//! A part is a JSON command when its first non-blank byte is `{` **and** it parses as a JSON
//! object. Anything else means what it meant to hasses: `{x=1` does not parse, so it publishes
//! `1` to the token `{x`, as it always did. A line that starts with `{` is never cut at the
//! separator ([`LineStart::Json`], [`split_parts`]): a JSON line is one command, and a `;` in
//! its strings is data. A JSON object that turns out not to be a good publish (a field of the
//! wrong type, an unknown field, a bad target) is refused whole, like any malformed part.

use std::fmt;

use crate::event::{write_escaped, Publish};
use crate::gate::OrderKind;
use crate::limits::Limits;
use crate::pipeline::Query;
use crate::publish::{excerpt, is_json_object, opens_json, parse_json, parse_publish, utf8, JSON_OPEN};
pub use crate::publish::{Ack, CommandError};

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
    /// `ack on` / `ack off`: whether every publish of this connection is answered.
    SetAcks(bool),
    /// `TOKEN[-UNIQ]=MESSAGE`, or a JSON object ([`JsonPublish`](crate::publish::JsonPublish)), which may ask for its own
    /// receipt.
    Publish(Publish, Ack),
    /// `disconnect ARGS` / `revoke ARGS`: an order, its arguments `name=value` separated by
    /// `&` or blanks, read when it is carried out (a ban's end depends on when).
    Order(OrderKind, String),
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
const WORDS: [Command; 13] = [
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
    Command::SetAcks(true),
    Command::SetAcks(false),
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
            Command::SetAcks(true) => "ack on",
            Command::SetAcks(false) => "ack off",
            Command::Query(Query::SubscribedClients(_) | Query::Presence { .. } | Query::Order(_), _)
            | Command::Publish(..)
            | Command::Order(..) => return None,
        })
    }
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
            Command::Query(Query::Presence { token, count }, answer) => {
                if *answer == Answer::Reply {
                    f.write_str("tcp")?;
                }
                f.write_str(if *count { "presencecount:" } else { "presence:" })?;
                write_escaped(f, token)
            }
            Command::Order(kind, args) => {
                write!(f, "{} ", kind.word())?;
                write_escaped(f, args)
            }
            Command::Query(Query::Order(order), _) => write!(f, "{order:?}"),
            Command::Publish(publish, _) => {
                write!(f, "{}=({} bytes)", publish.audience, publish.message.len())
            }
            one_word => f.write_str(one_word.word().unwrap_or_default()),
        }
    }
}

/// Parses one part (a line already split on the separator, not empty) into a command.
///
/// A JSON object is a [`JsonPublish`](crate::publish::JsonPublish) (see the module doc for what is JSON). Otherwise command
/// words are matched exactly (case-sensitive) after trimming ASCII whitespace at both ends;
/// anything else must be `TOKEN[-UNIQ]=MESSAGE`, see [`Publish`].
pub fn parse_command(part: &[u8], limits: &Limits) -> Result<Command, CommandError> {
    if !opens_json(part) {
        return parse_hasses(part, limits);
    }
    match parse_json(part, limits) {
        // serde stops at the first bad field, before it knows whether the rest is JSON.
        Err(CommandError::BadJson { error, .. }) if !is_json_object(part) => parse_hasses(part, limits)
            .map_err(|err| match err {
                CommandError::NotACommand { part } => CommandError::NotJson { error, part },
                other => other,
            }),
        result => result.map(|(publish, ack)| Command::Publish(publish, ack)),
    }
}

/// hasses' grammar: a command word, or `TOKEN[-UNIQ]=MESSAGE`.
fn parse_hasses(part: &[u8], limits: &Limits) -> Result<Command, CommandError> {
    match parse_word(part.trim_ascii()) {
        Some(command) => command,
        None => parse_publish(part, limits).map(|publish| Command::Publish(publish, Ack::AsConnection)),
    }
}

/// The command words; `None` when `word` is none of them (then it may be a publish).
fn parse_word(word: &[u8]) -> Option<Result<Command, CommandError>> {
    match WORDS.iter().find(|command| command.word().is_some_and(|w| w.as_bytes() == word)) {
        Some(command) => Some(Ok(command.clone())),
        None => parse_count_query(word).or_else(|| parse_presence(word)).or_else(|| parse_order(word)),
    }
}

/// `presence:TOKEN`, `presencecount:TOKEN` and their `tcp…` twins: who a publish to the
/// token reaches, across the cluster. Unlike `subscribedclients:`, the token may not be empty.
fn parse_presence(word: &[u8]) -> Option<Result<Command, CommandError>> {
    let (rest, answer) = match word.strip_prefix(b"tcp") {
        Some(rest) => (rest, Answer::Reply),
        None => (word, Answer::Log),
    };
    let (token, count) = match rest.strip_prefix(b"presencecount:") {
        Some(token) => (token, true),
        None => (rest.strip_prefix(b"presence:")?, false),
    };
    if token.is_empty() {
        return Some(Err(CommandError::NotACommand { part: excerpt(word) }));
    }
    Some(utf8(token, word).map(|t| Command::Query(Query::Presence { token: t.to_owned(), count }, answer)))
}

/// `disconnect ARGS` and `revoke ARGS`: an order and its arguments, read when carried out.
fn parse_order(word: &[u8]) -> Option<Result<Command, CommandError>> {
    let kind = [OrderKind::Disconnect, OrderKind::Revoke].into_iter().find(|kind| {
        word.strip_prefix(kind.word().as_bytes())
            .is_some_and(|rest| rest.first().is_some_and(u8::is_ascii_whitespace))
    })?;
    let args = &word[kind.word().len()..];
    Some(utf8(args, word).map(|args| Command::Order(kind, args.trim().to_owned())))
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

/// The word that starts an auth line.
const AUTH: &[u8] = b"auth";

/// What the start of a line says about it being one command, read a byte at a time.
///
/// Line framing needs this at every separator: an auth line and a line that may be a JSON
/// command are never split on the separator (a secret or a JSON string may hold one), so a
/// separator ends a command only on a line that can be neither. Reading stops as soon as the
/// answer is known, so a line costs at most its leading whitespace and five bytes. It agrees
/// with [`auth_secret`]: a line whose start reads [`Auth`](Self::Auth) is an auth line whatever
/// follows, one whose start reads anything else is not; and with [`split_parts`], which cuts a
/// line that reads [`Json`](Self::Json) only if it is not a JSON object after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStart {
    /// Whitespace, then the first `n` bytes of `auth`: it may still be an auth line.
    Open(usize),
    /// `auth` and a whitespace byte: an auth line.
    Auth,
    /// Whitespace, then `{`: it may be a JSON command, known only once the line is complete.
    Json,
    /// Anything else: a line the separator cuts.
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
                LineStart::Open(0) if byte == JSON_OPEN => LineStart::Json,
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

/// The methods a browser or a proxy may send; a control line never starts with one of them
/// followed by a space and a request target.
const HTTP_METHODS: [&[u8]; 9] =
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"];

/// Whether `piece` of a control line is HTTP: a request line (`POST / HTTP/1.1`, also
/// `GET http://…` and `OPTIONS *`) or a `Host:` header. A web page can make a browser send a
/// request to any port, so a control port that took such input for commands would let any page
/// the host opens publish (a cross-protocol request); Redis closes such connections for the
/// same reason. A hasses publisher's line is neither: it needs `=`, and `POST /x=1` or
/// `Host: a=1` would be a target holding a space.
pub fn speaks_http(piece: &[u8]) -> bool {
    let piece = piece.trim_ascii_start();
    let is_request_line = HTTP_METHODS.iter().any(|method| {
        piece.strip_prefix(*method).and_then(|rest| rest.strip_prefix(b" ")).is_some_and(|target| {
            target.starts_with(b"/") || target.starts_with(b"*") || target.starts_with(b"http")
        })
    });
    is_request_line || piece.get(..5).is_some_and(|start| start.eq_ignore_ascii_case(b"host:"))
}

/// Splits a line on `separator`, dropping empty and blank parts. A JSON object is one part,
/// whatever its strings hold.
pub fn split_parts(line: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let whole = is_json_object(line);
    // `status; ` leaves a blank part behind: nothing was asked there, so nothing to log.
    line.split(move |b| *b == separator && !whole).filter(|p| !p.trim_ascii().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Audience, Target};
    use crate::limits::{MAX_ID_LEN, MAX_TOKEN_LEN};
    use crate::publish::{asks_ack, TargetFault, MAX_EVENT_LEN};
    use proptest::prelude::*;
    use smallvec::smallvec;

    fn parse(part: &[u8]) -> Result<Command, CommandError> {
        parse_command(part, &Limits::default())
    }

    fn publish(target: Target, except: Option<&str>, message: &[u8]) -> Result<Command, CommandError> {
        let audience = Audience { targets: smallvec![target], except: except.map(str::to_owned) };
        let publish = Publish { audience, message: message.to_vec(), event: None, retry: None };
        Ok(Command::Publish(publish, Ack::AsConnection))
    }

    fn token(name: &str) -> Target {
        Target::Token(name.into())
    }

    fn prefix(name: &str) -> Target {
        Target::Prefix(name.into())
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
    fn http_is_told_from_commands() {
        for http in
            ["POST / HTTP/1.1", "GET /sse?x HTTP/1.0", "OPTIONS * HTTP/1.1", "Host: 127.0.0.1:8085", "host:x"]
        {
            assert!(speaks_http(http.as_bytes()), "{http}");
        }
        assert!(speaks_http(b"GET http://example.test/ HTTP/1.1"));
        for line in ["room1=POST / HTTP/1.1", "POST=x", "GET", "hostname=x", "status", "Host=x", "POSTx /a=1"]
        {
            assert!(!speaks_http(line.as_bytes()), "{line}");
        }
    }

    #[test]
    fn acks_are_turned_on_by_a_word_or_asked_for_by_a_json_line() {
        assert_eq!(parse(b" ack on "), Ok(Command::SetAcks(true)));
        assert_eq!(parse(b"ack off"), Ok(Command::SetAcks(false)));
        assert!(parse(b"ack maybe").is_err());
        let ack_of = |line: &str| match json(line) {
            Ok(Command::Publish(_, ack)) => ack,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(ack_of(r#"{"to":"a","data":"x","ack":true}"#), Ack::Asked);
        assert_eq!(ack_of(r#"{"to":"a","data":"x","ack":false}"#), Ack::AsConnection);
        assert_eq!(ack_of(r#"{"to":"a","data":"x"}"#), Ack::AsConnection);
        assert!(matches!(parse(b"a=x"), Ok(Command::Publish(_, Ack::AsConnection))));
        assert!(json(r#"{"to":"a","data":"x","ack":"yes"}"#).is_err());
        assert!(asks_ack(br#"{"to":"a-b","data":"x","ack":true}"#), "refused, and still asks");
        assert!(!asks_ack(br#"{"to":"a-b","data":"x","ack":false}"#));
        assert!(!asks_ack(b"a-=x"));
    }

    #[test]
    fn a_publish_names_its_recipients_in_hasses_words() {
        let recipients = |part: &str| match parse(part.as_bytes()) {
            Ok(Command::Publish(publish, _)) => publish.to_string(),
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
    fn presence_questions_and_orders_take_their_token_or_arguments() {
        let presence =
            |t: &str, count, answer| Ok(Command::Query(Query::Presence { token: t.into(), count }, answer));
        assert_eq!(parse(b"presence:room1"), presence("room1", false, Answer::Log));
        assert_eq!(parse(b"tcppresence:room1"), presence("room1", false, Answer::Reply));
        assert_eq!(parse(b"presencecount:a=b"), presence("a=b", true, Answer::Log));
        assert_eq!(parse(b" tcppresencecount:room1 "), presence("room1", true, Answer::Reply));
        assert!(matches!(parse(b"tcppresence:"), Err(CommandError::NotACommand { .. })));
        assert_eq!(
            parse(b"disconnect id=u1 ban=60"),
            Ok(Command::Order(OrderKind::Disconnect, "id=u1 ban=60".into()))
        );
        assert_eq!(parse(b"revoke  jti=t1"), Ok(Command::Order(OrderKind::Revoke, "jti=t1".into())));
        assert!(matches!(parse(b"disconnect"), Err(CommandError::NotACommand { .. })), "nothing to say whom");
        assert!(
            matches!(parse(b"disconnect=x"), Ok(Command::Publish(..))),
            "a publish to the token disconnect"
        );
        for shown in ["tcppresence:room1", "presencecount:room1", "disconnect id=u1&ban=5", "revoke sub=bob"]
        {
            assert_eq!(parse(shown.as_bytes()).unwrap().to_string(), shown);
        }
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

    fn json(line: &str) -> Result<Command, CommandError> {
        parse(line.as_bytes())
    }

    /// The publish a JSON line gives.
    fn json_publish(line: &str) -> Publish {
        match json(line) {
            Ok(Command::Publish(publish, _)) => publish,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn a_json_publish_from_the_readme() {
        let publish = json_publish(r#"{"to":["room1","user*"],"event":"chat","data":"line 1\nline 2"}"#);
        let audience = Audience { targets: smallvec![token("room1"), prefix("user")], except: None };
        let expected = Publish {
            audience,
            message: b"line 1\nline 2".to_vec(),
            event: Some("chat".into()),
            retry: None,
        };
        assert_eq!(publish, expected);
        assert_eq!(
            json(r#"{"to":["room1","user*"],"data":"x"}"#).unwrap().to_string(),
            "room1,user*=(1 bytes)"
        );
    }

    #[test]
    fn every_json_field() {
        let line = r#" {"retry":3000,"except":"u-1*","data":"a;b=c","event":"e","to":"*"} "#;
        let audience = Audience { targets: smallvec![Target::All], except: Some("u-1*".into()) };
        let expected =
            Publish { audience, message: b"a;b=c".to_vec(), event: Some("e".into()), retry: Some(3000) };
        assert_eq!(json_publish(line), expected);
        let nulls = json_publish(r#"{"to":"a","data":"","except":null,"event":null,"retry":null}"#);
        assert_eq!(Ok(Command::Publish(nulls, Ack::AsConnection)), publish(token("a"), None, b""));
        assert_eq!(json_publish(r#"{"to":"a","data":"x","retry":4294967295}"#).retry, Some(u32::MAX));
    }

    #[test]
    fn escaped_targets_and_data_are_read_unescaped() {
        // Borrowed from the line when plain; these are not, and must come out the same.
        let escaped = json_publish(r#"{"to":"r\u006f\u006fm","data":"a\"b\u00e9"}"#);
        assert_eq!(escaped.audience.targets.as_slice(), [token("room")]);
        assert_eq!(escaped.message, "a\"bé".as_bytes());
        let several = json_publish(r#"{"to":["a","b\u002a","c"],"data":"x"}"#);
        assert_eq!(several.audience.targets.as_slice(), [token("a"), prefix("b"), token("c")]);
    }

    #[test]
    fn a_line_that_is_not_a_json_object_means_what_it_meant_to_hasses() {
        assert_eq!(parse(b"{x=1"), publish(token("{x"), None, b"1"));
        assert_eq!(parse(b"{x=1}"), publish(token("{x"), None, b"1}"));
        assert_eq!(parse(b" {a}-b=x"), publish(token("{a}"), Some("b"), b"x"));
        assert_eq!(parse(br#"{"to":"a"} x=1"#), publish(token(r#"{"to":"a"} x"#), None, b"1"));
    }

    #[test]
    fn broken_json_says_where_the_json_parser_stopped() {
        let err = json(r#"{"to":"a","data":"x""#).unwrap_err();
        assert!(matches!(err, CommandError::NotJson { .. }), "{err}");
        assert!(
            err.to_string().starts_with("not JSON (EOF while parsing an object at line 1 column 20)"),
            "{err}"
        );
        assert!(matches!(json("{"), Err(CommandError::NotJson { .. })));
        assert!(matches!(json("{\"to\":\"a\"}\u{ff}"), Err(CommandError::NotJson { .. })));
        assert!(matches!(json("{-=x"), Err(CommandError::EmptyExcept { .. })));
    }

    #[test]
    fn every_bad_json_field_is_named() {
        let refused = |line: &str, says: &str| {
            let err = json(line).unwrap_err();
            assert!(matches!(err, CommandError::BadJson { .. }), "{line}: {err:?}");
            assert!(err.to_string().contains(says), "{line}: {err}");
        };
        refused(r#"{"to":"a","date":"x"}"#, "unknown field `date`");
        refused(r#"{"to":"a"}"#, "missing field `data`");
        refused(r#"{"data":"x"}"#, "missing field `to`");
        refused(r#"{"to":"a","data":"x","to":"b"}"#, "duplicate field `to`");
        refused(r#"{"to":5,"data":"x"}"#, "expected a target or an array of targets");
        refused(r#"{"to":["a",5],"data":"x"}"#, "invalid type: integer `5`, expected a string");
        refused(r#"{"to":"a","data":["x"]}"#, "invalid type: sequence");
        refused(r#"{"to":"a","data":"x","event":1}"#, "invalid type: integer `1`");
        refused(r#"{"to":"a","data":"x","except":true}"#, "invalid type: boolean `true`");
        refused(r#"{"to":"a","data":"x","retry":-1}"#, "invalid value: integer `-1`, expected u32");
        refused(r#"{"to":"a","data":"x","retry":1.5}"#, "invalid type: floating point `1.5`, expected u32");
        refused(r#"{"to":"a","data":"x","retry":"3000"}"#, "expected u32");
        refused(r#"{"to":"a","data":"x","retry":4294967296}"#, "expected u32");
        // serde stops at the first bad field; the rest must still be JSON for this to be JSON.
        refused(r#"{"date":1, "to":"a","data":"x"}"#, "unknown field `date`");
        assert!(matches!(json(r#"{"date":1, x=1"#), Ok(Command::Publish(..))));
    }

    #[test]
    fn what_the_json_parser_quotes_is_short_and_escaped() {
        let field = format!("a\\nb{}", "x".repeat(100_000));
        let text = json(&format!(r#"{{"{field}":1,"to":"a","data":"x"}}"#)).unwrap_err().to_string();
        assert!(text.starts_with(r"JSON command refused: unknown field `a\nbxxx"), "{text}");
        assert!(!text.contains(['\r', '\n']) && text.len() < 400, "{text}");
        let target = format!("a-\\r{}", "x".repeat(100_000));
        let text = json(&format!(r#"{{"to":"{target}","data":"x"}}"#)).unwrap_err().to_string();
        assert!(text.starts_with(r#"target "a-\rxxx"#), "{text}");
        assert!(!text.contains(['\r', '\n']) && text.len() < 400, "{text}");
    }

    #[test]
    fn every_bad_json_target_and_value_is_refused() {
        let refused = |line: &str| json(line).unwrap_err();
        assert!(matches!(refused(r#"{"to":[],"data":"x"}"#), CommandError::NoTarget { .. }));
        assert!(matches!(refused(r#"{"to":"","data":"x"}"#), CommandError::EmptyTarget { .. }));
        assert!(matches!(refused(r#"{"to":["a",""],"data":"x"}"#), CommandError::EmptyTarget { .. }));
        let fault = |line: &str| match refused(line) {
            CommandError::BadTarget { fault, .. } => fault,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(fault(r#"{"to":"room1-abc","data":"x"}"#), TargetFault::Dash);
        assert_eq!(fault(r#"{"to":["a","*-abc"],"data":"x"}"#), TargetFault::Dash);
        assert_eq!(fault(r#"{"to":"a*b","data":"x"}"#), TargetFault::InnerStar);
        assert_eq!(fault(r#"{"to":"**","data":"x"}"#), TargetFault::InnerStar);
        assert_eq!(fault(r#"{"to":"a\nb","data":"x"}"#), TargetFault::ControlChar);
        let long = format!(r#"{{"to":"{}*","data":"x"}}"#, "t".repeat(MAX_TOKEN_LEN + 1));
        assert!(matches!(refused(&long), CommandError::TokenTooLong { len: 129, max: 128, .. }));
        assert!(matches!(refused(r#"{"to":"a","data":"x","except":""}"#), CommandError::EmptyExcept { .. }));
        let long = format!(r#"{{"to":"a","data":"x","except":"{}"}}"#, "u".repeat(MAX_ID_LEN + 1));
        assert!(matches!(refused(&long), CommandError::IdTooLong { len: 65, max: 64, .. }));
        let err = refused(r#"{"to":"a","data":"x","event":"a\r\nid: 1"}"#);
        assert!(matches!(err, CommandError::EventLineBreak { .. }), "{err}");
        let long = format!(r#"{{"to":"a","data":"x","event":"{}"}}"#, "e".repeat(MAX_EVENT_LEN + 1));
        assert!(matches!(refused(&long), CommandError::EventTooLong { len: 129, max: 128, .. }));
        let at_limit = format!(r#"{{"to":"a","data":"x","event":"{}"}}"#, "e".repeat(MAX_EVENT_LEN));
        assert!(json(&at_limit).is_ok());
    }

    #[test]
    fn json_data_over_the_limit_is_refused_by_its_decoded_size() {
        let limits = Limits { max_message: 5 };
        let line = |data: &str| format!(r#"{{"to":"a","data":"{data}"}}"#);
        assert!(parse_command(line(r"\n\n\n\n\n").as_bytes(), &limits).is_ok());
        let err = parse_command(line("123456").as_bytes(), &limits).unwrap_err();
        assert!(matches!(err, CommandError::MessageTooLong { len: 6, max: 5, .. }), "{err}");
    }

    #[test]
    fn a_json_line_is_one_part_whatever_its_strings_hold() {
        let parts = |line: &str| split_parts(line.as_bytes(), b';').map(<[u8]>::to_vec).collect::<Vec<_>>();
        let line = r#"{"to":"a","data":"x;y=z;"}"#;
        assert_eq!(parts(line), [line.as_bytes()]);
        assert_eq!(parts(" {x=1;;y=2; "), [b" {x=1".to_vec(), b"y=2".to_vec()]);
        assert_eq!(parts(r#"{"to":"a"};b=1"#), [br#"{"to":"a"}"#.to_vec(), b"b=1".to_vec()]);
        let blank_separated = split_parts(br#"{"to": "a", "data": "x y"}"#, b' ').count();
        assert_eq!(blank_separated, 1);
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
        assert_eq!(read(b"{"), LineStart::Json);
        assert_eq!(read(b" \t{x;"), LineStart::Json);
        assert_eq!(read(b"a{"), LineStart::Other);
        assert_eq!(read(b"au{"), LineStart::Other);
        assert_eq!(LineStart::Json.read(b"auth "), LineStart::Json);
    }

    proptest! {
        #[test]
        fn a_line_start_agrees_with_auth_secret_and_json(
            line in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'u'), Just(b't'), Just(b'h'), Just(b' '), Just(b'\t'), Just(b';'), Just(b'{'), any::<u8>()],
                0..12,
            ),
            cut in 0usize..12,
        ) {
            let head = &line[..cut.min(line.len())];
            match LineStart::default().read(head) {
                LineStart::Auth => prop_assert!(auth_secret(&line).is_some()),
                LineStart::Json => prop_assert!(auth_secret(&line).is_none() && opens_json(&line)),
                LineStart::Other => prop_assert!(auth_secret(&line).is_none() && !is_json_object(&line)),
                LineStart::Open(_) => {}
            }
        }

        #[test]
        fn json_data_arrives_as_sent(
            data in "\\PC*",
            event in proptest::option::of("[a-z.]{1,20}"),
            retry in proptest::option::of(any::<u32>()),
        ) {
            let line = serde_json::json!({ "to": ["a", "b*"], "data": data, "event": event, "retry": retry }).to_string();
            let publish = json_publish(&line);
            prop_assert_eq!(publish.message, data.as_bytes());
            prop_assert_eq!(publish.event, event);
            prop_assert_eq!(publish.retry, retry);
            prop_assert_eq!(split_parts(line.as_bytes(), b';').count(), 1);
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
