//! TLS with rustls: loading the certificate chain and key, and reloading them on SIGHUP.
//!
//! Owns turning the operator's PEM files into a rustls `ServerConfig` (TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`, or `http/1.1` alone) and saying exactly what is wrong with them, and the session resumption state that
//! outlives a reload: the ticket keys and the TLS 1.2 session cache. It does no I/O on
//! connections: each shard drives its own sessions in its own loop (`shard::tls_session`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::GetRandomFailed;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::{ServerConfig, TicketRotator};

/// The certificate chain and key to serve HTTPS with (absolute paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// Why the certificate or key cannot be used. `Display` is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The certificate or key file, as configured.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{0}: no certificate in it (expected PEM 'BEGIN CERTIFICATE')")]
    NoCertificate(PathBuf),
    /// The file holds no PEM private key.
    #[error("{0}: no private key in it (expected PEM PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// The file is not valid PEM.
    #[error("{path}: not valid PEM: {reason}")]
    BadPem {
        /// The certificate or key file, as configured.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{key}: the private key does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the pair for another reason.
    #[error("{cert}, {key}: {reason}")]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The session ticket keys cannot be made (the system's random source failed).
    #[error("cannot make TLS session ticket keys: {0}")]
    Tickets(String),
}

/// The longest `--tls-ticket-lifetime`: rustls' ring ticketer, which makes each key, replaces
/// its own key after 6 hours and accepts it for 12 at most; a longer lifetime would be a lie.
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions the TLS 1.2 cache keeps (TLS 1.3 and TLS 1.2 clients that take tickets need none):
/// enough for the 18,000 clients of a reconnect storm to resume, at 192 bytes of heap a session
/// (measured: a 32-byte id, a 48-byte master secret, ALPN and the map's own) 4 MB at most.
/// rustls' default of 256 made nearly every reconnecting client pay a full handshake.
const TLS12_SESSIONS: usize = 20_000;

/// TLS 1.3 tickets sent after each handshake, full or resumed (rustls sends 2). A ticket is
/// good for one resumption, and each resumed handshake brings a new one: one a connection keeps
/// a client with a ticket for every connection it had, enough to resume all of them at once
/// (browsers keep only the latest per site anyway). The second cost about 1 % of a handshake's CPU
/// (its encryption, its key, three calls for random bytes) and 168 bytes on the wire.
const TLS13_TICKETS: usize = 1;

/// The TLS settings new connections use, swapped whole on reload.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    resumption: Resumption,
    /// ALPN offers `h2` too.
    http2: bool,
    config: RwLock<Arc<ServerConfig>>,
}

/// What lets a client resume its session rather than pay a full handshake. Kept across reloads:
/// a new certificate does not invalidate the sessions (nor the tickets) clients hold.
#[derive(Debug, Clone)]
struct Resumption {
    /// Encrypts the server's session state into TLS 1.3 (and TLS 1.2) tickets: nothing is
    /// stored per client, so any number of them can resume.
    ticketer: Arc<dyn ProducesTickets>,
    /// TLS 1.2 sessions of clients that take no tickets, by session id.
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    /// Tickets are issued with `lifetime` as their lifetime hint. Keys rotate every half
    /// lifetime and the one before is still accepted: a ticket resumes for between half its
    /// lifetime and its whole lifetime after it was issued, and a key is gone a lifetime after
    /// it was made (at the first handshake after that, since rustls rotates when it uses a key).
    fn new(lifetime: Duration) -> Result<Resumption, TlsError> {
        let half = u32::try_from(lifetime.as_secs() / 2).unwrap_or(u32::MAX).max(1);
        let ticketer =
            TicketRotator::new(half, ring_ticket_keys).map_err(|e| TlsError::Tickets(e.to_string()))?;
        Ok(Resumption { ticketer: Arc::new(ticketer), cache: ServerSessionMemoryCache::new(TLS12_SESSIONS) })
    }
}

/// A fresh random key from rustls' ring ticketer (ChaCha20-Poly1305), for our own rotator: the
/// ticketer's rotation period is fixed at 6 hours, so ours replaces it whole, sooner, to honour
/// `--tls-ticket-lifetime`.
fn ring_ticket_keys() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    let keys = rustls::crypto::ring::Ticketer::new().map_err(|_| GetRandomFailed)?;
    Ok(Box::new(TicketKeys(keys)))
}

