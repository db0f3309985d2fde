//! Header fields over HTTP/2: a request's header block decoded and checked (RFC 9113 §8.3), and
//! a response's head encoded.
//!
//! Decoding goes through loona-hpack, whose decoder keeps the connection's dynamic table; its
//! indexed fields arrive as borrows, so a block that decodes huge (an HPACK bomb) is counted
//! without being copied. Responses are the HTTP/1.1 responses `http` builds, re-encoded: one
//! source of truth for every status, header and reason. Their blocks use no dynamic table, so
//! one encoded block serves every stream of every connection.

use loona_hpack::decoder::DecoderError;
use loona_hpack::Decoder;

/// A request's head, decoded and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// `:method`.
    pub method: String,
    /// `:path`: the target, with its query.
    pub path: String,
    /// The regular fields, names in lower case as HTTP/2 requires; `cookie` fields joined
    /// with `; ` (RFC 9113 §8.2.3).
    pub fields: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// Its fields as an HTTP/1.1 head's headers, for what reads those.
    pub fn headers(&self) -> Vec<httparse::Header<'_>> {
        self.fields.iter().map(|(name, value)| httparse::Header { name, value }).collect()
    }
}

/// Why a header block is not a request we can judge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlockError {
    /// It cannot be decoded: the connection's table is lost with it (COMPRESSION_ERROR).
    #[error("header block cannot be decoded: {0:?}")]
    Compression(DecoderError),
    /// It decodes to more than the limit (an HPACK bomb, or a huge cookie): answered 431.
    #[error("header list over {0} bytes")]
    TooLarge(usize),
    /// It decodes but is not a valid request (RFC 9113 §8.1.1): the stream is reset.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Fields HTTP/2 forbids: they are HTTP/1.1's connection management (RFC 9113 §8.2.2).
const CONNECTION_FIELDS: [&str; 5] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

/// Decodes a request's header block with the connection's `decoder`, refusing a list over
/// `max_list` bytes (each field counted as its name, value and 32, as RFC 9113 counts).
///
/// The whole block is always decoded, so the dynamic table stays in step with the peer's even
/// when the request is refused.
pub fn decode_request(
    decoder: &mut Decoder<'_>,
    block: &[u8],
    max_list: usize,
) -> Result<RequestHead, BlockError> {
    let mut head = RequestHead::default();
    let mut size = 0usize;
    let mut problem = None;
    let mut regular_seen = false;
    let (mut scheme, mut path) = (false, false);
    decoder
        .decode_with_cb(block, |name, value| {
            size = size.saturating_add(name.len() + value.len() + 32);
            if size > max_list || problem.is_some() {
                return;
            }
            let Ok(name) = std::str::from_utf8(&name) else {
                problem = Some("field name is not text");
                return;
            };
            if let Some(pseudo) = name.strip_prefix(':') {
                if regular_seen {
                    problem = Some("pseudo-header after a regular field");
                    return;
                }
                let slot = match pseudo {
                    "method" => &mut head.method,
                    "path" => {
                        path = true;
                        &mut head.path
                    }
                    "scheme" => {
                        scheme = true;
                        return;
                    }
                    "authority" => return,
                    _ => {
                        problem = Some("unknown pseudo-header");
                        return;
                    }
                };
                match std::str::from_utf8(&value) {
                    Ok(text) if slot.is_empty() => text.clone_into(slot),
                    _ => problem = Some("pseudo-header repeated or not text"),
                }
                return;
            }
            regular_seen = true;
            problem = check_field(name, &value).err();
            if problem.is_none() {
                add_field(&mut head.fields, name, &value);
            }
        })
        .map_err(BlockError::Compression)?;
    if size > max_list {
        return Err(BlockError::TooLarge(max_list));
    }
    if let Some(problem) = problem {
        return Err(BlockError::Malformed(problem));
    }
    // CONNECT is the one method without `:scheme` and `:path`; it is not served either way.
    if head.method.is_empty() || !scheme || !path || head.path.is_empty() {
        return Err(BlockError::Malformed("missing :method, :scheme or :path"));
    }
    Ok(head)
}

/// Refuses a regular field HTTP/2 does not allow.
fn check_field(name: &str, value: &[u8]) -> Result<(), &'static str> {
    if name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return Err("upper-case field name");
    }
    if CONNECTION_FIELDS.contains(&name) {
        return Err("connection-specific field");
    }
    if name == "te" && value != b"trailers" {
        return Err("te other than trailers");
    }
    if value.iter().any(|&byte| matches!(byte, b'\0' | b'\r' | b'\n')) {
        return Err("NUL, CR or LF in a field value");
    }
    Ok(())
}

/// Adds a field; a second `cookie` is joined to the first, as HTTP/1.1 has one.
fn add_field(fields: &mut Vec<(String, Vec<u8>)>, name: &str, value: &[u8]) {
    if name == "cookie" {
        if let Some((_, cookies)) = fields.iter_mut().find(|(seen, _)| seen == "cookie") {
            cookies.extend_from_slice(b"; ");
            cookies.extend_from_slice(value);
            return;
        }
    }
    fields.push((name.to_owned(), value.to_vec()));
}

