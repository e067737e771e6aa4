//! Per-stage latency histograms (hdrhistogram, microseconds) and the run
//! summary printed as a table and written as `--stats-json`.
//!
//! Each core owns a [`StageHistograms`]; cores merge theirs at the end, and the
//! benchmark harness merges runs from the JSON (`hdr_v2_deflate_b64`).

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde_json::{Map, Value, json};

use crate::config::{HISTOGRAM_MAX_US, HISTOGRAM_SIGFIGS};

/// The timed stages (DESIGN.md). Names are stable: JSON and the harness read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Connect,
    TlsHandshake,
    /// Request sent → first byte of its response head; for a GET sent
    /// ahead (pipelining), that includes the body it was queued behind.
    Ttfb,
    Recv,
    BufferWait,
    Write,
    Hash,
    Chunk,
    File,
    RetryWait,
    /// `--limit-rate`: a connection holding back to stay under the limit.
    RateWait,
}

impl Stage {
    pub const ALL: [Stage; 11] = [
        Stage::Connect,
        Stage::TlsHandshake,
        Stage::Ttfb,
        Stage::Recv,
        Stage::BufferWait,
        Stage::Write,
        Stage::Hash,
        Stage::Chunk,
        Stage::File,
        Stage::RetryWait,
        Stage::RateWait,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::TlsHandshake => "tls_handshake",
            Stage::Ttfb => "ttfb",
            Stage::Recv => "recv",
            Stage::BufferWait => "buffer_wait",
            Stage::Write => "write",
            Stage::Hash => "hash",
            Stage::Chunk => "chunk",
            Stage::File => "file",
            Stage::RetryWait => "retry_wait",
            Stage::RateWait => "rate_wait",
        }
    }

    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.name() == name)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// One histogram per stage, in microseconds, 1 µs to `HISTOGRAM_MAX_US`
/// (larger values saturate), `HISTOGRAM_SIGFIGS` significant figures.
#[derive(Debug, Clone)]
pub struct StageHistograms {
    by_stage: [Histogram<u64>; Stage::ALL.len()],
}

impl Default for StageHistograms {
    fn default() -> Self {
        Self::new()
    }
}

fn empty_histogram() -> Histogram<u64> {
    // new_with_bounds leaves auto-resize off: memory is fixed at start-up.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIGS)
        .expect("HISTOGRAM_MAX_US and HISTOGRAM_SIGFIGS are valid bounds")
}

/// Adds `source` into `target`, saturating values beyond `target`'s range
/// instead of failing (a decoded histogram may have other bounds).
fn add_saturating(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    if target.add(source).is_err() {
        for value in source.iter_recorded() {
            target.saturating_record_n(value.value_iterated_to(), value.count_at_value());
        }
    }
}

impl StageHistograms {
    pub fn new() -> Self {
        StageHistograms {
            by_stage: std::array::from_fn(|_| empty_histogram()),
        }
    }

    /// Records one duration; values past `HISTOGRAM_MAX_US` saturate (a
    /// two-hour stall must not fail a run).
    pub fn record(&mut self, stage: Stage, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.by_stage[stage.slot()].saturating_record(micros);
    }

    pub fn merge(&mut self, other: &StageHistograms) {
        for stage in Stage::ALL {
            add_saturating(
                &mut self.by_stage[stage.slot()],
                &other.by_stage[stage.slot()],
            );
        }
    }

    pub fn count(&self, stage: Stage) -> u64 {
        self.by_stage[stage.slot()].len()
    }

    pub fn histogram(&self, stage: Stage) -> &Histogram<u64> {
        &self.by_stage[stage.slot()]
    }

