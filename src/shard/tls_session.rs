//! A connection's TLS session over rustls' unbuffered API: the session's state, and only the
//! bytes that cannot go anywhere else.
//!
//! rustls' buffered `ServerConnection` keeps a receive buffer of at least 4 KiB per session for
//! as long as it lives, half of what an idle TLS connection cost. Here the shard reads and
//! encrypts in buffers of its own ([`TlsBuffers`], one per shard), and a session keeps bytes
//! only while they are in flight: part of a record not yet complete, or ciphertext the socket
//! has not taken. An idle session holds neither. It does no socket reads: the shard reads, this
//! decrypts; it writes only what it encrypted.

use std::io::{self, Write};
use std::ops::Deref;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{CommonState, ServerConfig};

use super::outbox::{Flushed, Outbox};
use crate::nonblocking::attempt;

/// Ciphertext read at once: a whole record of the largest size TLS allows (16 KiB of payload
/// and its overhead), and a client's first flight whole.
const INPUT: usize = 32 * 1024;

/// A shard's buffers for all its TLS sessions: ciphertext read, plaintext decrypted,
/// ciphertext encrypted. Allocated once, and only when the shard serves TLS.
#[derive(Debug, Default)]
pub struct TlsBuffers {
    /// Ciphertext from a socket, behind what a session kept of an incomplete record.
    pub input: Vec<u8>,
    /// Plaintext decrypted from it.
    pub plain: Vec<u8>,
    /// Ciphertext of a batch of frames, on its way to a socket.
    pub output: Vec<u8>,
}

impl TlsBuffers {
    /// The buffers a TLS shard needs.
    pub fn new() -> Self {
        TlsBuffers { input: vec![0; INPUT], plain: Vec::new(), output: Vec::new() }
    }
}

/// What decrypting a read's worth of records found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// More may come.
    Open,
    /// The peer said close_notify: nothing more will come.
    Closed,
}

/// One connection's TLS session.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// The start of a record (or of a handshake message) not complete yet, between two reads.
    incoming: Vec<u8>,
    /// Ciphertext the socket has not taken yet, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The socket took less than it was offered last time: it is full until it says otherwise.
    /// While not, `outgoing` holds only handshake messages never offered (the session tickets
    /// that answer the client's Finished), which go out with the next record, in one write.
    stalled: bool,
    /// Nothing has been received yet: the next bytes are the first the client sends.
    fresh: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .finish()
    }
}

impl Deref for TlsSession {
    type Target = CommonState;

    fn deref(&self) -> &CommonState {
        &self.conn
    }
}

