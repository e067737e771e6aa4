//! The one parser for every size and rate flag (CONVENTIONS.md, "Units").
//!
//! `K M G T` and `KiB MiB GiB TiB` are powers of 1024; `KB MB GB TB` are powers
//! of 1000; a bare number is bytes; rates may end in `/s`.

/// Parses a size such as `8M`, `64MiB`, `1.5GB` or `4096` into bytes.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a number with an optional unit (e.g. 8M, 64MiB, 1GB)"
        ));
    }
    let multiplier: u64 = match suffix.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use K/M/G/T or KiB/MiB/GiB/TiB for powers of 1024, KB/MB/GB/TB for powers of 1000)"
            ));
        }
    };
    let bytes = if number.contains('.') {
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("{text:?} is too large"));
        }
        bytes.round() as u64
    } else {
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is too large"))?;
        value
            .checked_mul(multiplier)
            .ok_or_else(|| format!("{text:?} is too large"))?
    };
    Ok(bytes)
}

/// Parses a rate such as `25MB/s`, `100M` or `1GiB/s` into bytes per second.
pub fn parse_rate_bytes_per_s(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let without_per_s = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    parse_size_bytes(without_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse_size_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_size_bytes("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size_bytes("2KB").unwrap(), 2000);
        assert_eq!(parse_size_bytes("1.5K").unwrap(), 1536);
        assert_eq!(parse_rate_bytes_per_s("25MB/s").unwrap(), 25_000_000);
        assert_eq!(parse_rate_bytes_per_s("1MiB/s").unwrap(), 1 << 20);
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size_bytes("").unwrap_err().contains("not a size"));
        assert!(parse_size_bytes("M").unwrap_err().contains("not a size"));
        assert!(parse_size_bytes("3X").unwrap_err().contains("unknown unit"));
        assert!(
            parse_size_bytes("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_size_bytes("99999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
