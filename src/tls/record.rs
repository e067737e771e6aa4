//! TLS 1.3 records after the handshake, protected here rather than by
//! rustls, so a response body is decrypted straight into the buffer it is
//! written to disk from.
//!
//! rustls 0.23's unbuffered API decrypts a record in place, then copies its
//! plaintext into a `Vec` of its own (one allocation per record), which we
//! copied again into the destination: two passes over every byte besides
//! the decryption, ~0.19 s of CPU per GiB here. rustls keeps what it is
//! good at, the handshake, key schedule and session tickets, through its
//! kernel-TLS interface (`KernelConnection`); this module does the rest of
//! RFC 8446 §5: record framing, nonces, AEAD, the inner content type,
//! padding, alerts and post-handshake messages (NewSessionTicket, KeyUpdate).
//!
//! I/O-free: `open` works on any byte slice, `seal` appends to a `Vec`.
//! TLS 1.2 connections stay on rustls's own record layer (see `Session`).

use std::ops::RangeFrom;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::{AlertDescription, ConnectionTrafficSecrets, Error, PeerMisbehaved};

use super::AesGcmCode;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
pub(super) const HEADER_BYTES: usize = 5;
const TAG_BYTES: usize = 16;
/// RFC 8446 §5.1: plaintext of at most 2^14 bytes per record.
const PLAINTEXT_MAX_BYTES: usize = 1 << 14;
/// §5.2: a TLSCiphertext fragment is at most 2^14 + 256 bytes.
const CIPHERTEXT_MAX_BYTES: usize = PLAINTEXT_MAX_BYTES + 256;
/// Post-handshake messages (session tickets) buffered before they complete.
const POST_HANDSHAKE_MESSAGE_MAX_BYTES: usize = 64 * 1024;

/// One direction's AEAD key, IV and sequence number.
struct Protection {
    key: Aead,
    iv: [u8; 12],
    seq: u64,
}

enum Aead {
    /// Boxed: ring's key schedule is inline (~0.5 KiB), aws-lc's behind a pointer.
    Ring(Box<ring::aead::LessSafeKey>),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl Protection {
    fn new(
        code: AesGcmCode,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> Result<Self, Error> {
        let (key, iv, ring_algorithm, aws_lc_algorithm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (
                key.as_ref(),
                iv.as_ref(),
                &ring::aead::AES_128_GCM,
                &aws_lc_rs::aead::AES_128_GCM,
            ),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (
                key.as_ref(),
                iv.as_ref(),
                &ring::aead::AES_256_GCM,
                &aws_lc_rs::aead::AES_256_GCM,
            ),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (
                key.as_ref(),
                iv.as_ref(),
                &ring::aead::CHACHA20_POLY1305,
                &aws_lc_rs::aead::CHACHA20_POLY1305,
            ),
            _ => return Err(Error::General("unsupported TLS 1.3 cipher suite".into())),
        };
        // ring and aws-lc each have their own error type: one message for both.
        let bad_key = || Error::General("TLS traffic key rejected by the AEAD".into());
        let key = match code {
            AesGcmCode::Ring => Aead::Ring(Box::new(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(ring_algorithm, key).map_err(|_| bad_key())?,
            ))),
            AesGcmCode::AwsLc => Aead::AwsLc(aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(aws_lc_algorithm, key).map_err(|_| bad_key())?,
            )),
        };
        let iv = iv
            .try_into()
            .map_err(|_| Error::General("TLS 1.3 IV is not 12 bytes".into()))?;
        Ok(Protection { key, iv, seq })
    }

    /// §5.3: the IV XOR the 64-bit sequence number, left-padded.
    fn next_nonce(&mut self) -> Result<[u8; 12], Error> {
        let mut nonce = self.iv;
        for (byte, seq_byte) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq_byte;
        }
        self.seq = self.seq.checked_add(1).ok_or(Error::EncryptError)?;
        Ok(nonce)
    }

    /// Decrypts `in_out[ciphertext_and_tag]` into `in_out[..plaintext_len]`
    /// (the AEAD moves the bytes as it decrypts; ring's AES-GCM does it in the
    /// same pass). Returns the plaintext length.
    fn open_within(
        &mut self,
        header: [u8; HEADER_BYTES],
        in_out: &mut [u8],
        ciphertext_and_tag: RangeFrom<usize>,
    ) -> Result<usize, Error> {
        let nonce = self.next_nonce()?;
        let opened = match &self.key {
            Aead::Ring(key) => key
                .open_within(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(header),
                    in_out,
                    ciphertext_and_tag,
                )
                .map(|plaintext| plaintext.len())
                .ok(),
            Aead::AwsLc(key) => key
                .open_within(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(header),
                    in_out,
                    ciphertext_and_tag,
                )
                .map(|plaintext| plaintext.len())
                .ok(),
        };
        opened.ok_or(Error::DecryptError)
    }

    /// Encrypts `record[HEADER_BYTES..]` in place and appends the tag.
    fn seal_in_place(&mut self, record: &mut Vec<u8>, start: usize) -> Result<(), Error> {
        let nonce = self.next_nonce()?;
        let header: [u8; HEADER_BYTES] = record[start..start + HEADER_BYTES]
            .try_into()
            .expect("header length");
        let body = &mut record[start + HEADER_BYTES..];
        let tag: [u8; TAG_BYTES] = match &self.key {
            Aead::Ring(key) => key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(header),
                    body,
                )
                .map(|tag| tag.as_ref().try_into().expect("16-byte tag"))
                .map_err(|_| Error::EncryptError)?,
            Aead::AwsLc(key) => key
                .seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(header),
                    body,
                )
                .map(|tag| tag.as_ref().try_into().expect("16-byte tag"))
                .map_err(|_| Error::EncryptError)?,
        };
        record.extend_from_slice(&tag);
        Ok(())
    }
}