    /// A human table: stage, count, p50, p90, p99, max. Stages never
    /// recorded show dashes.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "stage", "count", "p50", "p90", "p99", "max"
        );
        for stage in Stage::ALL {
            let histogram = self.histogram(stage);
            if histogram.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9}",
                    stage.name(),
                    0,
                    "-",
                    "-",
                    "-",
                    "-"
                );
                continue;
            }
            let _ = writeln!(
                out,
                "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9}",
                stage.name(),
                histogram.len(),
                format_micros(histogram.value_at_quantile(0.50)),
                format_micros(histogram.value_at_quantile(0.90)),
                format_micros(histogram.value_at_quantile(0.99)),
                format_micros(histogram.max()),
            );
        }
        out
    }

    /// `{NAME: {"count","p50_us","p90_us","p99_us","max_us","hdr_v2_deflate_b64"}}`
    /// for every stage, recorded or not.
    pub fn to_json(&self) -> Value {
        let mut stages = Map::new();
        for stage in Stage::ALL {
            let histogram = self.histogram(stage);
            let mut encoded = Vec::new();
            V2DeflateSerializer::new()
                .serialize(histogram, &mut encoded)
                .expect("serializing a bounded histogram into a Vec cannot fail");
            stages.insert(
                stage.name().to_string(),
                json!({
                    "count": histogram.len(),
                    "p50_us": histogram.value_at_quantile(0.50),
                    "p90_us": histogram.value_at_quantile(0.90),
                    "p99_us": histogram.value_at_quantile(0.99),
                    "max_us": histogram.max(),
                    "hdr_v2_deflate_b64": BASE64.encode(&encoded),
                }),
            );
        }
        Value::Object(stages)
    }

    /// Decodes what [`to_json`](Self::to_json) wrote (the `"stages"` object of
    /// `--stats-json`). Missing stages are empty; unknown names are ignored so
    /// that newer files still load.
    pub fn from_json(value: &Value) -> Result<StageHistograms, String> {
        let stages = value.as_object().ok_or("stages is not a JSON object")?;
        let mut histograms = StageHistograms::new();
        for (name, entry) in stages {
            let Some(stage) = Stage::from_name(name) else {
                continue;
            };
            let encoded = entry
                .get("hdr_v2_deflate_b64")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("stage {name}: missing hdr_v2_deflate_b64"))?;
            let bytes = BASE64
                .decode(encoded)
                .map_err(|error| format!("stage {name}: bad base64: {error}"))?;
            let decoded: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .map_err(|error| format!("stage {name}: bad histogram: {error:?}"))?;
            add_saturating(&mut histograms.by_stage[stage.slot()], &decoded);
        }
        Ok(histograms)
    }
}

/// Microseconds in the unit a reader expects: `850µs`, `12.3ms`, `4.56s`, `2m05s`.
pub fn format_micros(micros: u64) -> String {
    match micros {
        0..=999 => format!("{micros}µs"),
        1_000..=999_999 => format!("{:.1}ms", micros as f64 / 1e3),
        1_000_000..=59_999_999 => format!("{:.2}s", micros as f64 / 1e6),
        _ => {
            let seconds = micros / 1_000_000;
            format!("{}m{:02}s", seconds / 60, seconds % 60)
        }
    }
}

/// What a finished `get`, `restore` or `demo` reports.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub command: String,
    /// Sizes of the files restored by this run, resumed ones whole.
    pub bytes: u64,
    /// Of `bytes`, the prefixes of resumed objects: found on disk (and
    /// hashed from there), not fetched. Not part of the rate.
    pub resumed_bytes: u64,
    pub files: u64,
    pub seconds: f64,
    pub verified_ok: u64,
    pub unverified: u64,
    pub failed: u64,
    /// `restore`: files left as they were (journal, `--skip-existing`)
    /// and names refused; 0 for `get`. A rerun that skipped everything is
    /// not a run that found nothing, nor a refusal a success.
    pub skipped: u64,
    pub refused: u64,
    pub retries: u64,
    pub direct_io: bool,
    pub registered_buffers: bool,
    /// How this process fed SHA1 (`verify::Sha1Feed`); `None` before its
    /// trials ended (a run that hashed little).
    pub sha1_feed: Option<crate::verify::Sha1Feed>,
    pub stages: StageHistograms,
}

impl RunSummary {
    /// Bytes this run fetched: what the rate is made of.
    pub fn fetched_bytes(&self) -> u64 {
        self.bytes.saturating_sub(self.resumed_bytes)
    }

    /// Fetched 10⁶ bytes per second ("MB/s" everywhere in output); 0 for a
    /// zero-length run. A resumed prefix came from disk and is left out.
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 && self.seconds.is_finite() {
            self.fetched_bytes() as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }

