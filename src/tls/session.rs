//! The I/O-free half of a TLS client connection: rustls's unbuffered API
//! for the handshake, then (TLS 1.3) our own record layer (`super::record`)
//! over the same ciphertext buffer. The async half (`super::TlsStream`) only
//! moves bytes between these buffers and the socket, so this file is tested
//! with an in-memory peer (see the tests below).
//!
//! Copies per received byte on TLS 1.3: the kernel's copy into the caller's
//! buffer and the decryption there (`open_in_place`); only the start of a
//! record cut by a receive is copied (into `incoming` and back). Response
//! heads, and TLS 1.2 through rustls, take `process`: plaintext is copied
//! into the caller's destination (rustls 0.23 copies it once more into a
//! `Vec` of its own first).

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::sync::Arc;

use super::AesGcmCode;
use super::record::Records;
use crate::config::{TLS_INCOMING_MAX_BYTES, TLS_RECORD_MAX_BYTES};

/// What the session needs after `process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Every complete record is processed: receive more ciphertext.
    Receive,
    /// The destination is full; more plaintext may be buffered.
    DestinationFull,
    /// The peer sent close_notify and every byte before it was delivered.
    PeerClosed,
}

pub(super) struct Session {
    /// rustls, until `records` takes over after a TLS 1.3 handshake.
    conn: Option<UnbufferedClientConnection>,
    records: Option<Records>,
    /// Whose AEAD code `records` uses.
    aead_code: AesGcmCode,
    /// Received ciphertext; `incoming[incoming_start..]` is not yet consumed
    /// by rustls. Its length is where the next receive appends.
    incoming: Vec<u8>,
    incoming_start: usize,
    /// TLS bytes to send, in order (handshake, alerts, key updates, requests).
    outgoing: Vec<u8>,
    /// Decrypted plaintext that did not fit the caller's destination:
    /// `pending[pending_start..]`.
    pending: Vec<u8>,
    pending_start: usize,
    peer_closed: bool,
    handshake_done: bool,
}

