//! rustls over the core's io_uring sockets. The only module that imports
//! rustls on the client side: its low-level API is changing, so following it
//! touches this module alone.
//!
//! Shape: rustls's unbuffered API for the handshake, then, on TLS 1.3, our
//! own record layer (`record.rs`) with rustls's traffic secrets (`session.rs`
//! drives both, no I/O). A body's ciphertext is received into the registered
//! buffer it is written from and decrypted there (`recv_into_pool`); response
//! heads and TLS 1.2 are received into the session's buffer and copied out.
//! This file only moves bytes between those buffers and the socket.

mod record;
mod session;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::config::{TLS_RECORD_MAX_BYTES, TLS_RECV_BYTES};
use crate::error::Error;
use crate::uring::{PoolBuf, TcpStream};

use session::{Next, Session};

/// Builds the client configuration: OS roots (rustls-native-certs, which
/// honours `SSL_CERT_FILE` / `SSL_CERT_DIR` by replacing the OS store, as
/// OpenSSL does), webpki roots if the OS has none, plus `--ca-file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let cert_file = cert_env("SSL_CERT_FILE")?;
    let from_env = cert_file.is_some() || cert_env("SSL_CERT_DIR")?.is_some();
    let mut roots = RootCertStore::empty();
    let native = load_os_roots(from_env);
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 && cert_file.is_none() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    // SSL_CERT_FILE replaces the OS store: one that cannot be read would
    // leave no root at all, and every handshake would fail as untrusted.
    if let Some(path) = cert_file {
        read_pem_certificates("SSL_CERT_FILE", Path::new(&path))?;
    }
    if let Some(path) = ca_file {
        let certs = read_pem_certificates("--ca-file", path)?;
        for cert in certs {
            roots.add(cert).map_err(|error| {
                Error::Usage(format!(
                    "--ca-file {}: certificate rejected: {error}",
                    path.display()
                ))
            })?;
        }
    }
    let mut provider = crypto_provider();
    // Offer AES-128-GCM before AES-256-GCM (servers that honour the client's
    // order, as rustls and nginx do by default, then pick it): 10 AES rounds
    // instead of 14 for every byte received, with the same 128-bit security
    // level TLS 1.3 makes mandatory. The set of suites is unchanged.
    provider
        .cipher_suites
        .sort_by_key(|suite| cipher_suite_rank(suite.suite()));
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Fatal(format!("TLS protocol versions: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: no ALPN h2 so a server never switches protocol on us.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // TLS 1.3 records are ours after the handshake (`record.rs`), which
    // takes the traffic secrets from rustls.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Where the AES-GCM record cipher comes from. Decrypting every received
/// byte is the second costliest stage after SHA1, and the fastest code
/// depends on the CPU: aws-lc 0.47 has an AVX-512 AES-GCM but no VAES-AVX2
/// one, ring 0.17 has VAES-AVX2 but no AVX-512. On this project's AMD EPYC
/// machines (VAES, VPCLMULQDQ, AVX2, no AVX-512) ring sealed 1 GiB in 16 KiB
/// records in 0.17-0.19 s against 0.30-0.41 s for aws-lc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AesGcmCode {
    AwsLc,
    Ring,
}

impl AesGcmCode {
    /// The faster of the two on the CPU this process runs on.
    pub fn for_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            let vaes_avx2 = has!("vaes") && has!("vpclmulqdq") && has!("avx2");
            if vaes_avx2 && !avx512 {
                return Self::Ring;
            }
        }
        Self::AwsLc
    }
}

/// The crypto provider of every TLS configuration, client and `serve`:
/// aws-lc-rs (key exchange including X25519MLKEM768, signatures, randomness),
/// with the record ciphers from ring where `AesGcmCode::for_this_cpu` says
/// ring is faster. Named explicitly because rcgen links ring too, so
/// `ClientConfig::builder()` would depend on which providers are compiled in.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    crypto_provider_with(AesGcmCode::for_this_cpu())
}

pub fn crypto_provider_with(code: AesGcmCode) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if code == AesGcmCode::Ring {
        provider.cipher_suites = rustls::crypto::ring::default_provider().cipher_suites;
    }
    provider
}

/// Where distributions keep one bundle of every trusted root (openssl-probe's
/// list). Reading the bundle alone is what OpenSSL does for a handshake;
/// rustls-native-certs also reads every file of `/etc/ssl/certs` (~150
/// files, the same certificates again), which cost 10-60 ms per process.
const OS_ROOT_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// A trust-store variable (`SSL_CERT_FILE`, `SSL_CERT_DIR`), if set. Set
/// but empty, it is refused: it would replace the OS store with nothing
/// (OpenSSL reads it so too), and every handshake would then fail as an
/// untrusted server, far from the cause. `VAR=` is not how to unset one.
fn cert_env(name: &str) -> Result<Option<std::ffi::OsString>, Error> {
    match std::env::var_os(name) {
        Some(value) if value.is_empty() => Err(Error::Usage(format!(
            "{name} is set but empty: it would replace the system's trusted CAs with none; \
             unset it (`unset {name}`, or `env -u {name}`) or name a PEM file"
        ))),
        value => Ok(value),
    }
}

