//! Subscriber authorization: signed grants (JWT) saying who may listen to what.
//!
//! Owns checking a subscription's token: its signature (by `jsonwebtoken`, with the algorithms
//! the configured key allows and no other: never `none`, never HMAC with a public key), its
//! expiry, issuer and audience, and whether its grants cover every requested token. A grant is a
//! hasses target: a token (`room1`), a prefix (`user*`) or `*`; requesting `*` needs the grant
//! `*`. A token's `sub` is the client's id: a different `id=` is refused, and without one the
//! client takes `sub`. Pure: no I/O, the clock is passed in.

use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The clock skew allowed on a token's `exp` and `nbf` at the handshake.
pub const LEEWAY_SECS: u64 = 30;

/// How subscribers' tokens are checked, as the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// The key tokens are signed with.
    pub key: AuthKey,
    /// The `iss` a token must carry (`--jwt-issuer`).
    pub issuer: Option<String>,
    /// The `aud` a token must carry (`--jwt-audience`).
    pub audience: Option<String>,
}

/// The key tokens are signed with.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthKey {
    /// A shared secret for HMAC (`--jwt-secret`, `--jwt-secret-file`): HS256, HS384, HS512.
    Secret(Vec<u8>),
    /// A public key, PEM (`--jwt-key`): RSA (RS*, PS*), EC (ES256, ES384) or Ed25519 (EdDSA).
    PublicKey(PathBuf),
}

/// Never the secret itself, not even in a debug line.
impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthKey::Secret(_) => f.write_str("Secret(..)"),
            AuthKey::PublicKey(path) => f.debug_tuple("PublicKey").field(path).finish(),
        }
    }
}

/// Why the configured key cannot be used. `Display` is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key file cannot be read.
    #[error("--jwt-key {}: cannot read: {source}", path.display())]
    Read {
        /// The file given.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a PEM public key of a kind tokens can be signed with.
    #[error("--jwt-key {}: not a PEM RSA, EC or Ed25519 public key", path.display())]
    NotAKey {
        /// The file given.
        path: PathBuf,
    },
}

/// Why a subscription is refused; each is answered as RFC 6750 says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token at all: `401` with a bare `WWW-Authenticate: Bearer` challenge.
    #[error("no token")]
    NoToken,
    /// A malformed, badly signed, expired, or wrong-issuer or wrong-audience token: `401` with
    /// `error="invalid_token"`.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A good token that does not grant what is asked (a token, or the `id`): `403` with
    /// `error="insufficient_scope"`.
    #[error("not granted: {0}")]
    Forbidden(String),
    /// The backend (`--auth-url`) answered `401`: passed on as it is, without a challenge.
    #[error("refused by the backend (401): {0}")]
    BackendUnauthorized(String),
    /// The backend answered `403`, or granted less than is asked: passed on as `403`.
    #[error("refused by the backend (403): {0}")]
    BackendForbidden(String),
}

impl Refusal {
    /// Its metric label: `missing`, `invalid`, `forbidden`, or `backend`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoToken => "missing",
            Refusal::Invalid(_) => "invalid",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::BackendUnauthorized(_) | Refusal::BackendForbidden(_) => "backend",
        }
    }
}

/// What a good token lets a subscription have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The client's id from the token's `sub`, if it has one.
    pub sub: Option<String>,
    /// When the token expires, in seconds since the Unix epoch: the stream ends then.
    pub expires: u64,
    /// The token's `jti`, by which it may be revoked.
    pub jti: Option<String>,
}

/// The claims hasses reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    sub: Option<String>,
    jti: Option<String>,
}

/// Checks subscribers' tokens against the configured key.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl Auth {
    /// The checker for these settings; the key decides which algorithms a token may use.
    pub fn new(settings: &AuthSettings) -> Result<Auth, AuthError> {
        let (key, algorithms) = match &settings.key {
            AuthKey::Secret(secret) => {
                (DecodingKey::from_secret(secret), vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
            }
            AuthKey::PublicKey(path) => public_key(path)?,
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY_SECS;
        let mut required = vec!["exp"];
        match &settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Auth { key, validation })
    }

    /// Whether `token` lets a client with this `id` (if it gave one) listen to `tokens`.
    pub fn check(
        &self,
        token: Option<&str>,
        tokens: &[String],
        id: Option<&str>,
    ) -> Result<Granted, Refusal> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Refusal::NoToken)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| Refusal::Invalid(describe(e.kind())))?
            .claims;
        within_grant(Some(&claims.subscribe), claims.sub.as_deref(), tokens, id)
            .map_err(Refusal::Forbidden)?;
        Ok(Granted { sub: claims.sub, expires: claims.exp, jti: claims.jti })
    }
}

