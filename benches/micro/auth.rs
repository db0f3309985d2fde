//! The token check a subscription pays at its handshake when `--jwt-secret` or `--jwt-key` is
//! set: signature, expiry and grants, per algorithm family.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{black_box, Criterion};
use hasses::auth::{Auth, AuthKey, AuthSettings};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

/// A checker for `key`, and a token it accepts for `room1` signed with `alg` by `signing`.
fn case(key: AuthKey, alg: Algorithm, signing: &EncodingKey) -> (Auth, String) {
    let auth = Auth::new(&AuthSettings { key, issuer: None, audience: None }).expect("the key loads");
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = serde_json::json!({ "exp": exp, "sub": "u42", "subscribe": ["room1", "user*"] });
    (auth, encode(&Header::new(alg), &claims, signing).expect("the token signs"))
}

pub fn check(c: &mut Criterion) {
    let pem = |name: &str| std::fs::read(fixture(name)).expect("the fixture key");
    let secret = b"a secret of thirty-two bytes....";
    let cases = [
        (
            "HS256",
            case(AuthKey::Secret(secret.to_vec()), Algorithm::HS256, &EncodingKey::from_secret(secret)),
        ),
        ("ES256", {
            let signing = EncodingKey::from_ec_pem(&pem("ec-private-pkcs8.pem")).unwrap();
            case(AuthKey::PublicKey(fixture("ec-public.pem")), Algorithm::ES256, &signing)
        }),
        ("RS256", {
            let signing = EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).unwrap();
            case(AuthKey::PublicKey(fixture("rsa-public.pem")), Algorithm::RS256, &signing)
        }),
    ];
    let tokens = vec!["room1".to_string(), "user42".to_string()];
    let mut group = c.benchmark_group("auth/check");
    for (name, (auth, token)) in &cases {
        assert!(auth.check(Some(token), &tokens, Some("u42")).is_ok(), "{name}");
        group.bench_function(*name, |b| b.iter(|| auth.check(black_box(Some(token)), &tokens, Some("u42"))));
    }
    group.finish();
}
