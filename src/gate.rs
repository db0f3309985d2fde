//! Throwing someone out: the orders (`disconnect`, `revoke`) and who is kept out afterwards.
//!
//! Owns the orders an operator gives (parsed here from `name=value` pairs, whichever source
//! they came from: the HTTP API's form or query, a control line), and the [`Gate`]: the bans a
//! `disconnect … ban=SECS` leaves behind and the revoked tokens (`jti` or `sub`), each until a
//! moment in Unix seconds, so that every node of a cluster keeps them for the same time. Both
//! expire and are capped ([`MAX_ENTRIES`]): an order over the cap is refused, never a ban
//! silently dropped. Pure: the clock is passed in ([`unix_now`] is the one its callers read);
//! ending streams is the shards' business, and spreading an order over a cluster the cluster's.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_ID_LEN, MAX_TOKEN_LEN};

/// Now, in Unix seconds: the clock orders are read and bans checked by, the same on every node
/// of a cluster.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The most bans, and separately the most revocations, held at once.
pub const MAX_ENTRIES: usize = 100_000;
/// The longest ban, in seconds (a week): a ban is for a troublemaker's retries, not forever.
pub const MAX_BAN_SECS: u64 = 7 * 24 * 3600;
/// How long a revocation holds when the order does not say when its tokens expire (a day).
pub const DEFAULT_REVOKE_SECS: u64 = 24 * 3600;
/// The furthest a revocation may hold (30 days): a token living longer is revoked again.
pub const MAX_REVOKE_SECS: u64 = 30 * 24 * 3600;
/// The longest `jti` taken.
pub const MAX_JTI_LEN: usize = 256;

/// Whose streams an order ends: a client id, a token's `sub`, or everyone subscribed to a
/// token (by name exactly: a `*` subscriber is not ended by a token's order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    /// `id=`: the clients with this id.
    Id(String),
    /// `sub=`: the clients whose token's `sub` is this.
    Sub(String),
    /// `token=`: the clients subscribed to this token.
    Token(String),
}

/// A token refused until it expires: by its `jti`, or every token of a `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revoked {
    /// The token with this `jti` claim.
    Jti(String),
    /// Every token with this `sub` claim.
    Sub(String),
}

/// An order to the server, as given once and carried out on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// End these streams now; with a ban, their reconnects until then (Unix seconds) are
    /// answered `204 No Content`.
    Disconnect {
        /// Whose streams.
        who: Who,
        /// Until when they are banned.
        ban_until: Option<u64>,
    },
    /// Refuse these tokens (401) until then (Unix seconds); a `sub`'s streams end now too.
    Revoke {
        /// Which tokens.
        what: Revoked,
        /// Until when.
        until: u64,
    },
}

impl Order {
    /// Whose streams end now, if any: a revoked `sub`'s; a revoked `jti` ends none (which
    /// stream came with it is not kept; it ends at its token's `exp` anyway).
    pub fn ends(&self) -> Option<Who> {
        match self {
            Order::Disconnect { who, .. } => Some(who.clone()),
            Order::Revoke { what: Revoked::Sub(sub), .. } => Some(Who::Sub(sub.clone())),
            Order::Revoke { what: Revoked::Jti(_), .. } => None,
        }
    }
}

/// Which order: its word on a control line and its path on the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    /// `disconnect`, `POST /disconnect`.
    Disconnect,
    /// `revoke`, `POST /revoke`.
    Revoke,
}

impl OrderKind {
    /// Its word.
    pub fn word(self) -> &'static str {
        match self {
            OrderKind::Disconnect => "disconnect",
            OrderKind::Revoke => "revoke",
        }
    }

    /// The order its parameters give, at `now` (Unix seconds).
    pub fn parse<'a>(
        self,
        pairs: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
        now: u64,
    ) -> Result<Order, OrderError> {
        match self {
            OrderKind::Disconnect => parse_disconnect(pairs, now),
            OrderKind::Revoke => parse_revoke(pairs, now),
        }
    }

    /// The order a control line's arguments give (`name=value`, separated by `&` or blanks).
    pub fn parse_args(self, args: &str, now: u64) -> Result<Order, OrderError> {
        let joined = args.split_ascii_whitespace().collect::<Vec<_>>().join("&");
        self.parse(form_urlencoded::parse(joined.as_bytes()), now)
    }
}