/// One ring ticketer, boxed as the rotator wants it.
#[derive(Debug)]
struct TicketKeys(Arc<dyn ProducesTickets>);

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

impl Tls {
    /// Loads the files, with session tickets of `ticket_lifetime` (at most
    /// [`MAX_TICKET_LIFETIME`]), offering `h2` in ALPN with `http2`; an error names the file
    /// and the problem.
    pub fn load(files: &TlsFiles, ticket_lifetime: Duration, http2: bool) -> Result<Tls, TlsError> {
        let resumption = Resumption::new(ticket_lifetime.min(MAX_TICKET_LIFETIME))?;
        let config = server_config(files, &resumption, http2)?;
        Ok(Tls { config: RwLock::new(config), resumption, http2, files: files.clone() })
    }

    /// The settings for a new connection (a read lock, on accept only).
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read())
    }

    /// Reads the files again for the connections to come; on failure the old ones stay.
    /// Sessions and tickets issued before resume after.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files, &self.resumption, self.http2)?;
        *self.config.write() = config;
        Ok(())
    }

    /// The files, for the status block.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn server_config(
    files: &TlsFiles,
    resumption: &Resumption,
    http2: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let provider = Arc::new(provider());
    let refused =
        |reason: String| TlsError::Refused { cert: files.cert.clone(), key: files.key.clone(), reason };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| refused(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone() }
            }
            other => refused(other.to_string()),
        })?;
    // The client's first choice among these: browsers and curl list `h2` first.
    config.alpn_protocols =
        if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    // Our order of suites, not the client's: see `provider`.
    config.ignore_client_order = true;
    config.ticketer = Arc::clone(&resumption.ticketer);
    config.session_storage = Arc::clone(&resumption.cache);
    config.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(config))
}

/// ring's suites with `TLS13_AES_128_GCM_SHA256` first: a handshake's transcript and key
/// schedule are then SHA-256, which x86-64 CPUs with the SHA extensions compute in hardware,
/// where SHA-384 (`TLS13_AES_256_GCM_SHA384`'s, ring's first) is SHA-512 in software, a sixth of
/// a full handshake's CPU. It is the suite every TLS 1.3 peer must offer; the others stay, in
/// ring's order, after it.
fn provider() -> rustls::crypto::CryptoProvider {
    let preferred = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.suite();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != preferred);
    provider
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey(path.to_path_buf()),
        other => pem_error(path, other),
    })
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    match error {
        pem::Error::Io(source) => TlsError::Read { path: path.to_path_buf(), source },
        other => TlsError::BadPem { path: path.to_path_buf(), reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Files {
            let dir = std::env::temp_dir().join(format!("hasses-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Files { dir }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pair() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.pem(), cert.key_pair.serialize_pem())
    }

    #[test]
    fn loads_a_certificate_and_its_key() {
        let files = Files::new("ok");
        let (cert, key) = pair();
        let tls = TlsFiles { cert: files.write("c.pem", &cert), key: files.write("k.pem", &key) };
        let loaded = Tls::load(&tls, Duration::from_secs(3600), false).unwrap();
        assert_eq!(loaded.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let loaded = Tls::load(&tls, Duration::from_secs(3600), true).unwrap();
        assert_eq!(loaded.config().alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        loaded.reload().unwrap();
    }

    #[test]
    fn each_bad_file_is_named_with_its_problem() {
        let files = Files::new("bad");
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let cert_path = files.write("c.pem", &cert);
        let key_path = files.write("k.pem", &key);
        let check = |cert: &Path, key: &Path| {
            Tls::load(&TlsFiles { cert: cert.into(), key: key.into() }, MAX_TICKET_LIFETIME, true)
                .unwrap_err()
                .to_string()
        };
        let missing = files.dir.join("absent.pem");
        assert!(check(&missing, &key_path).starts_with(&format!("{}: cannot read", missing.display())));
        assert!(check(&key_path, &key_path).contains("no certificate in it"));
        assert!(check(&cert_path, &cert_path).contains("no private key in it"));
        let wrong = files.write("wrong.pem", &other_key);
        assert_eq!(
            check(&cert_path, &wrong),
            format!(
                "{}: the private key does not match the certificate in {}",
                wrong.display(),
                cert_path.display()
            )
        );
    }
}