impl TlsSession {
    /// A session for a new connection.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            stalled: false,
            fresh: true,
        })
    }

    /// True when `input` holds the first bytes the client sent and they cannot start TLS: a
    /// client speaking plain HTTP (or any plain text) to the HTTPS port. Looks at the bytes
    /// already read, so the TLS path pays no extra call for it; rustls must not see them.
    pub fn is_plaintext(&self, input: &[u8]) -> bool {
        self.fresh && input.first().is_some_and(|&first| !can_start_tls(first))
    }

    /// True while ciphertext waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Moves what was kept of an incomplete record to the front of `input`, and says how long
    /// it is: the socket's bytes go after it. `None` when it fills `input`: a record or a
    /// handshake message no client of ours sends.
    pub fn restore_incoming(&mut self, input: &mut [u8]) -> Option<usize> {
        let kept = self.incoming.len();
        if kept >= input.len() {
            return None;
        }
        input[..kept].copy_from_slice(&self.incoming);
        self.incoming = Vec::new();
        Some(kept)
    }

    /// Keeps `bytes` (what [`TlsSession::restore_incoming`] gave back) for the next read.
    pub fn keep_incoming(&mut self, bytes: &[u8]) {
        self.incoming = bytes.to_vec();
    }

    /// Processes the records in `input` (whole ones; the rest is kept for the next read),
    /// appending application data to `plain` and handshake messages to the outgoing bytes.
    pub fn receive(&mut self, input: &mut [u8], plain: &mut Vec<u8>) -> Result<Received, rustls::Error> {
        self.fresh = false;
        let mut done = 0;
        let mut closed = false;
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut input[done..]);
            let stop = match state? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    false
                }
                // Early data is not accepted (rustls' default): none can arrive.
                ConnectionState::ReadEarlyData(mut records) => {
                    while records.next_record().is_some() {}
                    false
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, |out| encode.encode(out))?;
                    false
                }
                // The bytes are in `outgoing`, which the shard writes next.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    closed = true;
                    true
                }
                // Waiting for more of the handshake, or ready for traffic: every whole record
                // has been processed (and so for states rustls may add).
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => true,
                _ => true,
            };
            done += discard;
            if stop {
                break;
            }
        }
        if done < input.len() {
            self.incoming = input[done..].to_vec();
        }
        Ok(if closed { Received::Closed } else { Received::Open })
    }

    /// After an error: queues the alert rustls prepared for the peer, to say why.
    pub fn queue_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = encode_into(&mut self.outgoing, |out| encode.encode(out));
        }
    }

    /// Encrypts `plain` into `output` (its whole length), once the handshake is done.
    fn encrypt(&mut self, plain: &[u8], output: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(io::Error::other)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    output.resize(output.capacity().max(plain.len() + RECORD_OVERHEAD), 0);
                    match traffic.encrypt(plain, output) {
                        Ok(n) => {
                            output.truncate(n);
                            return Ok(());
                        }
                        Err(EncryptError::InsufficientSize(e)) => output.resize(e.required_size, 0),
                        Err(e) => return Err(io::Error::other(e)),
                    }
                }
                // A handshake message of its own to send first (a key update's answer).
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, |out| encode.encode(out)).map_err(io::Error::other)?
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                other => return Err(io::Error::other(format!("TLS cannot send now ({other:?})"))),
            }
        }
    }

    /// Writes the ciphertext waiting for the socket, as far as it takes it.
    pub fn send(&mut self, socket: &mut impl Write) -> io::Result<Flushed> {
        while self.wants_write() {
            match attempt(|| socket.write(&self.outgoing[self.sent..]))? {
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(n) => self.sent += n,
                None => {
                    self.stalled = true;
                    return Ok(Flushed::Partly);
                }
            }
        }
        // An idle session keeps no buffer.
        self.outgoing = Vec::new();
        self.sent = 0;
        self.stalled = false;
        Ok(Flushed::All)
    }

    /// Sends what the socket could not take before, then encrypts `outbox`'s frames (a batch
    /// per record, in the shard's `output` buffer) and sends them behind the handshake
    /// messages waiting, as far as the socket takes.
    pub fn flush_outbox(
        &mut self,
        outbox: &mut Outbox,
        output: &mut Vec<u8>,
        socket: &mut impl Write,
    ) -> io::Result<Flushed> {
        if self.stalled && self.send(socket)? == Flushed::Partly {
            return Ok(Flushed::Partly);
        }
        match outbox.flush(&mut TlsSink { tls: self, output, socket })? {
            Flushed::All => self.send(socket),
            Flushed::Partly => Ok(Flushed::Partly),
        }
    }

    /// Encrypts `plain` whole and writes it; what the socket does not take is kept, and the
    /// next call writes it first. `WouldBlock` (taking nothing) only when the socket is full.
    pub fn write(
        &mut self,
        plain: &[u8],
        output: &mut Vec<u8>,
        socket: &mut impl Write,
    ) -> io::Result<usize> {
        if self.stalled && self.send(socket)? == Flushed::Partly {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.encrypt(plain, output)?;
        if self.wants_write() {
            // Handshake messages (the tickets, a key update's answer) go before the record,
            // in the same write: one segment, one wake-up of the peer, where two would do.
            self.outgoing.extend_from_slice(output);
            self.send(socket)?;
            return Ok(plain.len());
        }
        let written = attempt(|| socket.write(output))?.unwrap_or(0);
        if written < output.len() {
            self.outgoing.extend_from_slice(&output[written..]);
            self.stalled = true;
        }
        Ok(plain.len())
    }
}

/// A client's first TLS record is a handshake record (content type 22).
const HANDSHAKE_RECORD: u8 = 0x16;

/// True when `first`, the first byte a client sends, can start a TLS connection: a handshake
/// record, or a hello in the SSLv2 format (length with the high bit set), which rustls then
/// refuses with an alert. Every other byte is plain text: nginx tells the two apart the same
/// way (`ngx_http_ssl_handshake`).
fn can_start_tls(first: u8) -> bool {
    first == HANDSHAKE_RECORD || first & 0x80 != 0
}

/// What TLS adds to a record at most beyond its payload (header, content type, AEAD tag).
const RECORD_OVERHEAD: usize = 5 + 1 + 16;

/// Appends what `encode` writes to `out`, growing `out` as far as it needs.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = 512;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => room = e.required_size,
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
}

/// Frames go into TLS as plaintext, a write's worth per record, and out as ciphertext.
struct TlsSink<'a, W> {
    tls: &'a mut TlsSession,
    output: &'a mut Vec<u8>,
    socket: &'a mut W,
}

