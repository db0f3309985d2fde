//! The tail's and the outbox's own connections to Redis: a blocking socket (TCP, TLS or Unix)
//! whose replies they read as bytes.
//!
//! Owns connecting as the Redis client does for the same URL (the client parses it: address,
//! TLS, user, password, database), sending commands (encoded by the client, or bytes written
//! with `resp`), and reading a reply into a buffer until `resp` finds it whole. Why a socket
//! of its own: the client's blocking connection hands a reply only as its values, a value per
//! field of every entry (the tail's reads) or per reply (the outbox's `XADD`s), which was most
//! of those threads' time; it offers no way to the bytes. For the rare commands (liveness, the
//! trim, the look back after a lost reply) a connection is also the client's
//! `ConnectionLike`: the client encodes them and reads their replies into its values. The
//! start and the orders keep the client's connections. It does not decide what to send or
//! what a reply means.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use redis::{ConnectionAddr, ConnectionInfo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::resp::{self, RespError};
use super::{CONNECT_TIMEOUT, REPLY_TIMEOUT};

/// How much one read asks the socket for at least.
const READ_CHUNK: usize = 64 * 1024;

/// Why the connection failed or is no longer to be trusted: the tail reconnects.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Redis did not answer in time (frozen, or the network).
    #[error("no reply within {} s", REPLY_TIMEOUT.as_secs())]
    Timeout,
    /// Redis closed the connection.
    #[error("Redis closed the connection")]
    Closed,
    /// The socket failed.
    #[error("{0}")]
    Io(io::Error),
    /// The reply was an error, or not understood.
    #[error("{0}")]
    Reply(#[from] RespError),
    /// A connection of a kind this side cannot make (the client refuses it too).
    #[error("{0}")]
    Unsupported(String),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout,
            io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => WireError::Io(e),
        }
    }
}

/// The socket under the connection.
enum Socket {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Unix(UnixStream),
}

impl Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(socket) => socket.read(buf),
            Socket::Tls(socket) => socket.read(buf),
            Socket::Unix(socket) => socket.read(buf),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Socket::Tcp(socket) => socket.write_all(bytes),
            Socket::Tls(socket) => socket.write_all(bytes).and_then(|()| socket.flush()),
            Socket::Unix(socket) => socket.write_all(bytes),
        }
    }
}

/// A connection, and what it read past the last reply taken.
pub struct Wire {
    socket: Socket,
    /// Room for reads, zeroed once as it grows (not before every read: most replies are short).
    buf: Vec<u8>,
    /// Where the bytes not taken yet start in `buf`.
    start: usize,
    /// Where the bytes read end in `buf`.
    end: usize,
    /// The database selected, for the client's `ConnectionLike`.
    db: i64,
}

impl Wire {
    /// Connects to where `info` says, over TLS when it says so, and logs in as it says, every
    /// step under the client's timeouts.
    pub fn connect(info: &ConnectionInfo) -> Result<Wire, WireError> {
        let socket = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Socket::Tcp(tcp(host, *port)?),
            ConnectionAddr::TcpTls { host, port, insecure: false, .. } => {
                Socket::Tls(Box::new(tls(host, tcp(host, *port)?)?))
            }
            ConnectionAddr::Unix(path) => {
                let socket = UnixStream::connect(path)?;
                socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
                socket.set_write_timeout(Some(REPLY_TIMEOUT))?;
                Socket::Unix(socket)
            }
            other => {
                return Err(WireError::Unsupported(format!(
                    "{other}: only TCP, TLS verifying the certificate, or a Unix socket"
                )))
            }
        };
        let redis = info.redis_settings();
        let mut wire = Wire { socket, buf: vec![0; 2 * READ_CHUNK], start: 0, end: 0, db: redis.db() };
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = redis.username() {
                auth.arg(user);
            }
            wire.command(auth.arg(password))?;
        }
        if redis.db() != 0 {
            wire.command(redis::cmd("SELECT").arg(redis.db()))?;
        }
        Ok(wire)
    }

    /// Sends a command.
    pub fn send(&mut self, command: &redis::Cmd) -> Result<(), WireError> {
        self.write(&command.get_packed_command())
    }

    /// Sends commands already written as RESP (several at once: a pipeline).
    pub fn write(&mut self, commands: &[u8]) -> Result<(), WireError> {
        Ok(self.socket.write_all(commands)?)
    }

    /// Reads the next reply into the client's values (a server error as one of them).
    fn value(&mut self) -> redis::RedisResult<redis::Value> {
        redis::parse_redis_value(self.reply()?)
    }

    /// Reads the next reply whole: its bytes, taken (the next call reads past them).
    pub fn reply(&mut self) -> Result<&[u8], WireError> {
        let used = loop {
            match resp::reply_len(&self.buf[self.start..self.end])? {
                Some(used) => break used,
                None => self.fill()?,
            }
        };
        let at = self.start;
        self.start += used;
        Ok(&self.buf[at..at + used])
    }

    /// Sends a command whose reply is a status (`+OK`).
    fn command(&mut self, command: &redis::Cmd) -> Result<(), WireError> {
        self.send(command)?;
        resp::status_reply(self.reply()?)?.whole()?;
        Ok(())
    }

    /// Reads what the socket has (waiting up to the reply timeout), after the bytes not taken.
    fn fill(&mut self) -> Result<(), WireError> {
        if self.buf.len() - self.end < READ_CHUNK {
            // The bytes not taken yet go to the front; a reply longer than the room doubles it.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < READ_CHUNK {
                self.buf.resize(2 * self.buf.len(), 0);
            }
        }
        let read = loop {
            // A signal (a SIGSTOP and SIGCONT, say) ends the wait early: nothing was lost.
            match self.socket.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        self.end += read;
        match read {
            0 => Err(WireError::Closed),
            _ => Ok(()),
        }
    }
}

