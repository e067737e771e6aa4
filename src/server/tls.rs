//! The server's TLS identity: a CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`, generated with rcgen at every start. Only the CA
//! certificate is written (`ca.pem`); its key never leaves memory. The hidden
//! `--write-server-key` flag also writes `server.pem` and `server-key.pem` so a
//! benchmark can give nginx the very same certificate. A server holds its
//! cert dir locked (`ca.pem.lock`) while it runs: a second one there would
//! replace the `ca.pem` the first one's clients trust.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

pub struct Identity {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    server_cert_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

fn rcgen_error(error: rcgen::Error) -> Error {
    Error::Fatal(format!("cannot generate the TLS certificates: {error}"))
}

/// `cert_name`: issue the server certificate for this name only (a
/// certificate for another host, to test clients); default localhost,
/// 127.0.0.1 and ::1.
pub fn generate(cert_name: Option<&str>) -> Result<Identity> {
    let ca_key = KeyPair::generate().map_err(rcgen_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ringdown serve test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(rcgen_error)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(rcgen_error)?;
    let names = match cert_name {
        Some(name) => vec![name.to_string()],
        None => vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ],
    };
    let common_name = names[0].clone();
    let mut params = CertificateParams::new(names).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // OpenSSL's strict mode (Python 3.13+) wants an authority key identifier.
    params.use_authority_key_identifier_extension = true;
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .map_err(rcgen_error)?;

    Ok(Identity {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        server_cert_der: server_cert.der().clone(),
        server_key_der: server_key.serialize_der(),
    })
}

/// Beside `ca.pem` in the cert dir: `flock`ed by the server using the
/// directory, and holding its process ID (for the refusal message).
pub const CERT_DIR_LOCK_FILE: &str = "ca.pem.lock";

/// The cert dir's lock, held for the server's life. The kernel lets it go
/// when the process ends, however it ends, so a server restarted on the
/// same directory after the first exited takes it again; the file stays.
pub struct CertDirLock {
    _file: File,
}

/// Locks `dir` for this server before anything is written there, or says
/// which running server holds it.
pub fn lock_cert_dir(dir: &Path) -> Result<CertDirLock> {
    let path = dir.join(CERT_DIR_LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| Error::io(format!("opening {}", path.display()), error))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                pid if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("ringdown serve (pid {pid})")
                }
                _ => "ringdown serve".to_string(),
            };
            return Err(Error::Usage(format!(
                "--cert-dir {}: another running {holder} uses it (it holds {}), and its \
                 clients trust the ca.pem there, which this server would replace; give each \
                 server its own --cert-dir, or stop the other first",
                dir.display(),
                path.display()
            )));
        }
        Err(error) => {
            return Err(Error::io(
                format!("locking {}", path.display()),
                error.into(),
            ));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(|error| Error::io(format!("writing {}", path.display()), error))?;
    Ok(CertDirLock { _file: file })
}

/// Writes `name` in `dir` through a temporary name, so a reader never sees half a PEM.
/// Writes `pem` as `dir/name` with permissions `mode` (0600 for a private
/// key), replaced whole: a temporary, then a rename.
pub fn write_pem(dir: &Path, name: &str, pem: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let _ = std::fs::remove_file(&temporary);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| file.write_all(pem.as_bytes()))
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|error| Error::io(format!("writing {}", path.display()), error))
}

pub fn acceptor(identity: &Identity) -> Result<tokio_rustls::TlsAcceptor> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.server_key_der.clone()));
    // The client's provider (explicit: rcgen pulls in ring, and two compiled-in
    // providers would make `ServerConfig::builder()` ambiguous), so the origin
    // of every benchmark encrypts with the faster AES-GCM code too.
    let provider = Arc::new(crate::tls::crypto_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Fatal(format!("TLS protocol versions: {error}")))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.server_cert_der.clone()], key)
        .map_err(|error| Error::Fatal(format!("TLS server configuration: {error}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