impl Session {
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        incoming_capacity_bytes: usize,
        aead_code: AesGcmCode,
    ) -> Result<Session, rustls::Error> {
        Ok(Session {
            conn: Some(UnbufferedClientConnection::new(config, name)?),
            records: None,
            aead_code,
            incoming: Vec::with_capacity(incoming_capacity_bytes),
            incoming_start: 0,
            outgoing: Vec::new(),
            pending: Vec::new(),
            pending_start: 0,
            peer_closed: false,
            handshake_done: false,
        })
    }

    pub fn is_handshake_done(&self) -> bool {
        self.handshake_done
    }

    /// close_notify seen, by rustls or (TLS 1.3, after the handshake) by our
    /// record layer, which keeps that state itself.
    #[cfg(test)]
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed || self.records.as_ref().is_some_and(Records::is_peer_closed)
    }

    /// True when ciphertext of an unfinished record is buffered (a close
    /// without close_notify then cut a record, not just the stream).
    pub fn has_unprocessed_ciphertext(&self) -> bool {
        self.incoming_start < self.incoming.len()
    }

    /// True when anything received waits here to be read: plaintext
    /// opened past what a caller took, or ciphertext not yet opened.
    pub fn has_buffered(&self) -> bool {
        self.pending_start < self.pending.len() || self.has_unprocessed_ciphertext()
    }

    /// Runs rustls over the buffered ciphertext and copies application data
    /// into `destination`; what does not fit waits for the next call. With an
    /// empty destination every record is kept for later (handshake, send).
    /// Returns the bytes copied and what the session needs next.
    pub fn process(&mut self, destination: &mut [u8]) -> Result<(usize, Next), rustls::Error> {
        if self.records.is_some() {
            return self.process_records(destination);
        }
        let processed = self.process_inner(destination, &mut None)?;
        if self.handshake_done {
            self.take_over_records()?;
        }
        Ok(processed)
    }

    /// After a TLS 1.3 handshake, our record layer replaces rustls's.
    fn take_over_records(&mut self) -> Result<(), rustls::Error> {
        let is_tls13 = self
            .conn
            .as_ref()
            .is_some_and(|conn| conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3));
        if is_tls13 && self.pending.is_empty() {
            let conn = self.conn.take().expect("checked above");
            self.records = Some(Records::new(conn, self.aead_code)?);
        }
        Ok(())
    }

    /// `process` on our record layer: decrypts the complete records buffered
    /// in place, until `destination` is full, and copies the plaintext out.
    fn process_records(&mut self, destination: &mut [u8]) -> Result<(usize, Next), rustls::Error> {
        let mut delivered = self.take_pending(destination);
        let records = self.records.as_mut().expect("records");
        if !destination.is_empty() && delivered < destination.len() {
            let opened = records.open(
                &mut self.incoming,
                self.incoming_start,
                self.incoming_start,
                destination.len() - delivered,
                &mut self.outgoing,
            )?;
            let plaintext = &self.incoming[self.incoming_start..opened.out_end];
            let n = plaintext.len().min(destination.len() - delivered);
            destination[delivered..delivered + n].copy_from_slice(&plaintext[..n]);
            self.pending.extend_from_slice(&plaintext[n..]);
            delivered += n;
            self.incoming_start = opened.in_next;
        }
        let next = if !destination.is_empty() && delivered == destination.len() {
            Next::DestinationFull
        } else if records.is_peer_closed() && self.pending.is_empty() {
            Next::PeerClosed
        } else {
            Next::Receive
        };
        Ok((delivered, next))
    }

    /// True when the next receive may land in the caller's buffer and be
    /// decrypted there (`open_in_place`): our record layer is on, no
    /// plaintext waits, and what is buffered is at most the start of one
    /// record (`partial_record`).
    pub fn can_open_in_place(&self) -> bool {
        let Some(records) = &self.records else {
            return false;
        };
        let buffered = &self.incoming[self.incoming_start..];
        self.pending.is_empty()
            && !records.is_peer_closed()
            && Records::record_len(buffered).is_none_or(|len| len > buffered.len())
    }

    /// The start of a record cut by the last receive: the caller puts it in
    /// front of the next receive's bytes.
    pub fn partial_record(&self) -> &[u8] {
        &self.incoming[self.incoming_start..]
    }

    /// Decrypts `region` (the partial record, then received ciphertext) in
    /// place: up to `max_bytes` of plaintext end up at `region[..n]`, the rest
    /// waits in the session, as does a record cut at the end. Returns `n`.
    pub fn open_in_place(
        &mut self,
        region: &mut [u8],
        max_bytes: usize,
    ) -> Result<(usize, Next), rustls::Error> {
        debug_assert!(self.can_open_in_place());
        let records = self.records.as_mut().expect("records");
        let opened = records.open(region, 0, 0, usize::MAX, &mut self.outgoing)?;
        self.incoming.clear();
        self.incoming_start = 0;
        self.incoming.extend_from_slice(&region[opened.in_next..]);
        let n = opened.out_end.min(max_bytes);
        self.pending.extend_from_slice(&region[n..opened.out_end]);
        // The caller received at most one record past `max_bytes`.
        debug_assert!(self.pending.len() <= crate::config::TLS_RECORD_MAX_BYTES);
        let next = if records.is_peer_closed() && self.pending.is_empty() {
            Next::PeerClosed
        } else {
            Next::Receive
        };
        Ok((n, next))
    }

    /// Encrypts `plaintext` after whatever is queued to send. Fails unless the
    /// handshake is done and we have not closed.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<(), rustls::Error> {
        if let Some(records) = &mut self.records {
            return records.seal(plaintext, &mut self.outgoing);
        }
        let mut request = Some(plaintext);
        self.process_inner(&mut [], &mut request)?;
        if request.is_some() {
            return Err(rustls::Error::General(
                "cannot send: the TLS session is not open for application data".into(),
            ));
        }
        Ok(())
    }

    fn process_inner(
        &mut self,
        destination: &mut [u8],
        to_encrypt: &mut Option<&[u8]>,
    ) -> Result<(usize, Next), rustls::Error> {
        let mut delivered = self.take_pending(destination);
        loop {
            if !destination.is_empty() && delivered == destination.len() {
                return Ok((delivered, Next::DestinationFull));
            }
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .as_mut()
                .expect("rustls until the records take over")
                .process_tls_records(&mut self.incoming[self.incoming_start..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    self.incoming_start += discard;
                    return Err(error);
                }
            };
            let mut outcome: Result<Option<Next>, rustls::Error> = Ok(None);
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(error) => {
                                outcome = Err(error);
                                break;
                            }
                        };
                        discard += record.discard;
                        let payload = record.payload;
                        let room = destination.len() - delivered;
                        let n = if destination.is_empty() {
                            0
                        } else {
                            payload.len().min(room)
                        };
                        destination[delivered..delivered + n].copy_from_slice(&payload[..n]);
                        delivered += n;
                        if n < payload.len() {
                            self.pending.extend_from_slice(&payload[n..]);
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let start = self.outgoing.len();
                    let mut reserve = TLS_RECORD_MAX_BYTES;
                    loop {
                        self.outgoing.resize(start + reserve, 0);
                        match encode.encode(&mut self.outgoing[start..]) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(size)) => {
                                reserve = size.required_size;
                            }
                            Err(error @ EncodeError::AlreadyEncoded) => {
                                self.outgoing.truncate(start);
                                outcome = Err(rustls::Error::General(error.to_string()));
                                break;
                            }
                        }
                    }
                }
                // `outgoing` is sent by the caller before it receives again,
                // which is all "transmitted" has to mean here: order is kept.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::BlockedHandshake => outcome = Ok(Some(Next::Receive)),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    outcome = Ok(Some(Next::PeerClosed));
                }
                ConnectionState::WriteTraffic(mut write) => {
                    self.handshake_done = true;
                    if let Some(plaintext) = to_encrypt.take() {
                        if let Err(error) = encrypt_into(&mut write, plaintext, &mut self.outgoing)
                        {
                            outcome = Err(error);
                        }
                    }
                    if outcome.is_ok() {
                        outcome = Ok(Some(if self.peer_closed {
                            Next::PeerClosed
                        } else {
                            Next::Receive
                        }));
                    }
                }
                _ => {
                    outcome = Err(rustls::Error::General(
                        "unexpected TLS connection state for a client".into(),
                    ));
                }
            }
            self.incoming_start += discard;
            debug_assert!(self.incoming_start <= self.incoming.len());
            match outcome {
                Ok(None) => {}
                Ok(Some(next)) => return Ok((delivered, next)),
                Err(error) => return Err(error),
            }
        }
    }

    /// Copies buffered plaintext into `destination`; returns the count.
    fn take_pending(&mut self, destination: &mut [u8]) -> usize {
        let available = &self.pending[self.pending_start..];
        let n = available.len().min(destination.len());
        destination[..n].copy_from_slice(&available[..n]);
        self.pending_start += n;
        if self.pending_start == self.pending.len() {
            self.pending.clear();
            self.pending_start = 0;
        }
        n
    }

    /// The ciphertext buffer, to receive into its spare capacity (append) and
    /// hand back with `put_incoming`. Consumed bytes are dropped first; a
    /// partial record moves to the front only when the spare room could not
    /// hold a whole record, so most receives move nothing.
    pub fn take_incoming(&mut self) -> Result<Vec<u8>, rustls::Error> {
        if self.incoming_start == self.incoming.len() {
            self.incoming.clear();
            self.incoming_start = 0;
        } else if self.incoming.capacity() - self.incoming.len() < TLS_RECORD_MAX_BYTES {
            self.incoming.drain(..self.incoming_start);
            self.incoming_start = 0;
        }
        if self.incoming.len() == self.incoming.capacity() {
            // A handshake message larger than the buffer (a long certificate chain).
            if self.incoming.len() >= TLS_INCOMING_MAX_BYTES {
                return Err(rustls::Error::General(format!(
                    "TLS handshake message exceeds {TLS_INCOMING_MAX_BYTES} bytes"
                )));
            }
            self.incoming.reserve(self.incoming.len());
        }
        Ok(std::mem::take(&mut self.incoming))
    }

    pub fn put_incoming(&mut self, incoming: Vec<u8>) {
        debug_assert!(self.incoming.is_empty() && incoming.len() >= self.incoming_start);
        self.incoming = incoming;
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The bytes to send; give the (emptied) buffer back with `put_outgoing`.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    pub fn put_outgoing(&mut self, mut outgoing: Vec<u8>) {
        outgoing.clear();
        if self.outgoing.is_empty() {
            self.outgoing = outgoing;
        }
    }
}