/// Whether a grant (a token's claims, or the backend's answer) lets a subscription with this
/// `id` (if it gave one) listen to `tokens`: each among `grants` (when the grant names any:
/// `None` grants whatever is asked), and the id the grant's `sub` (when it has one). The
/// error says what is not granted.
pub fn within_grant(
    grants: Option<&[String]>,
    sub: Option<&str>,
    tokens: &[String],
    id: Option<&str>,
) -> Result<(), String> {
    if let Some(grants) = grants {
        if let Some(denied) = tokens.iter().find(|requested| !is_granted(grants, requested)) {
            return Err(format!("token \"{denied}\" is not among the grants"));
        }
    }
    match (sub, id) {
        (Some(sub), Some(id)) if sub != id => Err(format!("id \"{id}\" is not the sub")),
        _ => Ok(()),
    }
}

/// Whether `grants` cover the requested token: the same token, a prefix grant it starts with,
/// or `*`. Requesting `*` (everything) needs the grant `*`.
pub fn is_granted(grants: &[String], requested: &str) -> bool {
    grants.iter().any(|grant| match grant.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => requested != "*" && requested.starts_with(prefix),
        None => grant == requested,
    })
}

/// The key in a PEM file, and the algorithms its kind signs with.
fn public_key(path: &Path) -> Result<(DecodingKey, Vec<Algorithm>), AuthError> {
    let pem = std::fs::read(path).map_err(|source| AuthError::Read { path: path.to_owned(), source })?;
    use Algorithm::*;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, vec![ES256, ES384]));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, vec![EdDSA]));
    }
    Err(AuthError::NotAKey { path: path.to_owned() })
}

