//! rustls over the core's io_uring sockets. The only module that imports
//! rustls on the client side: its low-level API is changing, so replacing the
//! buffered API with the in-place one touches this file alone.
//!
//! Shape: ciphertext is received into an ordinary buffer, fed to rustls, and
//! plaintext is copied straight into the caller's destination (a registered
//! buffer for bodies).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::config::TLS_RECV_BYTES;
use crate::error::Error;
use crate::uring::TcpStream;

/// Builds the client configuration: OS roots (rustls-native-certs, which
/// honours `SSL_CERT_FILE` / `SSL_CERT_DIR` by replacing the OS store, as
/// OpenSSL does), webpki roots if the OS has none, plus `--ca-file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 && std::env::var_os("SSL_CERT_FILE").is_none() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let certs = read_pem_certificates(path)?;
        for cert in certs {
            roots.add(cert).map_err(|error| {
                Error::Usage(format!(
                    "--ca-file {}: certificate rejected: {error}",
                    path.display()
                ))
            })?;
        }
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: no ALPN h2 so a server never switches protocol on us.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let unusable = |detail: String| Error::Usage(format!("--ca-file {}: {detail}", path.display()));
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|error| unusable(format!("cannot read: {error}")))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|error| unusable(format!("not valid PEM: {error}")))?;
    if certs.is_empty() {
        return Err(unusable("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Checks `--ca-file` before any network I/O (exit code 2 on failure).
pub fn check_ca_file(path: &Path) -> Result<(), Error> {
    read_pem_certificates(path).map(|_| ())
}

/// A TLS client session over an io_uring TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    session: ClientConnection,
    /// Received ciphertext not yet handed to rustls: `ciphertext[fed..]`.
    ciphertext: Vec<u8>,
    fed_bytes: usize,
    timeout: Duration,
}

/// Whether a TLS failure is about trust (exit code 3) or the transport.
pub fn is_trust_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)))
}

/// What one `receive_records` step got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    Records,
    EndOfStream,
}

impl TlsStream {
    /// Runs the handshake. Certificate errors come back as `io::Error`
    /// wrapping `rustls::Error` (see `is_trust_error`).
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
        timeout: Duration,
    ) -> io::Result<TlsStream> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a valid TLS server name"),
            )
        })?;
        let session = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            tcp,
            session,
            ciphertext: Vec::with_capacity(TLS_RECV_BYTES),
            fed_bytes: 0,
            timeout,
        };
        while stream.session.is_handshaking() {
            stream.flush().await?;
            if stream.session.is_handshaking()
                && stream.session.wants_read()
                && stream.receive_records().await? == Received::EndOfStream
                && stream.session.is_handshaking()
            {
                // Without this, a server that closes mid-handshake made
                // this loop spin forever on a socket at end of stream.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ));
            }
        }
        stream.flush().await?;
        Ok(stream)
    }

    pub async fn send_all(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.session.writer().write_all(plaintext)?;
        self.flush().await
    }

    /// Copies up to `dst.len()` plaintext bytes into `dst`. 0 means the peer
    /// closed cleanly (close_notify); a close without it is `UnexpectedEof`.
    pub async fn recv(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        debug_assert!(!dst.is_empty());
        loop {
            match self.session.reader().read(dst) {
                Ok(n) => return Ok(n),
                // After end of stream, rustls answers the next read with
                // Ok(0) (close_notify) or UnexpectedEof.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.receive_records().await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn shutdown(&self) {
        self.tcp.shutdown();
    }

    /// Hands rustls more ciphertext: what is already buffered, else a receive.
    async fn receive_records(&mut self) -> io::Result<Received> {
        if self.fed_bytes == self.ciphertext.len() {
            self.ciphertext.clear();
            self.fed_bytes = 0;
            let buffer = std::mem::take(&mut self.ciphertext);
            let (result, buffer) = self.tcp.recv_append(buffer, self.timeout).await;
            self.ciphertext = buffer;
            if result? == 0 {
                // End of stream: let rustls decide between clean close and truncation.
                self.session.read_tls(&mut io::empty())?;
                self.process()?;
                return Ok(Received::EndOfStream);
            }
        }
        let mut pending = &self.ciphertext[self.fed_bytes..];
        let before = pending.len();
        self.session.read_tls(&mut pending)?;
        self.fed_bytes += before - pending.len();
        self.process()?;
        // Alerts and key updates may need sending.
        if self.session.wants_write() {
            self.flush().await?;
        }
        Ok(Received::Records)
    }

    fn process(&mut self) -> io::Result<()> {
        self.session
            .process_new_packets()
            .map(|_| ())
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
    }

    async fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            let mut out = Vec::with_capacity(4096);
            self.session.write_tls(&mut out)?;
            let (result, _) = self.tcp.send_all(out, self.timeout).await;
            result?;
        }
        Ok(())
    }
}