/// The rare commands' way through a [`Wire`]: the client encodes them and reads the replies.
impl redis::ConnectionLike for Wire {
    fn req_packed_command(&mut self, command: &[u8]) -> redis::RedisResult<redis::Value> {
        self.write(command)?;
        self.value()
    }

    fn req_packed_commands(
        &mut self,
        commands: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.write(commands)?;
        let mut values = Vec::with_capacity(count);
        for at in 0..offset + count {
            let value = self.value()?;
            if at >= offset {
                values.push(value);
            }
        }
        Ok(values)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<()>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        true
    }
}

/// A failed connection as the client's error, as the client's own connection would fail: a
/// timeout is one, a reply not understood is an I/O error (the connection is not to be
/// trusted after it), a refusal is Redis'.
impl From<WireError> for redis::RedisError {
    fn from(e: WireError) -> redis::RedisError {
        let io = |kind, e: &WireError| io::Error::new(kind, e.to_string()).into();
        match e {
            WireError::Timeout => io(io::ErrorKind::TimedOut, &e),
            WireError::Closed => io(io::ErrorKind::UnexpectedEof, &e),
            WireError::Io(e) => e.into(),
            WireError::Reply(RespError::Refused(text)) => {
                (redis::ErrorKind::Client, "Redis refused the command", text).into()
            }
            WireError::Reply(RespError::Unexpected { .. }) => io(io::ErrorKind::InvalidData, &e),
            WireError::Unsupported(text) => {
                (redis::ErrorKind::InvalidClientConfig, "unsupported", text).into()
            }
        }
    }
}

/// A TCP connection with the client's timeouts, sending at once (no Nagle).
fn tcp(host: &str, port: u16) -> Result<TcpStream, WireError> {
    let mut last = None;
    for address in std::net::ToSocketAddrs::to_socket_addrs(&(host, port))? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(socket) => {
                socket.set_nodelay(true)?;
                socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
                socket.set_write_timeout(Some(REPLY_TIMEOUT))?;
                return Ok(socket);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| WireError::Unsupported(format!("{host} has no address")), WireError::from))
}

/// TLS over `socket` to `host`, trusting the system's certificates (`SSL_CERT_FILE` names
/// others), as the client does.
fn tls(host: &str, socket: TcpStream) -> Result<StreamOwned<ClientConnection, TcpStream>, WireError> {
    let tls_error = |e: &dyn std::fmt::Display| WireError::Io(io::Error::other(format!("TLS: {e}")));
    let found = rustls_native_certs::load_native_certs();
    if let Some(e) = found.errors.first() {
        return Err(tls_error(e));
    }
    let mut roots = RootCertStore::empty();
    for cert in found.certs {
        roots.add(cert).map_err(|e| tls_error(&e))?;
    }
    // The provider the server's own TLS uses (`crate::tls`), named rather than left to the
    // process default, which is not set when more than one provider is built in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| tls_error(&e))?;
    let connection = ClientConnection::new(Arc::new(config), name).map_err(|e| tls_error(&e))?;
    Ok(StreamOwned::new(connection, socket))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connection over one end of a socket pair; the other end plays Redis.
    fn pair() -> (Wire, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (Wire { socket: Socket::Unix(ours), buf: vec![0; 2 * READ_CHUNK], start: 0, end: 0, db: 0 }, theirs)
    }

    #[test]
    fn replies_are_taken_whole_and_one_by_one_however_they_arrive() {
        let (mut wire, mut redis) = pair();
        // A short reply, one longer than the room read into, then many short ones: sent in
        // cuts that fall anywhere, while the replies are taken.
        let long = format!("${}\r\n{}\r\n", 5 * READ_CHUNK, "x".repeat(5 * READ_CHUNK));
        let shorts: Vec<String> = (0..2000).map(|i| format!("$15\r\n1700000000000-{}\r\n", i % 10)).collect();
        let mut bytes = b"+OK\r\n".to_vec();
        bytes.extend_from_slice(long.as_bytes());
        shorts.iter().for_each(|short| bytes.extend_from_slice(short.as_bytes()));
        let sender = std::thread::spawn(move || {
            for cut in bytes.chunks(7777) {
                redis.write_all(cut).unwrap();
            }
        });
        assert_eq!(wire.reply().unwrap(), b"+OK\r\n");
        assert_eq!(wire.reply().unwrap(), long.as_bytes());
        for short in &shorts {
            assert_eq!(wire.reply().unwrap(), short.as_bytes());
        }
        sender.join().unwrap();
        // Redis' end is gone (dropped with the thread): nothing more comes.
        assert!(matches!(wire.reply(), Err(WireError::Closed)));
    }

    #[test]
    fn a_failed_connection_is_lost_to_the_client_and_a_refusal_is_not() {
        let timeout = redis::RedisError::from(WireError::Timeout);
        assert!(timeout.is_timeout());
        assert!(redis::RedisError::from(WireError::Closed).is_connection_dropped());
        let garbled = WireError::Reply(RespError::Unexpected { at: 3, what: "an empty line".into() });
        assert!(redis::RedisError::from(garbled).is_io_error(), "not to be trusted after it");
        let refused = redis::RedisError::from(WireError::Reply(RespError::Refused("WRONGTYPE no".into())));
        assert!(!refused.is_io_error() && !refused.is_timeout());
        assert!(refused.to_string().contains("WRONGTYPE no"), "{refused}");
    }
}