/// Why an order cannot be carried out: the parameter at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// None of the names that say whom (or what) the order is about.
    #[error("say which: one of {0}")]
    NoTarget(&'static str),
    /// More than one of them, or one twice.
    #[error("give one of {0}, once")]
    Ambiguous(&'static str),
    /// A parameter this order does not take.
    #[error("unknown parameter `{0}`")]
    Unknown(String),
    /// An empty or over-long value.
    #[error("`{name}` must be 1 to {max} bytes")]
    BadLength {
        /// The parameter.
        name: &'static str,
        /// Its longest value.
        max: usize,
    },
    /// A number that is not one, or out of range.
    #[error("`{name}` must be a whole number from {min} to {max}: {given}")]
    BadNumber {
        /// The parameter.
        name: &'static str,
        /// What was given.
        given: String,
        /// The least it may be.
        min: u64,
        /// The most it may be.
        max: u64,
    },
}

/// The gate is full: the order is refused rather than an older ban dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_ENTRIES} bans or revocations are held already, the most: try again when some expire")]
pub struct GateFull;

const DISCONNECT_BY: &str = "id, sub, token";
const REVOKE_BY: &str = "jti, sub";

/// A `disconnect` order from its parameters: `id`, `sub` or `token` (one of them), and `ban`
/// (seconds, optional); `now` in Unix seconds.
pub fn parse_disconnect<'a>(
    pairs: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
    now: u64,
) -> Result<Order, OrderError> {
    let (mut who, mut ban) = (None, None);
    for (name, value) in pairs {
        let made = match name.as_ref() {
            "id" => Who::Id(checked(value, "id", MAX_ID_LEN)?),
            "sub" => Who::Sub(checked(value, "sub", MAX_ID_LEN)?),
            "token" => Who::Token(checked(value, "token", MAX_TOKEN_LEN)?),
            "ban" => {
                let secs = number(&value, "ban", 0, MAX_BAN_SECS)?;
                if ban.replace(secs).is_some() {
                    return Err(OrderError::Ambiguous("ban"));
                }
                continue;
            }
            other => return Err(OrderError::Unknown(other.to_owned())),
        };
        if who.replace(made).is_some() {
            return Err(OrderError::Ambiguous(DISCONNECT_BY));
        }
    }
    let who = who.ok_or(OrderError::NoTarget(DISCONNECT_BY))?;
    Ok(Order::Disconnect { who, ban_until: ban.filter(|&secs| secs > 0).map(|secs| now + secs) })
}

/// A `revoke` order from its parameters: `jti` or `sub` (one of them), and `exp` (optional:
/// the tokens' expiry, Unix seconds, at most [`MAX_REVOKE_SECS`] ahead; without it, a day);
/// `now` in Unix seconds.
pub fn parse_revoke<'a>(
    pairs: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
    now: u64,
) -> Result<Order, OrderError> {
    let (mut what, mut until) = (None, None);
    for (name, value) in pairs {
        let made = match name.as_ref() {
            "jti" => Revoked::Jti(checked(value, "jti", MAX_JTI_LEN)?),
            "sub" => Revoked::Sub(checked(value, "sub", MAX_ID_LEN)?),
            "exp" => {
                let exp = number(&value, "exp", now + 1, now + MAX_REVOKE_SECS)?;
                if until.replace(exp).is_some() {
                    return Err(OrderError::Ambiguous("exp"));
                }
                continue;
            }
            other => return Err(OrderError::Unknown(other.to_owned())),
        };
        if what.replace(made).is_some() {
            return Err(OrderError::Ambiguous(REVOKE_BY));
        }
    }
    let what = what.ok_or(OrderError::NoTarget(REVOKE_BY))?;
    Ok(Order::Revoke { what, until: until.unwrap_or(now + DEFAULT_REVOKE_SECS) })
}

