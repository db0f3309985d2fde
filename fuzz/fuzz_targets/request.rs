//! The request reader on arbitrary bytes: it never panics, bytes judged as they arrive get the
//! judgement of the whole, a subscription it accepts is one the shards can index, and whatever
//! it refuses can be logged on one line.
//!
//! The first two bytes choose where the request is cut; the rest is the request.
#![no_main]

use hasses::http::{judge, Judgement, Route};
use hasses::limits::{MAX_AGENT_LEN, MAX_ID_LEN, MAX_REQUEST_HEAD, MAX_TOKEN_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((cut, data)) = input.split_first_chunk::<2>() else { return };
    let route = Route { path: "/sse".to_owned() };
    let whole = judge(data, &route);
    // A shard judges what has arrived so far and acts on the first answer that is not
    // Incomplete: that must be the answer the whole would get.
    let cut = usize::from(u16::from_le_bytes(*cut)).min(data.len());
    let early = judge(&data[..cut], &route);
    assert!(early == Judgement::Incomplete || early == whole, "{early:?} at {cut}, {whole:?} whole");
    match whole {
        Judgement::Incomplete => assert!(data.len() <= MAX_REQUEST_HEAD, "incomplete past the cap"),
        Judgement::Subscribe(subscribe) => {
            assert!(!subscribe.tokens.is_empty(), "a subscription without tokens");
            for (i, token) in subscribe.tokens.iter().enumerate() {
                assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN, "token {token:?}");
                assert!(!token.contains(['\r', '\n', '-']), "token {token:?}");
                assert!(!token.chars().any(char::is_control), "token {token:?}");
                assert!(!subscribe.tokens[..i].contains(token), "token {token:?} repeated");
            }
            if let Some(id) = &subscribe.id {
                assert!(!id.is_empty() && id.len() <= MAX_ID_LEN, "id {id:?}");
                assert!(!id.chars().any(char::is_control), "id {id:?}");
            }
            assert!(subscribe.user_agent.len() <= MAX_AGENT_LEN);
        }
        Judgement::Head | Judgement::Options => {}
        Judgement::Reject(reject) => {
            assert!([400, 404, 431, 501].contains(&reject.status()), "{reject:?}");
            let reason = reject.to_string();
            assert!(!reason.contains(['\r', '\n']), "a refusal that breaks a log line: {reason:?}");
        }
    }
});