fn encrypt_into(
    write: &mut rustls::unbuffered::WriteTraffic<'_, rustls::client::ClientConnectionData>,
    plaintext: &[u8],
    outgoing: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    // Record overhead: a header, a tag and the content type per 16 KiB record.
    let mut reserve = plaintext.len() + (plaintext.len() / 16384 + 1) * 64;
    loop {
        outgoing.resize(start + reserve, 0);
        match write.encrypt(plaintext, &mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(size)) => reserve = size.required_size,
            Err(error) => {
                outgoing.truncate(start);
                return Err(rustls::Error::General(error.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{RootCertStore, ServerConfig, ServerConnection};
    use std::io::{Read, Write};

    use crate::tls::AesGcmCode;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(crate::tls::crypto_provider())
    }

    struct Configs {
        client: Arc<rustls::ClientConfig>,
        server: Arc<ServerConfig>,
        /// The AEAD code of the client's own TLS 1.3 record layer.
        client_code: AesGcmCode,
    }

    fn configs(versions: &[&'static rustls::SupportedProtocolVersion]) -> Configs {
        let code = AesGcmCode::for_this_cpu();
        configs_with(versions, code, code)
    }

    fn configs_with(
        versions: &[&'static rustls::SupportedProtocolVersion],
        client_code: AesGcmCode,
        server_code: AesGcmCode,
    ) -> Configs {
        let identity = crate::server::tls::generate(None).expect("test identity");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(identity.ca_pem.as_bytes()).expect("CA PEM"))
            .expect("CA accepted");
        let client_provider = Arc::new(crate::tls::crypto_provider_with(client_code));
        let client = rustls::ClientConfig::builder_with_provider(client_provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = client;
        client.enable_secret_extraction = true;
        let chain = vec![
            CertificateDer::from_pem_slice(identity.server_cert_pem.as_bytes()).expect("cert PEM"),
        ];
        let key = PrivateKeyDer::from_pem_slice(identity.server_key_pem.as_bytes()).expect("key");
        let server_provider = Arc::new(crate::tls::crypto_provider_with(server_code));
        let server = ServerConfig::builder_with_provider(server_provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let mut server = server;
        server.enable_secret_extraction = true;
        Configs {
            client: Arc::new(client),
            server: Arc::new(server),
            client_code,
        }
    }

    /// A client session and an in-memory rustls server; bytes move only when
    /// a test says so, in the pieces it chooses.
    struct Pair {
        client: Session,
        server: ServerConnection,
        /// Server → client bytes not yet delivered.
        to_client: Vec<u8>,
        /// Plaintext the client received so far.
        received: Vec<u8>,
    }

    impl Pair {
        fn new(configs: &Configs) -> Pair {
            let name = ServerName::try_from("localhost").expect("name");
            Pair {
                client: Session::new(Arc::clone(&configs.client), name, 4096, configs.client_code)
                    .expect("session"),
                server: ServerConnection::new(Arc::clone(&configs.server)).expect("server"),
                to_client: Vec::new(),
                received: Vec::new(),
            }
        }

        /// Client's queued bytes → server; server's output → `to_client`.
        fn client_to_server(&mut self) {
            let outgoing = self.client.take_outgoing();
            let mut input = &outgoing[..];
            while !input.is_empty() {
                self.server.read_tls(&mut input).expect("server read_tls");
                self.server.process_new_packets().expect("server accepts");
            }
            self.client.put_outgoing(outgoing);
            self.server_output();
        }

        /// The server sends `data` (its send buffer is bounded, so in turns).
        fn server_write(&mut self, data: &[u8]) {
            let mut rest = data;
            while !rest.is_empty() {
                let n = self.server.writer().write(rest).expect("server write");
                rest = &rest[n..];
                self.server_output();
            }
        }

        fn server_output(&mut self) {
            while self.server.wants_write() {
                self.server
                    .write_tls(&mut self.to_client)
                    .expect("write_tls");
            }
        }

        /// Delivers up to `n` bytes of `to_client` the way a receive would:
        /// into the session buffer's spare capacity.
        fn deliver(&mut self, n: usize) -> usize {
            let mut incoming = self.client.take_incoming().expect("incoming");
            let room = incoming.capacity() - incoming.len();
            let n = n.min(room).min(self.to_client.len());
            incoming.extend_from_slice(&self.to_client[..n]);
            self.to_client.drain(..n);
            self.client.put_incoming(incoming);
            n
        }

        /// Processes into destinations of `destination_bytes` until the client
        /// wants more ciphertext or the peer closed.
        fn drain(&mut self, destination_bytes: usize) -> Next {
            loop {
                let mut destination = vec![0; destination_bytes];
                let (n, next) = self.client.process(&mut destination).expect("client");
                self.received.extend_from_slice(&destination[..n]);
                if self.client.has_outgoing() {
                    self.client_to_server();
                }
                if next != Next::DestinationFull {
                    return next;
                }
            }
        }

        fn handshake(&mut self, piece_bytes: usize) {
            loop {
                let (_, next) = self.client.process(&mut []).expect("handshake");
                if self.client.has_outgoing() {
                    self.client_to_server();
                }
                if self.client.is_handshake_done() {
                    return;
                }
                assert_eq!(next, Next::Receive);
                assert!(self.deliver(piece_bytes) > 0, "handshake stalled");
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// What the server sends after the handshake: session tickets (TLS 1.3),
    /// two records, a key update that asks for ours, a third record, close.
    fn server_sends_tail(pair: &mut Pair) -> Vec<u8> {
        let mut expected = pattern(700, 1);
        pair.server.writer().write_all(&expected).expect("write");
        pair.server
            .writer()
            .write_all(&pattern(300, 2))
            .expect("write");
        expected.extend(pattern(300, 2));
        if pair.server.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            pair.server.refresh_traffic_keys().expect("key update");
        }
        pair.server
            .writer()
            .write_all(&pattern(200, 3))
            .expect("write");
        expected.extend(pattern(200, 3));
        pair.server.send_close_notify();
        pair.server_output();
        expected
    }

    fn check_request_after(pair: &mut Pair) {
        // The client still encrypts under its (possibly updated) keys.
        pair.client
            .encrypt(b"GET / HTTP/1.1\r\n\r\n")
            .expect("encrypt");
        pair.client_to_server();
        let mut request = Vec::new();
        let _ = pair.server.reader().read_to_end(&mut request);
        assert_eq!(request, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn records_split_at_every_byte_boundary() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let configs = configs(versions);
            let tail_len = {
                let mut pair = Pair::new(&configs);
                pair.handshake(usize::MAX);
                server_sends_tail(&mut pair);
                pair.to_client.len()
            };
            for split in 0..=tail_len {
                let mut pair = Pair::new(&configs);
                pair.handshake(usize::MAX);
                let expected = server_sends_tail(&mut pair);
                assert_eq!(pair.to_client.len(), tail_len);
                pair.deliver(split);
                let first = pair.drain(512);
                if first == Next::PeerClosed {
                    assert_eq!(split, tail_len);
                }
                while pair.deliver(usize::MAX) > 0 {
                    pair.drain(512);
                }
                assert_eq!(pair.drain(512), Next::PeerClosed, "split at {split}");
                assert_eq!(pair.received, expected, "split at {split}");
                assert!(!pair.client.has_unprocessed_ciphertext());
                check_request_after(&mut pair);
            }
        }
    }

    /// What `TlsStream::recv_into_pool` does with a receive of `piece`
    /// bytes into a buffer of `region_bytes`: in place when it can, else
    /// through `process`.
    fn receive_in_place(pair: &mut Pair, piece: usize, region_bytes: usize) -> Next {
        let n = piece.min(pair.to_client.len());
        if pair.client.can_open_in_place() {
            let mut region = pair.client.partial_record().to_vec();
            region.extend_from_slice(&pair.to_client[..n]);
            pair.to_client.drain(..n);
            let (got, next) = pair
                .client
                .open_in_place(&mut region, region_bytes)
                .expect("open in place");
            pair.received.extend_from_slice(&region[..got]);
            if pair.client.has_outgoing() {
                pair.client_to_server();
            }
            return next;
        }
        pair.deliver(n);
        pair.drain(region_bytes)
    }

    #[test]
    fn tls13_records_are_decrypted_in_place_wherever_receives_cut_them() {
        let configs = configs(&[&rustls::version::TLS13]);
        for piece in [1, 7, 100, 4096, 16_384, 16_406, 16_407, 50_000, 1 << 20] {
            let mut pair = Pair::new(&configs);
            pair.handshake(usize::MAX);
            assert!(pair.client.records.is_some(), "TLS 1.3: our record layer");
            // A body, then the tail: a key update that asks for ours, close_notify.
            let body = pattern(200_000, 11);
            pair.server_write(&body);
            let mut expected = body;
            expected.extend(server_sends_tail(&mut pair));
            let mut next = Next::Receive;
            while !pair.to_client.is_empty() {
                next = receive_in_place(&mut pair, piece, 64 * 1024);
            }
            while next != Next::PeerClosed {
                next = pair.drain(64 * 1024);
            }
            assert!(pair.received == expected, "pieces of {piece} bytes");
            assert_eq!(
                pair.client.records.as_ref().unwrap().tickets_received,
                2,
                "rustls's two session tickets reached rustls"
            );
            check_request_after(&mut pair);
        }
    }

    #[test]
    fn every_tls13_suite_and_aead_code_decrypts_in_place() {
        use rustls::CipherSuite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        use rustls::crypto::CryptoProvider;
        for suite in [
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            for code in [AesGcmCode::AwsLc, AesGcmCode::Ring] {
                let mut configs = configs_with(&[&rustls::version::TLS13], code, code);
                let server = Arc::get_mut(&mut configs.server).expect("unshared");
                let mut provider = CryptoProvider::clone(server.crypto_provider());
                provider.cipher_suites.retain(|s| s.suite() == suite);
                let mut only = ServerConfig::builder_with_provider(Arc::new(provider))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("versions")
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::clone(&server.cert_resolver));
                only.send_tls13_tickets = 0;
                configs.server = Arc::new(only);
                let mut pair = Pair::new(&configs);
                pair.handshake(usize::MAX);
                assert_eq!(
                    pair.server.negotiated_cipher_suite().map(|s| s.suite()),
                    Some(suite)
                );
                let body = pattern(70_000, 13);
                pair.server_write(&body);
                while !pair.to_client.is_empty() {
                    receive_in_place(&mut pair, 30_000, 1 << 20);
                }
                assert!(pair.received == body, "{suite:?} with {code:?}");
                check_request_after(&mut pair);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever a peer does to the bytes after the handshake (any byte
        /// changed, any cut), the record layer errors or delivers a prefix of
        /// what was sent: never a panic, never a byte that was not sent.
        #[test]
        fn tampered_records_error_or_deliver_a_prefix(
            flips in proptest::collection::vec((0usize..100_000, 1u8..=255), 0..4),
            cut in 0usize..100_000,
            piece in 1usize..40_000,
        ) {
            let configs = configs(&[&rustls::version::TLS13]);
            let mut pair = Pair::new(&configs);
            pair.handshake(usize::MAX);
            let body = pattern(40_000, 17);
            pair.server_write(&body);
            let len = pair.to_client.len();
            for (at, mask) in &flips {
                pair.to_client[at % len] ^= mask;
            }
            pair.to_client.truncate(cut % (len + 1));
            let mut failed = false;
            while !pair.to_client.is_empty() && !failed {
                let n = piece.min(pair.to_client.len());
                if pair.client.can_open_in_place() {
                    let mut region = pair.client.partial_record().to_vec();
                    region.extend_from_slice(&pair.to_client[..n]);
                    pair.to_client.drain(..n);
                    match pair.client.open_in_place(&mut region, usize::MAX) {
                        Ok((got, _)) => pair.received.extend_from_slice(&region[..got]),
                        Err(_) => failed = true,
                    }
                } else {
                    pair.deliver(n);
                    let mut destination = vec![0; 8192];
                    match pair.client.process(&mut destination) {
                        Ok((got, _)) => pair.received.extend_from_slice(&destination[..got]),
                        Err(_) => failed = true,
                    }
                }
            }
            proptest::prop_assert!(body.starts_with(&pair.received));
            if flips.is_empty() && cut % (len + 1) == len {
                proptest::prop_assert!(!failed);
            }
        }
    }

    /// A TLS 1.3 client past its handshake (the server's tickets delivered),
    /// and a forger holding the server's write keys.
    fn client_and_forger() -> (Session, crate::tls::record::Forger) {
        let configs = configs(&[&rustls::version::TLS13]);
        let mut pair = Pair::new(&configs);
        pair.handshake(usize::MAX);
        pair.server_output();
        pair.deliver(usize::MAX);
        assert_eq!(pair.drain(512), Next::Receive);
        assert!(pair.to_client.is_empty());
        let secrets = pair
            .server
            .dangerous_extract_secrets()
            .expect("server secrets");
        let forger = crate::tls::record::Forger::new(configs.client_code, secrets.tx);
        (pair.client, forger)
    }

    /// Delivers forged records of these inner plaintexts, each cut in two at
    /// `cut`, and processes them: the application data, or the first error.
    fn open_forged(inners: &[&[u8]], cut: usize) -> Result<Vec<u8>, rustls::Error> {
        let (mut client, mut forger) = client_and_forger();
        let mut wire = Vec::new();
        for inner in inners {
            forger.seal(inner, &mut wire);
        }
        let cut = cut.min(wire.len());
        let mut received = Vec::new();
        for piece in [&wire[..cut], &wire[cut..]] {
            let mut incoming = client.take_incoming()?;
            incoming.extend_from_slice(piece);
            client.put_incoming(incoming);
            loop {
                let mut destination = vec![0; 700];
                let (n, next) = client.process(&mut destination)?;
                received.extend_from_slice(&destination[..n]);
                if next != Next::DestinationFull {
                    break;
                }
            }
        }
        Ok(received)
    }

    #[test]
    fn forged_records_are_read_as_rfc_8446_says() {
        let data = |content: &[u8], padding: usize| {
            let mut inner = content.to_vec();
            inner.push(23);
            inner.resize(inner.len() + padding, 0);
            inner
        };
        // Padding is stripped; a record of padding only carries nothing.
        let padded = [data(b"hello ", 300), data(b"", 50), data(b"world", 0)];
        let padded: Vec<&[u8]> = padded.iter().map(Vec::as_slice).collect();
        for cut in [0, 3, 5, 6, 100, 400, usize::MAX] {
            assert_eq!(open_forged(&padded, cut).expect("padded"), b"hello world");
        }
        // A KeyUpdate split over two records is one message (not requested).
        let key_update = open_forged(&[&[24, 0, 22], &[0, 1, 0, 22]], usize::MAX);
        assert_eq!(key_update.expect("split key update"), b"");
        let cases: [(&[&[u8]], rustls::Error); 8] = [
            (
                &[&[0, 0, 0]],
                rustls::PeerMisbehaved::IllegalTlsInnerPlaintext.into(),
            ),
            (
                &[b"x\x63"],
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            ),
            (
                &[&[1, 0, 0, 21]],
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            ),
            (
                &[&[2, 40, 21]],
                rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
            ),
            (
                &[&[24, 0, 0, 1, 2, 22]],
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidKeyUpdate),
            ),
            (
                &[&[24, 0, 0, 1, 0, 4, 22]],
                rustls::PeerMisbehaved::KeyEpochWithPendingFragment.into(),
            ),
            (
                &[&[4, 1, 0, 0, 22]],
                rustls::Error::InvalidMessage(rustls::InvalidMessage::HandshakePayloadTooLarge),
            ),
            (
                &[&[1, 0, 0, 0, 22]],
                rustls::Error::InappropriateHandshakeMessage {
                    expect_types: vec![
                        rustls::HandshakeType::NewSessionTicket,
                        rustls::HandshakeType::KeyUpdate,
                    ],
                    got_type: rustls::HandshakeType::ClientHello,
                },
            ),
        ];
        for (inners, expected) in cases {
            for cut in [0, 7, usize::MAX] {
                assert_eq!(
                    open_forged(inners, cut),
                    Err(expected.clone()),
                    "{inners:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Authentic records with any inner plaintext (mostly application
        /// data, some alerts, handshake messages and other types, each with
        /// zero padding), cut anywhere: an error, or exactly the application
        /// data they carry; never a panic.
        #[test]
        fn forged_inner_plaintexts_never_panic(
            records in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
                    proptest::prop_oneof![
                        4 => proptest::strategy::Just(23u8),
                        1 => proptest::strategy::Just(21u8),
                        1 => proptest::strategy::Just(22u8),
                        1 => proptest::prelude::any::<u8>(),
                    ],
                    0usize..24,
                ),
                1..6,
            ),
            cut in 0usize..600,
        ) {
            let inners: Vec<Vec<u8>> = records
                .iter()
                .map(|(content, content_type, padding)| {
                    let mut inner = content.clone();
                    inner.push(*content_type);
                    inner.resize(inner.len() + padding, 0);
                    inner
                })
                .collect();
            let slices: Vec<&[u8]> = inners.iter().map(Vec::as_slice).collect();
            if let Ok(received) = open_forged(&slices, cut) {
                let mut expected = Vec::new();
                for inner in &inners {
                    let Some(type_at) = inner.iter().rposition(|&byte| byte != 0) else {
                        break;
                    };
                    match (inner[type_at], type_at) {
                        (23, _) => expected.extend_from_slice(&inner[..type_at]),
                        // close_notify: nothing after it is read.
                        (21, 2) if inner[1] == 0 => break,
                        _ => {}
                    }
                }
                proptest::prop_assert_eq!(received, expected);
            }
        }
    }

    #[test]
    fn a_flipped_ciphertext_byte_is_a_decrypt_error() {
        let configs = configs(&[&rustls::version::TLS13]);
        let mut pair = Pair::new(&configs);
        pair.handshake(usize::MAX);
        pair.server_write(&pattern(1000, 3));
        let last = pair.to_client.len() - 20;
        pair.to_client[last] ^= 1;
        let mut region = pair.to_client.clone();
        let error = pair
            .client
            .open_in_place(&mut region, 1 << 20)
            .expect_err("tampered record");
        assert_eq!(error, rustls::Error::DecryptError);
    }

    #[test]
    fn handshake_and_body_one_byte_at_a_time() {
        let configs = configs(&[&rustls::version::TLS13]);
        let mut pair = Pair::new(&configs);
        pair.handshake(1);
        let body = pattern(100_000, 7);
        pair.server_write(&body);
        pair.server.send_close_notify();
        pair.server_output();
        // Destinations of 1000 bytes: records (16 KiB) straddle them.
        while pair.deliver(1) > 0 {
            pair.drain(1000);
        }
        assert_eq!(pair.drain(1000), Next::PeerClosed);
        assert_eq!(pair.received.len(), body.len());
        assert!(pair.received == body);
    }

    #[test]
    fn large_reads_fill_whole_destinations() {
        let configs = configs(&[&rustls::version::TLS13]);
        let mut pair = Pair::new(&configs);
        pair.handshake(usize::MAX);
        let body = pattern(300_000, 9);
        pair.server_write(&body);
        pair.server_output();
        while pair.deliver(usize::MAX) > 0 {
            assert_eq!(pair.drain(1 << 20), Next::Receive);
        }
        assert!(pair.received == body);
        // End of stream without close_notify: not a clean close.
        assert!(!pair.client.is_peer_closed());
    }

    #[test]
    fn ring_and_aws_lc_record_ciphers_interoperate() {
        let codes = [AesGcmCode::AwsLc, AesGcmCode::Ring];
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            for client_code in codes {
                for server_code in codes {
                    let configs = configs_with(versions, client_code, server_code);
                    let mut pair = Pair::new(&configs);
                    pair.handshake(usize::MAX);
                    let body = pattern(100_000, 5);
                    pair.server_write(&body);
                    pair.server_output();
                    while pair.deliver(usize::MAX) > 0 {
                        pair.drain(1 << 20);
                    }
                    assert!(pair.received == body, "{client_code:?} ↔ {server_code:?}");
                    check_request_after(&mut pair);
                }
            }
        }
    }

    #[test]
    fn unknown_issuer_is_a_certificate_error() {
        let configs = configs(&[&rustls::version::TLS13]);
        let untrusting = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let configs = Configs {
            client: Arc::new(untrusting),
            server: configs.server,
            client_code: configs.client_code,
        };
        let mut pair = Pair::new(&configs);
        let error = loop {
            match pair.client.process(&mut []) {
                Ok(_) => {
                    if pair.client.has_outgoing() {
                        pair.client_to_server();
                    }
                    assert!(pair.deliver(usize::MAX) > 0, "handshake stalled");
                }
                Err(error) => break error,
            }
        };
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(_)),
            "{error:?}"
        );
    }
}