    /// The `--stats-json` document (CONVENTIONS.md, schema 1).
    pub fn to_json(&self) -> Value {
        let seconds = if self.seconds.is_finite() {
            self.seconds
        } else {
            0.0
        };
        json!({
            "schema": 1,
            "command": self.command,
            "bytes": self.bytes,
            "resumed_bytes": self.resumed_bytes,
            "files": self.files,
            "seconds": seconds,
            "mb_per_s": self.mb_per_s(),
            "verified": { "ok": self.verified_ok, "unverified": self.unverified, "failed": self.failed },
            "skipped": self.skipped,
            "refused": self.refused,
            "retries": self.retries,
            "direct_io": self.direct_io,
            "registered_buffers": self.registered_buffers,
            "sha1_feed": self.sha1_feed.map(crate::verify::Sha1Feed::name),
            "stages": self.stages.to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        let names: Vec<&str> = Stage::ALL.iter().map(|stage| stage.name()).collect();
        assert_eq!(
            names,
            [
                "connect",
                "tls_handshake",
                "ttfb",
                "recv",
                "buffer_wait",
                "write",
                "hash",
                "chunk",
                "file",
                "retry_wait",
                "rate_wait"
            ]
        );
        for stage in Stage::ALL {
            assert_eq!(Stage::from_name(stage.name()), Some(stage));
        }
    }

    #[test]
    fn record_merge_count_and_saturate() {
        let mut core0 = StageHistograms::new();
        let mut core1 = StageHistograms::new();
        for micros in 1..=100 {
            core0.record(Stage::Recv, Duration::from_micros(micros));
        }
        core1.record(Stage::Recv, Duration::from_secs(2 * 3600));
        core1.record(Stage::Write, Duration::ZERO);
        core0.merge(&core1);
        assert_eq!(core0.count(Stage::Recv), 101);
        assert_eq!(core0.count(Stage::Write), 1);
        assert_eq!(core0.count(Stage::Hash), 0);
        let recv = core0.histogram(Stage::Recv);
        assert!(recv.max() >= HISTOGRAM_MAX_US && recv.max() <= HISTOGRAM_MAX_US * 101 / 100);
        assert!((49..=51).contains(&recv.value_at_quantile(0.5)));
    }

    #[test]
    fn json_round_trip() {
        let mut stages = StageHistograms::new();
        for micros in [3, 70, 900, 15_000, 2_500_000] {
            stages.record(Stage::Chunk, Duration::from_micros(micros));
        }
        stages.record(Stage::Ttfb, Duration::from_millis(12));
        let json = stages.to_json();
        assert_eq!(json["chunk"]["count"], 5);
        assert_eq!(
            json["ttfb"]["p50_us"],
            stages.histogram(Stage::Ttfb).value_at_quantile(0.5)
        );
        assert_eq!(json["file"]["count"], 0);
        let text = serde_json::to_string(&json).unwrap();
        let decoded = StageHistograms::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        for stage in Stage::ALL {
            assert_eq!(
                decoded.histogram(stage),
                stages.histogram(stage),
                "{}",
                stage.name()
            );
        }
        // A harness merging two runs gets the sum.
        let mut merged = decoded.clone();
        merged.merge(&decoded);
        assert_eq!(merged.count(Stage::Chunk), 10);
        assert!(
            StageHistograms::from_json(&json!({"chunk": {"hdr_v2_deflate_b64": "!!"}})).is_err()
        );
        assert!(StageHistograms::from_json(&json!([])).is_err());
        assert_eq!(
            StageHistograms::from_json(&json!({"future_stage": {}}))
                .unwrap()
                .count(Stage::Chunk),
            0
        );
    }

    #[test]
    fn table_uses_readable_units() {
        let mut stages = StageHistograms::new();
        stages.record(Stage::Hash, Duration::from_micros(640));
        stages.record(Stage::File, Duration::from_millis(4_560));
        let table = stages.table();
        assert!(table.starts_with("stage"), "{table}");
        assert_eq!(table.lines().count(), 12);
        assert!(
            table
                .lines()
                // 640 µs within `HISTOGRAM_SIGFIGS`: 643.
                .any(|line| line.starts_with("hash") && line.contains(" 643µs ")),
            "{table}"
        );
        assert!(
            table
                .lines()
                // 4.56 s within `HISTOGRAM_SIGFIGS`: 4.59.
                .any(|line| line.starts_with("file") && line.contains(" 4.59s ")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|line| line.starts_with("connect") && line.contains('-')),
            "{table}"
        );
        assert_eq!(format_micros(12_345), "12.3ms");
        assert_eq!(format_micros(125_000_000), "2m05s");
    }

    #[test]
    fn summary_json_shape() {
        let summary = RunSummary {
            command: "get".to_string(),
            bytes: 2_500_000_000,
            resumed_bytes: 500_000_000,
            files: 1,
            seconds: 2.0,
            verified_ok: 1,
            unverified: 0,
            failed: 0,
            skipped: 4,
            refused: 5,
            retries: 3,
            direct_io: true,
            registered_buffers: false,
            sha1_feed: Some(crate::verify::Sha1Feed::Plain),
            stages: StageHistograms::new(),
        };
        let json = summary.to_json();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        let mut expected = vec![
            "schema",
            "command",
            "bytes",
            "resumed_bytes",
            "files",
            "seconds",
            "mb_per_s",
            "verified",
            "skipped",
            "refused",
            "retries",
            "direct_io",
            "registered_buffers",
            "sha1_feed",
            "stages",
        ];
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(json["schema"], 1);
        assert_eq!(json["mb_per_s"], 1000.0);
        assert_eq!(json["sha1_feed"], "plain");
        assert_eq!(
            json["verified"],
            json!({"ok": 1, "unverified": 0, "failed": 0})
        );
        assert_eq!(
            (json["skipped"].clone(), json["refused"].clone()),
            (json!(4), json!(5))
        );
        assert_eq!(json["stages"].as_object().unwrap().len(), 11);
        let zero = RunSummary {
            seconds: 0.0,
            ..RunSummary::default()
        };
        assert_eq!(zero.to_json()["mb_per_s"], 0.0);
    }
}
