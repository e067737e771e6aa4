//! The server's TLS identity: a CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`, generated with rcgen at every start. Only the CA
//! certificate is written (`ca.pem`); its key never leaves memory. The hidden
//! `--write-server-key` flag also writes `server.pem` and `server-key.pem` so a
//! benchmark can give nginx the very same certificate.

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

/// Writes `name` in `dir` through a temporary name, so a reader never sees half a PEM.
pub fn write_pem(dir: &Path, name: &str, pem: &str) -> Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&temporary, pem)
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
