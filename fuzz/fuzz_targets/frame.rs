//! Event framing on arbitrary messages: the chunk declares its exact length, and no `data:`
//! value carries a CR or LF (which would end the event early or forge another one).
#![no_main]

use hasses::sse::encode_event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (id, message) = match data.split_first_chunk::<8>() {
        Some((id, message)) => (u64::from_le_bytes(*id), message),
        None => (0, data),
    };
    let frame = encode_event(id, message);

    let size_end = frame.windows(2).position(|w| w == b"\r\n").expect("a chunk-size line");
    let size_text = std::str::from_utf8(&frame[..size_end]).expect("an ASCII chunk size");
    let declared = usize::from_str_radix(size_text, 16).expect("a hex chunk size");
    let payload = &frame[size_end + 2..frame.len() - 2];
    assert_eq!(declared, payload.len(), "the chunk size is not the payload's length");
    assert_eq!(&frame[frame.len() - 2..], b"\r\n", "the chunk does not end in CRLF");

    let body = payload.strip_suffix(b"\n\n").expect("an event ends with a blank line");
    let mut lines = body.split(|b| *b == b'\n');
    assert_eq!(lines.next(), Some(format!("id: {id}").as_bytes()));
    let mut data_lines = Vec::new();
    for line in lines {
        let value = line.strip_prefix(b"data: ").expect("only data lines after the id");
        assert!(!value.contains(&b'\r') && !value.contains(&b'\n'), "a line break inside a data value");
        data_lines.push(value);
    }
    // What an EventSource rebuilds: the message, with each CRLF, CR or LF as one LF.
    assert_eq!(data_lines.join(&b'\n'), one_lf_per_line_break(message));
});

fn one_lf_per_line_break(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut bytes = message.iter().peekable();
    while let Some(&byte) = bytes.next() {
        if byte == b'\r' {
            bytes.next_if_eq(&&b'\n');
            out.push(b'\n');
        } else {
            out.push(byte);
        }
    }
    out
}
