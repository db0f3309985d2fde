//! TLS with rustls: loading the certificate chain and key, and reloading them on SIGHUP.
//!
//! Owns turning the operator's PEM files into a rustls `ServerConfig` (TLS 1.2 and 1.3, ALPN
//! `http/1.1`) and saying exactly what is wrong with them. It does no I/O on connections: each
//! shard drives its own `ServerConnection`s in its own loop.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

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
}

/// Plaintext a session holds for sending at most: one full record.
const TLS_SEND_BUFFER: usize = 16 * 1024;

/// The TLS settings new connections use, swapped whole on reload.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the files; an error names the file and the problem.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        Ok(Tls { config: RwLock::new(server_config(files)?), files: files.clone() })
    }

    /// The settings for a new connection (a read lock, on accept only).
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read())
    }

    /// A session for a new connection. Its send buffer is capped at one full TLS record of
    /// plaintext: frames wait in the connection's outbox, shared with every other recipient,
    /// rather than as a private copy inside TLS (rustls' default would hold 64 KiB a client).
    pub fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let mut session = ServerConnection::new(self.config())?;
        session.set_buffer_limit(Some(TLS_SEND_BUFFER));
        Ok(session)
    }

    /// Reads the files again for the connections to come; on failure the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.config.write() = config;
        Ok(())
    }

    /// The files, for the status block.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
        let loaded = Tls::load(&tls).unwrap();
        assert_eq!(loaded.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
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
            Tls::load(&TlsFiles { cert: cert.into(), key: key.into() }).unwrap_err().to_string()
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