fn checked(value: Cow<'_, str>, name: &'static str, max: usize) -> Result<String, OrderError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(OrderError::BadLength { name, max });
    }
    Ok(value.into_owned())
}

fn number(value: &str, name: &'static str, min: u64, max: u64) -> Result<u64, OrderError> {
    value.parse().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| OrderError::BadNumber {
        name,
        given: value.chars().take(32).collect(),
        min,
        max,
    })
}

/// The bans and revocations in force, each until a Unix second.
#[derive(Debug, Default)]
pub struct Gate {
    bans: HashMap<Who, u64>,
    revoked: HashMap<Revoked, u64>,
}

/// What a subscription shows the gate.
#[derive(Debug, Clone, Copy)]
pub struct Visitor<'a> {
    /// Its id (`id=`, or its token's `sub`); empty when none.
    pub id: &'a str,
    /// Its token's `sub`.
    pub sub: Option<&'a str>,
    /// Its token's `jti`.
    pub jti: Option<&'a str>,
}

/// What the gate says to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Come in.
    Open,
    /// Its token is revoked: `401`.
    Revoked,
    /// It is banned: `204 No Content`, so that EventSource stops retrying.
    Banned,
}

impl Gate {
    /// What `visitor` subscribing to `tokens` at `now` is told: a revoked token before a ban.
    pub fn judge<'t>(&self, visitor: Visitor<'_>, tokens: impl Iterator<Item = &'t str>, now: u64) -> Entry {
        if self.is_revoked(visitor, now) {
            Entry::Revoked
        } else if self.is_banned(visitor, tokens, now) {
            Entry::Banned
        } else {
            Entry::Open
        }
    }

    /// Takes in what `order` leaves behind (a ban, a revocation) at `now` (Unix seconds). A
    /// later order for the same client or token replaces the earlier one.
    pub fn take(&mut self, order: &Order, now: u64) -> Result<(), GateFull> {
        match order {
            Order::Disconnect { ban_until: None, .. } => Ok(()),
            Order::Disconnect { who, ban_until: Some(until) } => hold(&mut self.bans, who, *until, now),
            Order::Revoke { what, until } => hold(&mut self.revoked, what, *until, now),
        }
    }

    /// Whether `visitor` subscribing to `tokens` is banned at `now`.
    pub fn is_banned<'t>(
        &self,
        visitor: Visitor<'_>,
        mut tokens: impl Iterator<Item = &'t str>,
        now: u64,
    ) -> bool {
        if self.bans.is_empty() {
            return false;
        }
        let banned = |who: Who| self.bans.get(&who).is_some_and(|&until| until > now);
        (!visitor.id.is_empty() && banned(Who::Id(visitor.id.to_owned())))
            || visitor.sub.is_some_and(|sub| banned(Who::Sub(sub.to_owned())))
            || tokens.any(|token| banned(Who::Token(token.to_owned())))
    }

    /// Whether the token `visitor` came with is revoked at `now`.
    pub fn is_revoked(&self, visitor: Visitor<'_>, now: u64) -> bool {
        if self.revoked.is_empty() {
            return false;
        }
        let revoked = |what: Revoked| self.revoked.get(&what).is_some_and(|&until| until > now);
        visitor.jti.is_some_and(|jti| revoked(Revoked::Jti(jti.to_owned())))
            || visitor.sub.is_some_and(|sub| revoked(Revoked::Sub(sub.to_owned())))
    }

    /// How many bans and revocations are held (expired ones until the next order sweeps them).
    pub fn len(&self) -> (usize, usize) {
        (self.bans.len(), self.revoked.len())
    }
}