/// Seals records of any inner plaintext under a peer's keys, so tests can
/// send what a well-behaved rustls server never would.
#[cfg(test)]
pub(super) struct Forger(Protection);

#[cfg(test)]
impl Forger {
    pub(super) fn new(code: AesGcmCode, tx: (u64, ConnectionTrafficSecrets)) -> Forger {
        Forger(Protection::new(code, tx).expect("forger keys"))
    }

    /// Appends one record whose TLSInnerPlaintext (content, content type,
    /// padding) is `inner`, byte for byte.
    pub(super) fn seal(&mut self, inner: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let fragment_len = u16::try_from(inner.len() + TAG_BYTES).expect("record size");
        out.push(CONTENT_APPLICATION_DATA);
        out.extend_from_slice(&[3, 3]);
        out.extend_from_slice(&fragment_len.to_be_bytes());
        out.extend_from_slice(inner);
        self.0.seal_in_place(out, start).expect("seal");
    }
}

/// Where `Records::open` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Opened {
    /// Application data is in `buf[out_start..out_end]`.
    pub out_end: usize,
    /// The first byte not consumed: an incomplete record starts here.
    pub in_next: usize,
}

/// The record layer of an established TLS 1.3 client connection.
pub(super) struct Records {
    kernel: KernelConnection<ClientConnectionData>,
    code: AesGcmCode,
    rx: Protection,
    tx: Protection,
    /// Post-handshake message bytes whose message is not complete yet.
    handshake: Vec<u8>,
    peer_closed: bool,
    #[cfg(test)]
    pub tickets_received: usize,
}

impl Records {
    /// Takes over from rustls once its handshake is done (TLS 1.3 only).
    pub fn new(conn: UnbufferedClientConnection, code: AesGcmCode) -> Result<Records, Error> {
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        Ok(Records {
            kernel,
            code,
            rx: Protection::new(code, secrets.rx)?,
            tx: Protection::new(code, secrets.tx)?,
            handshake: Vec::new(),
            peer_closed: false,
            #[cfg(test)]
            tickets_received: 0,
        })
    }

    /// The peer sent close_notify; nothing after it is read.
    pub fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The total length of the record starting at `bytes` once its header is
    /// in, so a caller can tell a complete record from a partial one.
    pub fn record_len(bytes: &[u8]) -> Option<usize> {
        let header = bytes.get(..HEADER_BYTES)?;
        Some(HEADER_BYTES + usize::from(u16::from_be_bytes([header[3], header[4]])))
    }