/// The OS roots: `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (`from_env`:
/// they replace the OS store, as in OpenSSL), else the first OS bundle that
/// holds certificates, else whatever rustls-native-certs finds.
fn load_os_roots(from_env: bool) -> rustls_native_certs::CertificateResult {
    if !from_env {
        for bundle in OS_ROOT_BUNDLES {
            let path = Path::new(bundle);
            if path.is_file() {
                let loaded = rustls_native_certs::load_certs_from_paths(Some(path), None);
                if !loaded.certs.is_empty() {
                    return loaded;
                }
            }
        }
    }
    rustls_native_certs::load_native_certs()
}

/// Client preference among the provider's suites; unlisted ones keep their
/// place after these (the sort is stable).
fn cipher_suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as Suite;
    match suite {
        Suite::TLS13_AES_128_GCM_SHA256 => 0,
        Suite::TLS13_AES_256_GCM_SHA384 => 1,
        Suite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => 10,
        Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => 11,
        Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => 12,
        Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 20,
        Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 21,
        Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 22,
        _ => u8::MAX,
    }
}

fn read_pem_certificates(source: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let unusable = |detail: String| Error::Usage(format!("{source} {}: {detail}", path.display()));
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
    read_pem_certificates("--ca-file", path).map(|_| ())
}

/// A TLS client session over an io_uring TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    session: Session,
    timeout: Duration,
}

/// Whether a TLS failure is about trust (exit code 3) or the transport.
pub fn is_trust_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_)))
}