/// Holds `key` until `until`, sweeping what expired first when the table is full.
fn hold<K: Clone + Eq + std::hash::Hash>(
    table: &mut HashMap<K, u64>,
    key: &K,
    until: u64,
    now: u64,
) -> Result<(), GateFull> {
    if table.len() >= MAX_ENTRIES && !table.contains_key(key) {
        table.retain(|_, &mut held| held > now);
        if table.len() >= MAX_ENTRIES {
            return Err(GateFull);
        }
    }
    table.insert(key.clone(), until);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(query.as_bytes()).collect()
    }

    const NOW: u64 = 1_000_000;

    fn visitor<'a>(id: &'a str, sub: Option<&'a str>, jti: Option<&'a str>) -> Visitor<'a> {
        Visitor { id, sub, jti }
    }

    #[test]
    fn a_disconnect_names_one_client_or_token_and_maybe_a_ban() {
        let parse = |q: &str| parse_disconnect(pairs(q), NOW);
        assert_eq!(parse("id=u1"), Ok(Order::Disconnect { who: Who::Id("u1".into()), ban_until: None }));
        assert_eq!(
            parse("sub=alice&ban=60"),
            Ok(Order::Disconnect { who: Who::Sub("alice".into()), ban_until: Some(NOW + 60) })
        );
        assert_eq!(
            parse("ban=0&token=room%201"),
            Ok(Order::Disconnect { who: Who::Token("room 1".into()), ban_until: None })
        );
        assert_eq!(parse(""), Err(OrderError::NoTarget(DISCONNECT_BY)));
        assert_eq!(parse("ban=5"), Err(OrderError::NoTarget(DISCONNECT_BY)));
        assert_eq!(parse("id=a&sub=b"), Err(OrderError::Ambiguous(DISCONNECT_BY)));
        assert_eq!(parse("id=a&id=b"), Err(OrderError::Ambiguous(DISCONNECT_BY)));
        assert_eq!(parse("id=a&ban=1&ban=2"), Err(OrderError::Ambiguous("ban")));
        assert_eq!(parse("id=a&forever=1"), Err(OrderError::Unknown("forever".into())));
        assert!(matches!(parse("id="), Err(OrderError::BadLength { name: "id", .. })));
        assert!(matches!(parse(&format!("id={}", "x".repeat(65))), Err(OrderError::BadLength { .. })));
        assert!(matches!(parse("id=a%0Ab"), Err(OrderError::BadLength { .. })));
        for bad in ["soon", "-1", "604801", "1.5"] {
            let error = parse(&format!("id=a&ban={bad}")).unwrap_err();
            assert!(matches!(error, OrderError::BadNumber { name: "ban", .. }), "{bad}: {error}");
            assert!(error.to_string().contains("from 0 to 604800"), "{error}");
        }
    }

    #[test]
    fn a_revoke_names_a_jti_or_a_sub_until_its_tokens_expire() {
        let parse = |q: &str| parse_revoke(pairs(q), NOW);
        assert_eq!(
            parse("jti=t-1"),
            Ok(Order::Revoke { what: Revoked::Jti("t-1".into()), until: NOW + DEFAULT_REVOKE_SECS })
        );
        assert_eq!(
            parse(&format!("sub=bob&exp={}", NOW + 90)),
            Ok(Order::Revoke { what: Revoked::Sub("bob".into()), until: NOW + 90 })
        );
        assert_eq!(parse(&format!("exp={}", NOW + 9)), Err(OrderError::NoTarget(REVOKE_BY)));
        assert!(matches!(parse(&format!("jti=a&exp={NOW}")), Err(OrderError::BadNumber { name: "exp", .. })));
        let far = NOW + MAX_REVOKE_SECS + 1;
        assert!(matches!(parse(&format!("jti=a&exp={far}")), Err(OrderError::BadNumber { .. })));
        assert_eq!(parse("jti=a&sub=b"), Err(OrderError::Ambiguous(REVOKE_BY)));
        assert_eq!(parse("id=a"), Err(OrderError::Unknown("id".into())));
        assert_eq!(parse(""), Err(OrderError::NoTarget(REVOKE_BY)));
    }

    #[test]
    fn a_control_line_separates_its_arguments_by_blanks_or_ampersands() {
        let expected = Order::Disconnect { who: Who::Id("u 1".into()), ban_until: Some(NOW + 5) };
        assert_eq!(OrderKind::Disconnect.parse_args("id=u+1  ban=5", NOW), Ok(expected.clone()));
        assert_eq!(OrderKind::Disconnect.parse_args("id=u%201&ban=5", NOW), Ok(expected));
        assert!(OrderKind::Revoke.parse_args("jti=a sub=b", NOW).is_err());
    }

    #[test]
    fn a_ban_keeps_its_client_out_until_it_ends() {
        let mut gate = Gate::default();
        let ban = |who: Who, secs| Order::Disconnect { who, ban_until: Some(NOW + secs) };
        gate.take(&ban(Who::Id("u1".into()), 10), NOW).unwrap();
        gate.take(&ban(Who::Sub("alice".into()), 10), NOW).unwrap();
        gate.take(&ban(Who::Token("room9".into()), 10), NOW).unwrap();
        gate.take(&Order::Disconnect { who: Who::Id("u2".into()), ban_until: None }, NOW).unwrap();
        let banned = |v: Visitor, tokens: &[&str], at| gate.is_banned(v, tokens.iter().copied(), at);
        assert!(banned(visitor("u1", None, None), &["a"], NOW));
        assert!(banned(visitor("u1", None, None), &["a"], NOW + 9));
        assert!(!banned(visitor("u1", None, None), &["a"], NOW + 10), "over at its second");
        assert!(!banned(visitor("u2", None, None), &["a"], NOW), "a disconnect without a ban");
        assert!(banned(visitor("x", Some("alice"), None), &["a"], NOW));
        assert!(banned(visitor("", None, None), &["a", "room9"], NOW));
        assert!(!banned(visitor("", None, None), &["room"], NOW));
        assert!(!gate.is_revoked(visitor("u1", Some("alice"), None), NOW), "a ban is no revocation");
    }

    #[test]
    fn a_revoked_token_is_refused_until_it_expires() {
        let mut gate = Gate::default();
        gate.take(&Order::Revoke { what: Revoked::Jti("j1".into()), until: NOW + 5 }, NOW).unwrap();
        gate.take(&Order::Revoke { what: Revoked::Sub("bob".into()), until: NOW + 5 }, NOW).unwrap();
        assert!(gate.is_revoked(visitor("a", None, Some("j1")), NOW));
        assert!(!gate.is_revoked(visitor("a", None, Some("j2")), NOW));
        assert!(gate.is_revoked(visitor("bob", Some("bob"), Some("j2")), NOW + 4));
        assert!(!gate.is_revoked(visitor("bob", Some("bob"), Some("j2")), NOW + 5));
        assert!(!gate.is_revoked(visitor("bob", None, None), NOW), "an id alone is not a token's sub");
        assert_eq!(gate.len(), (0, 2));
    }

    #[test]
    fn the_gate_is_capped_and_sweeps_what_expired_to_make_room() {
        let mut gate = Gate::default();
        let ban =
            |n: usize, until| Order::Disconnect { who: Who::Id(format!("c{n}")), ban_until: Some(until) };
        for n in 0..MAX_ENTRIES {
            gate.take(&ban(n, if n % 2 == 0 { NOW + 1 } else { NOW + 100 }), NOW).unwrap();
        }
        assert_eq!(gate.take(&ban(MAX_ENTRIES, NOW + 100), NOW), Err(GateFull));
        gate.take(&ban(1, NOW + 200), NOW).expect("one held already is renewed");
        gate.take(&ban(MAX_ENTRIES, NOW + 100), NOW + 1).expect("the expired half is swept");
        assert_eq!(gate.len().0, MAX_ENTRIES / 2 + 1);
    }
}
