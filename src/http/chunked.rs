//! `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1) as an I/O-free state
//! machine. The caller owns the bytes: the decoder says which of them are
//! payload, so payload can be copied straight into a registered buffer without
//! an intermediate copy of the whole body.

use super::HttpError;
use crate::config::{HTTP_CHUNK_SIZE_LINE_MAX_BYTES, HTTP_CHUNKED_TRAILER_MAX_BYTES};

/// What [`ChunkedDecoder::decode`] found at the start of `input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedStep {
    /// Framing only: `consumed` bytes (always all of `input`) were eaten; call
    /// again with more bytes.
    NeedMore { consumed: usize },
    /// Payload bytes are `input[start..start + len]` (`len > 0`). The caller
    /// consumes `start + len` bytes and calls again with the rest.
    Data { start: usize, len: usize },
    /// The body ended after `consumed` bytes (last chunk and trailers included);
    /// `input[consumed..]` belongs to the next response.
    Done { consumed: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    SizeDigits {
        size_bytes: u64,
        digits: usize,
        line_len: usize,
    },
    /// After the digits: optional whitespace, then `;extensions` (ignored).
    SizeTail {
        size_bytes: u64,
        line_len: usize,
        in_extension: bool,
    },
    /// CR of the size line seen; LF must follow.
    SizeLf {
        size_bytes: u64,
    },
    Data {
        remaining_bytes: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailer {
        line_len: usize,
        total_len: usize,
    },
    TrailerLf {
        line_was_empty: bool,
        total_len: usize,
    },
    Done,
}

/// Decoder of one chunked body. Create one per response.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    payload_bytes: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeDigits {
                size_bytes: 0,
                digits: 0,
                line_len: 0,
            },
            payload_bytes: 0,
        }
    }

    /// Payload bytes handed out so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `input`; see [`ChunkedStep`].
    pub fn decode(&mut self, input: &[u8]) -> Result<ChunkedStep, HttpError> {
        let mut position = 0;
        loop {
            match self.state {
                State::Done => return Ok(ChunkedStep::Done { consumed: position }),
                State::Data { remaining_bytes } => {
                    let available = input.len() - position;
                    if available == 0 {
                        return Ok(ChunkedStep::NeedMore { consumed: position });
                    }
                    let len =
                        usize::try_from(remaining_bytes).map_or(available, |r| r.min(available));
                    let left = remaining_bytes - len as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data {
                            remaining_bytes: left,
                        }
                    };
                    self.payload_bytes += len as u64;
                    return Ok(ChunkedStep::Data {
                        start: position,
                        len,
                    });
                }
                _ => {}
            }
            let Some(&byte) = input.get(position) else {
                return Ok(ChunkedStep::NeedMore { consumed: position });
            };
            position += 1;
            self.state = self.step(byte)?;
        }
    }

    /// One framing byte.
    fn step(&self, byte: u8) -> Result<State, HttpError> {
        let line_too_long = HttpError::ChunkSizeLineTooLong {
            limit_bytes: HTTP_CHUNK_SIZE_LINE_MAX_BYTES,
        };
        Ok(match self.state {
            State::SizeDigits {
                size_bytes,
                digits,
                line_len,
            } => {
                let line_len = line_len + 1;
                if line_len > HTTP_CHUNK_SIZE_LINE_MAX_BYTES {
                    return Err(line_too_long);
                }
                if let Some(value) = (byte as char).to_digit(16) {
                    let size_bytes = size_bytes
                        .checked_mul(16)
                        .and_then(|size| size.checked_add(u64::from(value)))
                        .ok_or(HttpError::ChunkSizeOverflow)?;
                    State::SizeDigits {
                        size_bytes,
                        digits: digits + 1,
                        line_len,
                    }
                } else if digits == 0 {
                    return Err(HttpError::InvalidChunkSize("no hex digits"));
                } else {
                    match byte {
                        b'\r' => State::SizeLf { size_bytes },
                        b';' => State::SizeTail {
                            size_bytes,
                            line_len,
                            in_extension: true,
                        },
                        b' ' | b'\t' => State::SizeTail {
                            size_bytes,
                            line_len,
                            in_extension: false,
                        },
                        b'\n' => return Err(HttpError::BadLineEnding),
                        _ => {
                            return Err(HttpError::InvalidChunkSize(
                                "unexpected byte after the size",
                            ));
                        }
                    }
                }
            }
            State::SizeTail {
                size_bytes,
                line_len,
                in_extension,
            } => {
                let line_len = line_len + 1;
                if line_len > HTTP_CHUNK_SIZE_LINE_MAX_BYTES {
                    return Err(line_too_long);
                }
                match byte {
                    b'\r' => State::SizeLf { size_bytes },
                    b'\n' => return Err(HttpError::BadLineEnding),
                    b';' => State::SizeTail {
                        size_bytes,
                        line_len,
                        in_extension: true,
                    },
                    b' ' | b'\t' => State::SizeTail {
                        size_bytes,
                        line_len,
                        in_extension,
                    },
                    _ if in_extension => State::SizeTail {
                        size_bytes,
                        line_len,
                        in_extension,
                    },
                    _ => {
                        return Err(HttpError::InvalidChunkSize(
                            "unexpected byte after the size",
                        ));
                    }
                }
            }
            State::SizeLf { size_bytes } => match byte {
                b'\n' if size_bytes == 0 => State::Trailer {
                    line_len: 0,
                    total_len: 0,
                },
                b'\n' => State::Data {
                    remaining_bytes: size_bytes,
                },
                _ => return Err(HttpError::BadLineEnding),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(HttpError::MissingChunkDataCrlf),
            },
            State::DataLf => match byte {
                b'\n' => State::SizeDigits {
                    size_bytes: 0,
                    digits: 0,
                    line_len: 0,
                },
                _ => return Err(HttpError::MissingChunkDataCrlf),
            },
            State::Trailer {
                line_len,
                total_len,
            } => {
                let total_len = total_len + 1;
                if total_len > HTTP_CHUNKED_TRAILER_MAX_BYTES {
                    return Err(HttpError::TrailerTooLarge {
                        limit_bytes: HTTP_CHUNKED_TRAILER_MAX_BYTES,
                    });
                }
                match byte {
                    b'\r' => State::TrailerLf {
                        line_was_empty: line_len == 0,
                        total_len,
                    },
                    b'\n' => return Err(HttpError::BadLineEnding),
                    _ => State::Trailer {
                        line_len: line_len + 1,
                        total_len,
                    },
                }
            }
            State::TrailerLf {
                line_was_empty,
                total_len,
            } => match byte {
                b'\n' if line_was_empty => State::Done,
                b'\n' => State::Trailer {
                    line_len: 0,
                    total_len,
                },
                _ => return Err(HttpError::BadLineEnding),
            },
            State::Data { .. } | State::Done => unreachable!("handled by decode"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` in order the way a connection would: unconsumed bytes are
    /// kept and prefixed to the next piece. Returns (payload, leftover after Done).
    fn drive(pieces: &[&[u8]]) -> Result<(Vec<u8>, Option<Vec<u8>>), HttpError> {
        let mut decoder = ChunkedDecoder::new();
        let mut payload = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                match decoder.decode(&pending)? {
                    ChunkedStep::NeedMore { consumed } => {
                        assert_eq!(consumed, pending.len());
                        pending.clear();
                        break;
                    }
                    ChunkedStep::Data { start, len } => {
                        assert!(len > 0);
                        payload.extend_from_slice(&pending[start..start + len]);
                        pending.drain(..start + len);
                    }
                    ChunkedStep::Done { consumed } => {
                        pending.drain(..consumed);
                        assert!(decoder.is_done());
                        assert_eq!(decoder.payload_bytes(), payload.len() as u64);
                        // Later pieces belong to the next response.
                        let rest: Vec<u8> = pieces
                            .iter()
                            .skip_while(|p| !std::ptr::eq(*p, piece))
                            .skip(1)
                            .flat_map(|p| p.iter().copied())
                            .collect();
                        pending.extend_from_slice(&rest);
                        return Ok((payload, Some(pending)));
                    }
                }
            }
        }
        Ok((payload, None))
    }

    const BODY: &[u8] = b"5\r\nhello\r\n1;name=value\r\n \r\nA \r\n0123456789\r\n10\r\nabcdefghijklmnop\r\n0\r\nx-trailer: 1\r\nx-other: 2\r\n\r\nHTTP/1.1 200 OK";
    const PAYLOAD: &[u8] = b"hello 0123456789abcdefghijklmnop";

    #[test]
    fn whole_body() {
        let (payload, leftover) = drive(&[BODY]).unwrap();
        assert_eq!(payload, PAYLOAD);
        assert_eq!(leftover.as_deref(), Some(&b"HTTP/1.1 200 OK"[..]));
    }

    #[test]
    fn every_split_and_byte_by_byte() {
        for split in 0..=BODY.len() {
            let (payload, leftover) = drive(&[&BODY[..split], &BODY[split..]]).unwrap();
            assert_eq!(payload, PAYLOAD, "split at {split}");
            assert_eq!(
                leftover.as_deref(),
                Some(&b"HTTP/1.1 200 OK"[..]),
                "split at {split}"
            );
        }
        let singles: Vec<&[u8]> = BODY.chunks(1).collect();
        let (payload, leftover) = drive(&singles).unwrap();
        assert_eq!(payload, PAYLOAD);
        assert_eq!(leftover.as_deref(), Some(&b"HTTP/1.1 200 OK"[..]));
    }

    #[test]
    fn empty_body_and_incomplete_body() {
        assert_eq!(
            drive(&[b"0\r\n\r\n"]).unwrap(),
            (Vec::new(), Some(Vec::new()))
        );
        let (payload, leftover) = drive(&[b"5\r\nhel"]).unwrap();
        assert_eq!(payload, b"hel");
        assert_eq!(leftover, None);
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode(b"").unwrap(),
            ChunkedStep::NeedMore { consumed: 0 }
        );
    }

    #[test]
    fn huge_chunk_sizes() {
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode(b"ffffffffffffffff\r\nab").unwrap(),
            ChunkedStep::Data { start: 18, len: 2 }
        );
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode(b"00000000000000000001\r\nab").unwrap(),
            ChunkedStep::Data { start: 22, len: 1 }
        );
        assert_eq!(
            ChunkedDecoder::new().decode(b"10000000000000000\r\n"),
            Err(HttpError::ChunkSizeOverflow)
        );
    }

    #[test]
    fn malformed_framing() {
        let cases: &[(&[u8], HttpError)] = &[
            (b"\r\n", HttpError::InvalidChunkSize("no hex digits")),
            (b";ext\r\n", HttpError::InvalidChunkSize("no hex digits")),
            (b"-1\r\n", HttpError::InvalidChunkSize("no hex digits")),
            (
                b"0x5\r\n",
                HttpError::InvalidChunkSize("unexpected byte after the size"),
            ),
            (
                b"5 5\r\n",
                HttpError::InvalidChunkSize("unexpected byte after the size"),
            ),
            (b"5\n", HttpError::BadLineEnding),
            (b"5\rX", HttpError::BadLineEnding),
            (b"5\r\nhelloX", HttpError::MissingChunkDataCrlf),
            (b"5\r\nhello\rX", HttpError::MissingChunkDataCrlf),
            (b"0\r\nx: y\n", HttpError::BadLineEnding),
        ];
        for (input, expected) in cases {
            assert_eq!(
                drive(&[input]).unwrap_err(),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits() {
        let long_extension = format!("5;{}\r\n", "e".repeat(HTTP_CHUNK_SIZE_LINE_MAX_BYTES));
        assert_eq!(
            drive(&[long_extension.as_bytes()]).unwrap_err(),
            HttpError::ChunkSizeLineTooLong {
                limit_bytes: HTTP_CHUNK_SIZE_LINE_MAX_BYTES
            }
        );
        let many_zeros = "0".repeat(HTTP_CHUNK_SIZE_LINE_MAX_BYTES + 1);
        assert_eq!(
            drive(&[many_zeros.as_bytes()]).unwrap_err(),
            HttpError::ChunkSizeLineTooLong {
                limit_bytes: HTTP_CHUNK_SIZE_LINE_MAX_BYTES
            }
        );
        let long_trailer = format!(
            "0\r\nx: {}\r\n\r\n",
            "t".repeat(HTTP_CHUNKED_TRAILER_MAX_BYTES)
        );
        assert_eq!(
            drive(&[long_trailer.as_bytes()]).unwrap_err(),
            HttpError::TrailerTooLarge {
                limit_bytes: HTTP_CHUNKED_TRAILER_MAX_BYTES
            }
        );
    }
}