/// An HTTP/1.1 response as HTTP/2 sends it: its head as a header block, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `:status` and the fields, HPACK-encoded without the dynamic table.
    pub block: Vec<u8>,
    /// The body (a refusal's reason), possibly empty.
    pub body: Vec<u8>,
}

/// Re-encodes `http1`, a whole response as [`crate::http::Responses`] builds it, for HTTP/2:
/// names in lower case, the connection's own fields (`Connection`, `Keep-Alive`,
/// `Transfer-Encoding`) left out. `None` if it is not a response head (never, for ours).
pub fn response(http1: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = parsed.parse(http1).ok()? else { return None };
    let status = itoa::Buffer::new().format(parsed.code?).to_owned();
    let names: Vec<String> = parsed.headers.iter().map(|header| header.name.to_ascii_lowercase()).collect();
    let fields = names
        .iter()
        .zip(parsed.headers.iter())
        .filter(|(name, _)| !CONNECTION_FIELDS.contains(&name.as_str()))
        .map(|(name, header)| (name.as_str(), header.value));
    let block = encode_block(std::iter::once((":status", status.as_bytes())).chain(fields));
    Some(Response { block, body: http1[head_len..].to_vec() })
}

/// Encodes `fields` as a header block that uses no dynamic table: each a literal without
/// indexing (RFC 7541 §6.2.2), its strings without Huffman. Any decoder reads it the same on
/// every stream, so it is built once and sent as often as needed.
pub fn encode_block<'a>(fields: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        integer(&mut block, name.len(), 7, 0x00);
        block.extend_from_slice(name.as_bytes());
        integer(&mut block, value.len(), 7, 0x00);
        block.extend_from_slice(value);
    }
    block
}

/// Appends an HPACK integer with a `prefix`-bit prefix under `high` bits (RFC 7541 §5.1).
fn integer(block: &mut Vec<u8>, value: usize, prefix: u8, high: u8) {
    // loona-hpack's encoder writes integers as RFC 7541 says; only the fields are ours.
    loona_hpack::encoder::encode_integer_into(value, prefix, high, block)
        .expect("writing an integer to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        encode_block(fields.iter().map(|(name, value)| (*name, value.as_bytes())))
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "https"), (":path", "/sse?subscribe=a"), (":authority", "x")];

    #[test]
    fn a_request_decodes_to_its_method_path_and_fields_cookies_joined() {
        let mut fields = GET.to_vec();
        fields.extend([("cookie", "a=1"), ("user-agent", "t"), ("cookie", "b=2")]);
        let head = decode_request(&mut Decoder::new(), &block(&fields), 8192).unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/sse?subscribe=a"));
        assert_eq!(
            head.fields,
            [("cookie".into(), b"a=1; b=2".to_vec()), ("user-agent".into(), b"t".to_vec())]
        );
    }

    #[test]
    fn requests_rfc_9113_calls_malformed_are_refused() {
        for bad in [
            vec![(":method", "GET"), (":path", "/")],
            [&GET[..], &[("Host", "x")]].concat(),
            [&GET[..], &[("connection", "close")]].concat(),
            [&GET[..], &[("te", "gzip")]].concat(),
            [&[("a", "b")], &GET[..]].concat(),
            [&GET[..], &[(":method", "GET")]].concat(),
            [&GET[..], &[(":protocol", "x")]].concat(),
        ] {
            let refused = decode_request(&mut Decoder::new(), &block(&bad), 8192);
            assert!(matches!(refused, Err(BlockError::Malformed(_))), "{bad:?}: {refused:?}");
        }
    }

    #[test]
    fn a_block_that_decodes_huge_is_refused_and_the_table_stays_in_step() {
        let mut decoder = Decoder::new();
        // A 4000-byte field put in the dynamic table (literal with incremental indexing), then
        // named by index 62 a thousand times: 4 MB from a 1 KB block.
        let mut bomb = block(&GET);
        bomb.push(0x40);
        integer(&mut bomb, 1, 7, 0);
        bomb.push(b'x');
        integer(&mut bomb, 4000, 7, 0);
        bomb.extend(std::iter::repeat_n(b'y', 4000));
        bomb.extend(std::iter::repeat_n(0xbe, 1000));
        assert_eq!(decode_request(&mut decoder, &bomb, 8192), Err(BlockError::TooLarge(8192)));
        let next = [&block(&GET)[..], &[0xbe]].concat();
        let head = decode_request(&mut decoder, &next, 8192).unwrap();
        assert_eq!(head.fields[0].0, "x", "the table entry of the refused block is still there");
    }

    #[test]
    fn a_response_is_its_status_and_fields_without_the_connection_ones() {
        let http1 = b"HTTP/1.1 400 Bad Request\r\nServer: hasses\r\nContent-Length: 4\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nwhy\n";
        let response = response(http1).unwrap();
        assert_eq!(response.body, b"why\n");
        let mut decoded = Vec::new();
        Decoder::new()
            .decode_with_cb(&response.block, |n, v| decoded.push((n.into_owned(), v.into_owned())))
            .unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            [(":status", "400"), ("server", "hasses"), ("content-length", "4")]
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
        assert_eq!(decoded, expected);
    }
}
