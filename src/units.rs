//! The one parser for every size and rate flag (CONVENTIONS.md, "Units").
//!
//! `K M G T` and `KiB MiB GiB TiB` are powers of 1024; `KB MB GB TB` are powers
//! of 1000; a bare number is bytes; rates may end in `/s`. Instants (`--as-of`)
//! are RFC 3339 times with a zone, or a bare date at 00:00 UTC.

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

/// Parses an instant as B2 stamps uploads: milliseconds since the Unix
/// epoch. Accepts RFC 3339 with a zone (`2026-11-20T09:30:00Z`,
/// `2026-11-20 09:30:00.250+01:00`) or a bare date (`2026-11-20`, meaning
/// 00:00:00 UTC). A time without a zone is refused rather than guessed: the
/// same words must name the same instant on every machine of a sharded run.
pub fn parse_instant_ms(text: &str) -> Result<u64, String> {
    let expected = "expected an RFC 3339 time with a zone (e.g. 2026-11-20T09:30:00Z or 2026-11-20T10:30:00+01:00) or a date (2026-11-20, meaning 00:00 UTC)";
    let bad = || format!("{text:?} is not a time: {expected}");
    let text_trimmed = text.trim();
    let bytes = text_trimmed.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<u64, String> {
        let part = text_trimmed.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("{text:?}: no such date"));
    }
    let mut seconds_of_day = 0;
    let mut millis = 0;
    let mut offset_s: i64 = 0;
    if bytes.len() > 10 {
        if !matches!(bytes[10], b'T' | b't' | b' ') || bytes.len() < 19 {
            return Err(bad());
        }
        if bytes[13] != b':' || bytes[16] != b':' {
            return Err(bad());
        }
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        // 60: a leap second, as RFC 3339 allows; it folds into the next second.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(format!("{text:?}: no such time of day"));
        }
        seconds_of_day = hour * 3600 + minute * 60 + second;
        let mut at = 19;
        if bytes.get(at) == Some(&b'.') {
            let fraction_end = text_trimmed[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(bytes.len(), |end| at + 1 + end);
            let fraction = &text_trimmed[at + 1..fraction_end];
            if fraction.is_empty() {
                return Err(bad());
            }
            // Milliseconds: B2's resolution; finer digits are cut, not rounded.
            let mut padded = fraction.chars().take(3).collect::<String>();
            while padded.len() < 3 {
                padded.push('0');
            }
            millis = padded.parse::<u64>().map_err(|_| bad())?;
            at = fraction_end;
        }
        offset_s = match &text_trimmed[at..] {
            "Z" | "z" => 0,
            "" => {
                return Err(format!(
                    "{text:?} has no time zone: add Z for UTC or an offset such as +01:00"
                ));
            }
            zone => {
                let sign = match zone.as_bytes()[0] {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return Err(bad()),
                };
                let zone_bytes = zone.as_bytes();
                if zone_bytes.len() != 6 || zone_bytes[3] != b':' {
                    return Err(bad());
                }
                let (hours, minutes) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
                if hours > 23 || minutes > 59 {
                    return Err(bad());
                }
                sign * (hours * 3600 + minutes * 60) as i64
            }
        };
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + seconds_of_day as i64 - offset_s;
    if seconds < 0 {
        return Err(format!("{text:?} is before 1970, when no upload can be"));
    }
    Ok(seconds as u64 * 1000 + millis)
}

/// "1 attempt", "3 attempts": how many, for a message.
pub fn attempts(count: impl Into<u64>) -> String {
    match count.into() {
        1 => "1 attempt".to_string(),
        count => format!("{count} attempts"),
    }
}

/// `2026-11-20T09:30:00.250Z`: an instant as `parse_instant_ms` reads it back.
pub fn format_instant_ms(ms: u64) -> String {
    let seconds = (ms / 1000) as i64;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    let millis = ms % 1000;
    let fraction = if millis == 0 {
        String::new()
    } else {
        format!(".{millis:03}")
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

fn is_leap_year(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(crate) fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub(crate) fn days_from_civil(year: u64, month: u64, day: u64) -> i64 {
    let year = year as i64 - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of `days_from_civil`.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u64;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u64;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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

    #[test]
    fn instants_in_rfc_3339_and_dates() {
        assert_eq!(parse_instant_ms("1970-01-01"), Ok(0));
        assert_eq!(parse_instant_ms("1970-01-01T00:00:01Z"), Ok(1000));
        // `date -u -d 2026-11-20T09:30:00Z +%s` = 1795167000
        assert_eq!(
            parse_instant_ms("2026-11-20T09:30:00Z"),
            Ok(1_795_167_000_000)
        );
        assert_eq!(
            parse_instant_ms("2026-11-20 10:30:00.25+01:00"),
            Ok(1_795_167_000_250)
        );
        assert_eq!(
            parse_instant_ms("2026-11-20t04:00:00.123456-05:30"),
            Ok(1_795_167_000_123)
        );
        assert_eq!(parse_instant_ms("2026-11-20"), Ok(1_795_132_800_000));
        assert_eq!(
            parse_instant_ms("2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-20T09:30:00",
            "2026-13-01",
            "2026-02-29",
            "2026-11-20T24:00:00Z",
            "2026-11-20T09:30Z",
            "2026-11-20T09:30:00+1",
            "2026-11-20T09:30:00.Z",
            "2026-11-20T09:30:00ZZ",
            "1969-12-31T23:59:59Z",
            "+2026-11-20",
            "２０２６-11-20",
        ] {
            assert!(parse_instant_ms(bad).is_err(), "{bad:?} accepted");
        }
        let zone = parse_instant_ms("2026-11-20T09:30:00").unwrap_err();
        assert!(zone.contains("no time zone"), "{zone}");
    }

    #[test]
    fn instants_format_and_read_back() {
        for ms in [
            0,
            999,
            1_795_167_000_250,
            951_782_400_000,
            4_102_444_800_000,
        ] {
            let text = format_instant_ms(ms);
            assert_eq!(parse_instant_ms(&text), Ok(ms), "{text}");
        }
        assert_eq!(format_instant_ms(1_795_167_000_000), "2026-11-20T09:30:00Z");
    }
}