impl<W: Write> Write for TlsSink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tls.write(buf, self.output, self.socket)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::*;
    use crate::shard::outbox::Socket;

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Runs a handshake and a request, handing the server the client's bytes `step` at a time
    /// (as reads that return that much); the plaintext the server got, and the session.
    fn request(step: usize) -> (Vec<u8>, TlsSession, ClientConnection) {
        let (server, client) = configs();
        let mut session = TlsSession::new(server).unwrap();
        let mut client = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        client.writer().write_all(b"GET /sse HTTP/1.1\r\n\r\n").unwrap();
        let mut input = vec![0; INPUT];
        let mut plain = Vec::new();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            for piece in wire.chunks(step) {
                let kept = session.restore_incoming(&mut input).unwrap();
                input[kept..kept + piece.len()].copy_from_slice(piece);
                session.receive(&mut input[..kept + piece.len()], &mut plain).unwrap();
            }
            let mut socket = Socket { taken: Vec::new(), room: usize::MAX };
            session.send(&mut socket).unwrap();
            client.read_tls(&mut &socket.taken[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        (plain, session, client)
    }

    /// A socket that takes everything and counts the writes it was given.
    #[derive(Default)]
    struct Counting {
        taken: Vec<u8>,
        writes: usize,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.taken.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_session_tickets_go_out_with_the_first_record_in_one_write() {
        let (server, client) = configs();
        let mut session = TlsSession::new(server).unwrap();
        let mut client = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut input = vec![0; INPUT];
        // The client's hello, answered by the server's flight; then its Finished, answered by
        // the tickets, which wait for what the server sends next.
        while session.is_handshaking() {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            input[..wire.len()].copy_from_slice(&wire);
            session.receive(&mut input[..wire.len()], &mut Vec::new()).unwrap();
            if session.is_handshaking() {
                let mut socket = Counting::default();
                session.send(&mut socket).unwrap();
                client.read_tls(&mut &socket.taken[..]).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        assert!(session.wants_write(), "the tickets wait");
        let mut socket = Counting::default();
        assert_eq!(session.write(b"HTTP/1.1 200 OK\r\n\r\n", &mut Vec::new(), &mut socket).unwrap(), 19);
        assert_eq!(socket.writes, 1);
        assert!(!session.wants_write());
        client.read_tls(&mut &socket.taken[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut got = String::new();
        client.reader().read_to_string(&mut got).unwrap_err();
        assert_eq!(got, "HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn plain_text_is_told_from_tls_by_the_first_byte_received_only() {
        let (server, client) = configs();
        let mut session = TlsSession::new(server).unwrap();
        for plain in [&b"GET /sse HTTP/1.1\r\n"[..], b"POST /", b"\r\n", b"\0", b"SSH-2.0-x"] {
            assert!(session.is_plaintext(plain), "{plain:?}");
        }
        assert!(!session.is_plaintext(b""));
        assert!(!session.is_plaintext(b"\x80\x2e\x01\x03\x01"), "an SSLv2 hello goes to rustls");
        let mut hello = Vec::new();
        let mut client = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        while client.wants_write() {
            client.write_tls(&mut hello).unwrap();
        }
        assert!(!session.is_plaintext(&hello));
        let mut input = hello.clone();
        session.receive(&mut input, &mut Vec::new()).unwrap();
        assert!(!session.is_plaintext(b"GET / HTTP/1.1\r\n"), "only the first bytes are looked at");
    }

    #[test]
    fn records_fed_whole_or_byte_by_byte_give_the_same_plaintext() {
        let (whole, session, _) = request(usize::MAX);
        assert_eq!(whole, b"GET /sse HTTP/1.1\r\n\r\n");
        assert!(!session.is_handshaking());
        let (bytewise, _, _) = request(1);
        assert_eq!(bytewise, whole);
    }

    #[test]
    fn an_idle_session_keeps_no_buffer_and_a_full_socket_keeps_the_rest_in_order() {
        let (_, mut session, mut client) = request(usize::MAX);
        assert_eq!((session.incoming.capacity(), session.outgoing.capacity()), (0, 0));
        let mut output = Vec::new();
        let mut socket = Socket { taken: Vec::new(), room: 10 };
        assert_eq!(session.write(b"data: one\n\n", &mut output, &mut socket).unwrap(), 11);
        assert!(session.wants_write());
        let blocked = session.write(b"data: two\n\n", &mut output, &mut socket).unwrap_err();
        assert_eq!(blocked.kind(), io::ErrorKind::WouldBlock);
        socket.room = usize::MAX;
        assert_eq!(session.write(b"data: two\n\n", &mut output, &mut socket).unwrap(), 11);
        assert_eq!(session.send(&mut socket).unwrap(), Flushed::All);
        assert_eq!(session.outgoing.capacity(), 0);
        client.read_tls(&mut &socket.taken[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut got = String::new();
        // The stream stays open: reading ends in WouldBlock, after the data.
        client.reader().read_to_string(&mut got).unwrap_err();
        assert_eq!(got, "data: one\n\ndata: two\n\n");
    }
}
