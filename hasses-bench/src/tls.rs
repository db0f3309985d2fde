//! `--tls`: the rustls client settings every connection shares (the certificate to trust,
//! TLS 1.3 and 1.2, ALPN `http/1.1`) and the name to verify the server by.
//!
//! Owns turning `--ca` and `--server-name` into a `ClientConfig`; the receivers drive the
//! sessions themselves, non-blocking, in their own poll loops.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::cli::Options;

/// What a receiver needs to open a TLS session.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsSetup {
    /// The settings `--tls`, `--ca` and `--server-name` ask for; `None` without `--tls`.
    pub fn from_options(opts: &Options) -> io::Result<Option<TlsSetup>> {
        if !opts.tls {
            return Ok(None);
        }
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let ca = opts.ca.as_ref().ok_or_else(|| invalid("--tls needs --ca FILE".into()))?;
        let mut roots = RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| invalid(format!("{}: {e}", ca.display())))?
        {
            let cert = cert.map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
            roots.add(cert).map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(invalid(format!("{}: no PEM certificate in it", ca.display())));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(|e| invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every connection is a full handshake, as every new client's would be.
        config.resumption = rustls::client::Resumption::disabled();
        let name = match &opts.server_name {
            Some(name) => name.clone(),
            None => opts.sse.addr.ip().to_string(),
        };
        let name = ServerName::try_from(name.as_str())
            .map_err(|e| invalid(format!("--server-name {name}: {e}")))?
            .to_owned();
        Ok(Some(TlsSetup { config: Arc::new(config), name }))
    }

    /// A new client session (it sends its ClientHello at the first write).
    pub fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(Arc::clone(&self.config), self.name.clone())
    }
}