/// What to do about a trust failure: a certificate for other names is
/// fixed by the name connected to (the CA is trusted: passing it again
/// would not help); any other, by trusting the CA that issued it.
pub fn trust_advice(error: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    let certificate = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match certificate {
        Some(TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "connect by a name the certificate covers (the host in --realm or the URL)",
        _ => "pass the origin's CA with --ca-file (or SSL_CERT_FILE)",
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// A handshake answered by something that is not TLS (a plain HTTP port
/// sends `HTTP/1.1 400`, whose first byte is no TLS record type) says so:
/// "received corrupt message of type InvalidContentType" named no cause.
fn handshake_error(error: rustls::Error) -> io::Error {
    let not_tls = matches!(
        error,
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
    );
    match not_tls {
        true => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the server did not answer the TLS handshake in TLS ({error}), \
                 as a plain HTTP port does (for one, use http://)"
            ),
        ),
        false => tls_error(error),
    }
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
        let session = Session::new(config, name, TLS_RECV_BYTES, AesGcmCode::for_this_cpu())
            .map_err(io::Error::other)?;
        let mut stream = TlsStream {
            tcp,
            session,
            timeout,
        };
        let started = std::time::Instant::now();
        loop {
            let (_, next) = stream.session.process(&mut []).map_err(handshake_error)?;
            stream.flush().await?;
            if stream.session.is_handshake_done() {
                return Ok(stream);
            }
            match next {
                Next::Receive => {
                    stream.within_timeout(started, "the TLS handshake did not complete")?;
                    if stream.receive().await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection during the TLS handshake",
                        ));
                    }
                }
                Next::PeerClosed | Next::DestinationFull => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the TLS session during the handshake",
                    ));
                }
            }
        }
    }

    pub async fn send_all(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.session.encrypt(plaintext).map_err(tls_error)?;
        self.flush().await
    }

    /// Each receive waits at most `timeout`, and so does a loop of them: a
    /// server trickling records that carry no data (empty ones, session
    /// tickets, a handshake byte at a time) would otherwise restart the
    /// stall timer forever.
    fn within_timeout(&self, started: std::time::Instant, what: &str) -> io::Result<()> {
        if started.elapsed() > self.timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} within {:?}", self.timeout),
            ));
        }
        Ok(())
    }

    /// Copies up to `dst.len()` plaintext bytes into `dst`. 0 means the peer
    /// closed cleanly (close_notify); a close without it is `UnexpectedEof`.
    pub async fn recv(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        debug_assert!(!dst.is_empty());
        let started = std::time::Instant::now();
        loop {
            let (n, next) = self.session.process(dst).map_err(tls_error)?;
            // Alerts, key updates: answer before anything else.
            if self.session.has_outgoing() {
                self.flush().await?;
            }
            if n > 0 {
                return Ok(n);
            }
            match next {
                Next::PeerClosed => return Ok(0),
                Next::Receive | Next::DestinationFull => {
                    self.within_timeout(started, "receiving over TLS brought no data")?;
                    if self.receive().await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            if self.session.has_unprocessed_ciphertext() {
                                "peer closed the connection in the middle of a TLS record"
                            } else {
                                "peer closed the connection without sending TLS close_notify"
                            },
                        ));
                    }
                }
            }
        }
    }

    /// Receives up to `max_bytes` of plaintext into `buf`'s spare capacity.
    /// On TLS 1.3 the ciphertext is received into `buf` itself and decrypted
    /// there, so the plaintext is never copied; otherwise, as `recv`.
    pub async fn recv_into_pool(
        &mut self,
        mut buf: PoolBuf,
        max_bytes: usize,
    ) -> (io::Result<usize>, PoolBuf) {
        let max_bytes = max_bytes.min(buf.spare_bytes());
        debug_assert!(max_bytes > 0);
        let partial_len = self.session.partial_record().len();
        if self.session.can_open_in_place()
            && buf.spare_bytes() >= partial_len + TLS_RECORD_MAX_BYTES
        {
            let start = buf.filled_bytes();
            buf.fill_from(self.session.partial_record());
            // No more ciphertext than `max_bytes` of plaintext and one
            // record past it: what opens beyond `max_bytes` is copied to
            // the session's `pending` and out again later, so a whole
            // buffer's worth (a small object's pipelined successors, a
            // `--limit-rate` read cap) cost a copy and memory no limit named.
            // (The partial record counts: it is ciphertext of that bound.)
            let receive_bytes = buf
                .spare_bytes()
                .min((max_bytes + TLS_RECORD_MAX_BYTES).saturating_sub(partial_len));
            let (received, returned) = self.tcp.recv_into(buf, receive_bytes, self.timeout).await;
            buf = returned;
            let opened = match received {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if partial_len > 0 {
                        "peer closed the connection in the middle of a TLS record"
                    } else {
                        "peer closed the connection without sending TLS close_notify"
                    },
                )),
                Ok(_) => self
                    .session
                    .open_in_place(&mut buf.filled_mut()[start..], max_bytes)
                    .map_err(tls_error),
                Err(error) => Err(error),
            };
            let (n, next) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    buf.truncate(start);
                    return (Err(error), buf);
                }
            };
            buf.truncate(start + n);
            // Alerts, key updates: answer before anything else.
            if let Err(error) = self.flush().await {
                // An error leaves `buf` as it came: a caller counts the bytes
                // of successful receives only, and asks for these again.
                buf.truncate(start);
                return (Err(error), buf);
            }
            if n > 0 || next == Next::PeerClosed {
                return (Ok(n), buf);
            }
            // Less than one record arrived: it waits in the session.
        }
        let result = self.recv(&mut buf.spare_mut()[..max_bytes]).await;
        if let Ok(n) = result {
            buf.advance(n);
        }
        (result, buf)
    }

    pub fn shutdown(&self) {
        self.tcp.shutdown();
    }

    /// Whether anything received, opened or not, or still on the socket,
    /// waits to be read.
    pub fn has_bytes_waiting(&self) -> bool {
        self.session.has_buffered() || self.tcp.has_bytes_waiting()
    }

    /// Appends received ciphertext to the session's buffer; 0 = end of stream.
    async fn receive(&mut self) -> io::Result<usize> {
        let buffer = self.session.take_incoming().map_err(tls_error)?;
        let (result, buffer) = self.tcp.recv_append(buffer, self.timeout).await;
        self.session.put_incoming(buffer);
        result
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.session.has_outgoing() {
            return Ok(());
        }
        let outgoing = self.session.take_outgoing();
        let (result, outgoing) = self.tcp.send_all(outgoing, self.timeout).await;
        self.session.put_outgoing(outgoing);
        result
    }
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite;

    #[test]
    fn aes_128_gcm_is_offered_first_and_no_suite_is_dropped() {
        let config = super::client_config(None).expect("client config");
        let offered: Vec<CipherSuite> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|suite| suite.suite())
            .collect();
        assert_eq!(offered[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(offered[1], CipherSuite::TLS13_AES_256_GCM_SHA384);
        let mut all: Vec<CipherSuite> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|suite| suite.suite())
            .collect();
        let mut sorted = offered.clone();
        all.sort_by_key(|suite| u16::from(*suite));
        sorted.sort_by_key(|suite| u16::from(*suite));
        assert_eq!(sorted, all);
    }
}