    /// Decrypts the complete records of `buf[in_start..]` and packs the
    /// application data, in order, into `buf[out_start..]` (`out_start <=
    /// in_start`: plaintext is shorter than its record, so it never overtakes
    /// the ciphertext still to be read). Alerts and post-handshake messages
    /// are handled here; a KeyUpdate that asks for ours appends it to
    /// `outgoing`. Stops at an incomplete record, after close_notify, or once
    /// `out_limit` bytes of application data are out.
    pub fn open(
        &mut self,
        buf: &mut [u8],
        out_start: usize,
        in_start: usize,
        out_limit: usize,
        outgoing: &mut Vec<u8>,
    ) -> Result<Opened, Error> {
        debug_assert!(out_start <= in_start && in_start <= buf.len());
        let in_end = buf.len();
        let mut out = out_start;
        let mut at = in_start;
        while !self.peer_closed && out - out_start < out_limit {
            let Some(record_len) = Records::record_len(&buf[at..in_end]) else {
                break;
            };
            let header: [u8; HEADER_BYTES] = buf[at..at + HEADER_BYTES]
                .try_into()
                .expect("header length");
            if header[0] != CONTENT_APPLICATION_DATA {
                return Err(Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                ));
            }
            if header[1..3] != [3, 3] {
                return Err(Error::InvalidMessage(
                    rustls::InvalidMessage::UnknownProtocolVersion,
                ));
            }
            if record_len - HEADER_BYTES > CIPHERTEXT_MAX_BYTES {
                return Err(Error::InvalidMessage(
                    rustls::InvalidMessage::MessageTooLarge,
                ));
            }
            if in_end - at < record_len {
                break;
            }
            let ciphertext_start = at + HEADER_BYTES;
            let inner_len = self.rx.open_within(
                header,
                &mut buf[out..at + record_len],
                ciphertext_start - out..,
            )?;
            at += record_len;
            // §5.4: content, then the real content type, then zero padding.
            let inner = &buf[out..out + inner_len];
            let Some(type_at) = inner.iter().rposition(|&byte| byte != 0) else {
                return Err(PeerMisbehaved::IllegalTlsInnerPlaintext.into());
            };
            if type_at > PLAINTEXT_MAX_BYTES {
                return Err(Error::PeerSentOversizedRecord);
            }
            match inner[type_at] {
                CONTENT_APPLICATION_DATA => out += type_at,
                CONTENT_HANDSHAKE if type_at > 0 => {
                    let message = buf[out..out + type_at].to_vec();
                    self.post_handshake(&message, outgoing)?;
                }
                CONTENT_ALERT if type_at == 2 => {
                    let description = AlertDescription::from(inner[1]);
                    if description != AlertDescription::CloseNotify {
                        return Err(Error::AlertReceived(description));
                    }
                    self.peer_closed = true;
                }
                _ => {
                    return Err(Error::InvalidMessage(
                        rustls::InvalidMessage::InvalidContentType,
                    ));
                }
            }
        }
        Ok(Opened {
            out_end: out,
            in_next: at,
        })
    }

    /// Encrypts `plaintext` as application data records appended to `outgoing`.
    pub fn seal(&mut self, plaintext: &[u8], outgoing: &mut Vec<u8>) -> Result<(), Error> {
        for piece in plaintext.chunks(PLAINTEXT_MAX_BYTES) {
            self.seal_record(CONTENT_APPLICATION_DATA, piece, outgoing)?;
        }
        Ok(())
    }

    fn seal_record(
        &mut self,
        content_type: u8,
        plaintext: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let start = outgoing.len();
        let fragment_len =
            u16::try_from(plaintext.len() + 1 + TAG_BYTES).map_err(|_| Error::EncryptError)?;
        outgoing.push(CONTENT_APPLICATION_DATA);
        outgoing.extend_from_slice(&[3, 3]);
        outgoing.extend_from_slice(&fragment_len.to_be_bytes());
        outgoing.extend_from_slice(plaintext);
        outgoing.push(content_type);
        let sealed = self.tx.seal_in_place(outgoing, start);
        if sealed.is_err() {
            outgoing.truncate(start);
        }
        sealed
    }

    /// §4.6: post-handshake messages, possibly split across records.
    fn post_handshake(&mut self, bytes: &[u8], outgoing: &mut Vec<u8>) -> Result<(), Error> {
        self.handshake.extend_from_slice(bytes);
        loop {
            let Some(&[message_type, a, b, c]) = self.handshake.get(..4) else {
                return Ok(());
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if 4 + len > POST_HANDSHAKE_MESSAGE_MAX_BYTES {
                return Err(Error::InvalidMessage(
                    rustls::InvalidMessage::HandshakePayloadTooLarge,
                ));
            }
            if self.handshake.len() < 4 + len {
                return Ok(());
            }
            let message: Vec<u8> = self.handshake.drain(..4 + len).collect();
            let body = &message[4..];
            match message_type {
                HANDSHAKE_NEW_SESSION_TICKET => {
                    self.kernel.handle_new_session_ticket(body)?;
                    #[cfg(test)]
                    {
                        self.tickets_received += 1;
                    }
                }
                HANDSHAKE_KEY_UPDATE => {
                    // §4.6.3: a KeyUpdate ends its record, and then the
                    // peer's next record is under the next key.
                    if !self.handshake.is_empty() {
                        return Err(PeerMisbehaved::KeyEpochWithPendingFragment.into());
                    }
                    let update_requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => {
                            return Err(Error::InvalidMessage(
                                rustls::InvalidMessage::InvalidKeyUpdate,
                            ));
                        }
                    };
                    self.rx = Protection::new(self.code, self.kernel.update_rx_secret()?)?;
                    if update_requested {
                        // Ours goes out under the current key, then we switch.
                        self.seal_record(
                            CONTENT_HANDSHAKE,
                            &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0],
                            outgoing,
                        )?;
                        self.tx = Protection::new(self.code, self.kernel.update_tx_secret()?)?;
                    }
                }
                _ => {
                    return Err(Error::InappropriateHandshakeMessage {
                        expect_types: vec![
                            rustls::HandshakeType::NewSessionTicket,
                            rustls::HandshakeType::KeyUpdate,
                        ],
                        got_type: rustls::HandshakeType::from(message_type),
                    });
                }
            }
        }
    }
}
