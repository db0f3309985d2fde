//! Control input on arbitrary bytes: line framing gives the same lines whether the bytes come
//! whole or in two pieces, and parsing never panics nor yields a publish with nobody to send to.
#![no_main]

use hasses::control::command::{auth_secret, parse_command, split_parts, Command, Target};
use hasses::control::lines::LineBuffer;
use hasses::limits::{Limits, MAX_ID_LEN, MAX_TOKEN_LEN};
use libfuzzer_sys::fuzz_target;

/// A small limit, so that over-long lines and messages are reached too.
const LIMITS: Limits = Limits { max_message: 300 };

/// Every piece (`Ok`) or too-long report (`Err`), after feeding `pieces` then finishing, framed
/// as the server frames: at line endings and at `;`.
fn lines<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Result<Vec<u8>, usize>> {
    let max_line = LIMITS.max_control_line();
    let mut buffer = LineBuffer::new(b';');
    let mut out = Vec::new();
    for piece in pieces {
        buffer.push(piece, max_line, |got| out.push(got.map(|p| p.bytes().to_vec()).map_err(|e| e.max)));
    }
    buffer.finish(|piece| out.push(Ok(piece.bytes().to_vec())));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let cut = usize::from(cut) * input.len() / 256;
    let whole = lines([input]);
    let (a, b) = input.split_at(cut);
    assert_eq!(whole, lines([a, b]), "split at {cut}");

    for line in whole.iter().flatten() {
        assert!(!line.contains(&b'\n') && line.len() <= LIMITS.max_control_line());
        let _ = auth_secret(line);
        for part in split_parts(line, b';') {
            match parse_command(part, &LIMITS) {
                Ok(Command::Publish(publish, _)) => {
                    match &publish.target {
                        Target::All => {}
                        Target::Token(name) | Target::Prefix(name) => {
                            assert!(!name.is_empty(), "a publish with an empty target");
                            assert!(name.len() <= MAX_TOKEN_LEN);
                        }
                    }
                    if let Some(id) = &publish.except {
                        assert!(!id.is_empty() && id.len() <= MAX_ID_LEN && !id.contains('*'));
                    }
                    assert!(publish.message.len() <= LIMITS.max_message);
                }
                Ok(_) => {}
                Err(error) => {
                    let text = error.to_string();
                    assert!(!text.contains(['\r', '\n']), "an error that breaks a log line: {text:?}");
                }
            }
        }
    }
});