/// What is wrong with a token, for the log (never the token itself).
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "an algorithm the key does not sign with".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::ImmatureSignature => "not valid yet".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("no {claim} claim"),
        ErrorKind::InvalidSubject => "wrong subject".into(),
        ErrorKind::InvalidToken => "malformed: not three base64url parts joined by dots".into(),
        ErrorKind::Base64(_) => "malformed: a part is not base64url".into(),
        ErrorKind::Utf8(_) => "malformed: a part is not UTF-8".into(),
        ErrorKind::Json(e) => format!("malformed: its header or claims are not what a JWT holds ({e})"),
        ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => "an unknown algorithm".into(),
        // Key and signing failures: the server's key, not the token, is at fault; never raised
        // for a token checked against a key that loaded.
        _ => "cannot be checked with this key".into(),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn hmac(secret: &str) -> Auth {
        let key = AuthKey::Secret(secret.as_bytes().to_vec());
        Auth::new(&AuthSettings { key, issuer: None, audience: None }).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn tokens(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn grants_cover_tokens_prefixes_and_everything() {
        let grants = tokens(&["room1", "user*"]);
        assert!(is_granted(&grants, "room1"));
        assert!(is_granted(&grants, "user42"));
        assert!(!is_granted(&grants, "room2"));
        assert!(!is_granted(&grants, "*"), "requesting * needs the grant *");
        assert!(is_granted(&tokens(&["*"]), "*"));
        assert!(is_granted(&tokens(&["*"]), "anything"));
        assert!(!is_granted(&[], "room1"));
    }

    #[test]
    fn a_grant_without_targets_grants_any_and_a_sub_fixes_the_id() {
        let asked = tokens(&["room1", "user42"]);
        assert_eq!(within_grant(None, None, &asked, Some("x")), Ok(()));
        assert_eq!(within_grant(Some(&tokens(&["room*", "user*"])), Some("u"), &asked, None), Ok(()));
        assert_eq!(
            within_grant(Some(&tokens(&["room1"])), None, &asked, None),
            Err("token \"user42\" is not among the grants".into())
        );
        assert_eq!(within_grant(None, Some("u"), &asked, Some("v")), Err("id \"v\" is not the sub".into()));
    }

    #[test]
    fn a_token_is_checked_for_signature_expiry_grants_and_sub() {
        let auth = hmac("s3cret");
        let exp = now() + 600;
        let good =
            sign(json!({ "exp": exp, "subscribe": ["room1", "user*"], "sub": "u42", "jti": "t7" }), "s3cret");
        let granted = auth.check(Some(&good), &tokens(&["room1", "user42"]), None).unwrap();
        assert_eq!(granted, Granted { sub: Some("u42".into()), expires: exp, jti: Some("t7".into()) });
        assert!(auth.check(Some(&good), &tokens(&["room1"]), Some("u42")).is_ok());
        assert!(matches!(
            auth.check(Some(&good), &tokens(&["room1"]), Some("u43")),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(auth.check(Some(&good), &tokens(&["room2"]), None), Err(Refusal::Forbidden(_))));
        assert_eq!(auth.check(None, &tokens(&["room1"]), None), Err(Refusal::NoToken));
        let wrong_key = sign(json!({ "exp": exp, "subscribe": ["*"] }), "other");
        assert_eq!(
            auth.check(Some(&wrong_key), &tokens(&["a"]), None),
            Err(Refusal::Invalid("bad signature".into()))
        );
        let expired = sign(json!({ "exp": now() - LEEWAY_SECS - 5, "subscribe": ["*"] }), "s3cret");
        assert_eq!(
            auth.check(Some(&expired), &tokens(&["a"]), None),
            Err(Refusal::Invalid("expired".into()))
        );
        let no_exp = sign(json!({ "subscribe": ["*"] }), "s3cret");
        assert!(matches!(auth.check(Some(&no_exp), &tokens(&["a"]), None), Err(Refusal::Invalid(_))));
        assert!(matches!(auth.check(Some("not.a.jwt"), &tokens(&["a"]), None), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn a_malformed_token_is_described_in_words_not_debug_text() {
        let auth = hmac("s3cret");
        for token in ["garbage", "not.a.jwt", "e30.e30.x", "a.b", "!!!.e30.x"] {
            let Err(Refusal::Invalid(why)) = auth.check(Some(token), &tokens(&["a"]), None) else {
                panic!("{token} is not refused as invalid");
            };
            assert!(why.starts_with("malformed: ") || why == "an unknown algorithm", "{token}: {why}");
            assert!(!why.contains("Kind") && !why.contains("Error("), "{token}: {why}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let auth = hmac("s3cret");
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = base64_url(format!(r#"{{"exp":{},"subscribe":["*"]}}"#, now() + 60).as_bytes());
        let unsigned = format!("{header}.{claims}.");
        assert!(matches!(auth.check(Some(&unsigned), &tokens(&["a"]), None), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn public_keys_choose_their_algorithms_and_refuse_key_confusion() {
        let fixture =
            |name: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name);
        let claims = json!({ "exp": now() + 60, "subscribe": ["a"] });
        let cases = [
            ("rsa-public.pem", "rsa-private.pem", Algorithm::RS256),
            ("rsa-public.pem", "rsa-private.pem", Algorithm::PS384),
            ("ec-public.pem", "ec-private-pkcs8.pem", Algorithm::ES256),
            ("ed-public.pem", "ed-private.pem", Algorithm::EdDSA),
        ];
        for (public, private, alg) in cases {
            let settings =
                AuthSettings { key: AuthKey::PublicKey(fixture(public)), issuer: None, audience: None };
            let auth = Auth::new(&settings).unwrap();
            let pem = std::fs::read(fixture(private)).unwrap();
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            }
            .unwrap();
            let token = encode(&Header::new(alg), &claims, &key).unwrap();
            assert!(auth.check(Some(&token), &tokens(&["a"]), None).is_ok(), "{alg:?}");
            // The public key's own bytes as an HMAC secret: the classic key confusion.
            let public_pem = std::fs::read(fixture(public)).unwrap();
            let confused =
                encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&public_pem))
                    .unwrap();
            let refused = auth.check(Some(&confused), &tokens(&["a"]), None);
            assert!(matches!(refused, Err(Refusal::Invalid(_))), "{public}: {refused:?}");
        }
        let not_a_key = AuthSettings {
            key: AuthKey::PublicKey(fixture("../eventsource.html")),
            issuer: None,
            audience: None,
        };
        assert!(matches!(Auth::new(&not_a_key), Err(AuthError::NotAKey { .. })));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_given() {
        let key = AuthKey::Secret(b"k".to_vec());
        let settings = AuthSettings { key, issuer: Some("backend".into()), audience: Some("hasses".into()) };
        let auth = Auth::new(&settings).unwrap();
        let exp = now() + 60;
        let right = sign(json!({ "exp": exp, "iss": "backend", "aud": "hasses", "subscribe": ["a"] }), "k");
        assert!(auth.check(Some(&right), &tokens(&["a"]), None).is_ok());
        let wrong = sign(json!({ "exp": exp, "iss": "other", "aud": "hasses", "subscribe": ["a"] }), "k");
        assert_eq!(
            auth.check(Some(&wrong), &tokens(&["a"]), None),
            Err(Refusal::Invalid("wrong issuer".into()))
        );
        let no_aud = sign(json!({ "exp": exp, "iss": "backend", "subscribe": ["a"] }), "k");
        assert!(matches!(auth.check(Some(&no_aud), &tokens(&["a"]), None), Err(Refusal::Invalid(_))));
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    proptest! {
        /// No set of grants lets a subscription have a token it does not name: every granted
        /// token is one of the grants, starts with a prefix grant, or `*` is granted.
        #[test]
        fn no_grant_covers_what_it_does_not_name(
            grants in prop::collection::vec("[ab]{0,3}\\*?", 0..4),
            requested in "([ab]{1,3}|\\*)",
        ) {
            let named = grants.iter().any(|g| {
                g == "*" || g == &requested || g.strip_suffix('*').is_some_and(|p| !p.is_empty() && requested != "*" && requested.starts_with(p))
            });
            prop_assert_eq!(is_granted(&grants, &requested), named);
        }
    }
}
