//! `ringdown demo`: a generated bucket, served by ringdown's own B2-compatible
//! server over TLS on 127.0.0.1, restored into a temporary directory with the
//! io_uring engine, verified, and compared byte for byte. Needs no network.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use clap::Parser;

use super::restore::{RestoreArgs, run_with};
use crate::error::{Error, Result, exit_code};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The generated bucket: small ≈ 190 MB (1,000 objects of up to 32 KiB, 100 of about
    /// 1 MiB, one of 64 MiB), medium ≈ 730 MB (1,000, 200 of 1 MiB, two of 256 MiB),
    /// large ≈ 2.6 GB (1,000, 400 of 1 MiB, four of 512 MiB).
    #[arg(long, value_enum, default_value_t = DemoSize::Small)]
    pub size: DemoSize,
    /// Override the number of small objects (up to 32 KiB) of --size.
    #[arg(long)]
    pub files: Option<usize>,
    /// Override the size of each large object of --size (restored with all cores on it).
    #[arg(long, value_parser = crate::units::parse_size_bytes)]
    pub large_size: Option<u64>,
    /// Keep the temporary directory (data, restore, server log) and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// `demo --size`: how much the generated bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoSize {
    Small,
    Medium,
    Large,
}

/// What the generated bucket holds.
struct Mix {
    /// Objects of up to 32 KiB (one in twenty empty).
    small: usize,
    /// Objects of about 1 MiB.
    medium: usize,
    /// Large objects, each of `large_bytes`.
    large: usize,
    large_bytes: u64,
}

impl Mix {
    fn of(args: &DemoArgs) -> Mix {
        let (medium, large, large_bytes) = match args.size {
            DemoSize::Small => (100, 1, 64 << 20),
            DemoSize::Medium => (200, 2, 256 << 20),
            DemoSize::Large => (400, 4, 512 << 20),
        };
        Mix {
            small: args.files.unwrap_or(1000),
            medium,
            large,
            large_bytes: args.large_size.unwrap_or(large_bytes),
        }
    }

    /// Every object, the README included.
    fn objects(&self) -> usize {
        self.small + self.medium + self.large + 1
    }
}

/// Writes `size` deterministic bytes (xorshift, from `seed`) to
/// `root/name`, a MiB at a time: the demo needs no randomness source, and
/// a 512 MiB object is never whole in memory.
fn write_generated(root: &Path, name: &str, seed: u64, size: u64) -> Result<()> {
    use std::io::Write;
    let path = root.join(name);
    let parent = path.parent().expect("a parent");
    std::fs::create_dir_all(parent)
        .map_err(|error| Error::io(format!("creating {}", parent.display()), error))?;
    let writing = |error| Error::io(format!("writing {}", path.display()), error);
    let mut file = std::fs::File::create(&path).map_err(writing)?;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut piece = Vec::with_capacity(1 << 20);
    let mut left = size;
    while left > 0 {
        piece.clear();
        let want = left.min(1 << 20) as usize;
        while piece.len() < want {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            piece.extend_from_slice(&state.to_le_bytes());
        }
        piece.truncate(want);
        file.write_all(&piece).map_err(writing)?;
        left -= want as u64;
    }
    Ok(())
}

/// Creates the bucket; returns the object names and the total bytes.
fn generate(bucket: &Path, mix: &Mix) -> Result<(Vec<String>, u64)> {
    let mut names = Vec::new();
    let mut total = 0u64;
    let mut add = |name: String, seed: u64, size: u64| -> Result<()> {
        // Ctrl-C while generating: stop here, and the caller removes it all.
        if let Some(signal) = crate::runtime::interrupted() {
            return Err(Error::Interrupted { signal });
        }
        write_generated(bucket, &name, seed, size)?;
        names.push(name);
        total += size;
        Ok(())
    };
    for i in 0..mix.small as u64 {
        // Up to 32 KiB, one in twenty empty.
        let size = if i % 20 == 0 {
            0
        } else {
            (i * 7919) % 32_768 + 1
        };
        add(format!("photos/{:02}/img-{i:04}.jpg", i % 17), i + 1, size)?;
    }
    for i in 0..mix.medium as u64 {
        add(
            format!("scans/scan-{i:04}.tif"),
            10_000 + i,
            (1 << 20) + i * 31,
        )?;
    }
    add("docs/README.txt".into(), 7, 26)?;
    for i in 0..mix.large as u64 {
        add(format!("archive/backup-{i}.tar"), 99 + i, mix.large_bytes)?;
    }
    Ok((names, total))
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of `ringdown serve`'s ready line.
struct Ready {
    realm: String,
    ca_file: PathBuf,
    key_id: String,
    key: String,
}

fn start_server(work: &Path, data: &Path) -> Result<(Server, Ready)> {
    let exe = std::env::current_exe().map_err(|error| Error::io("locating ringdown", error))?;
    let log = std::fs::File::create(work.join("serve.log"))
        .map_err(|error| Error::io("creating the server log", error))?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--large-file-threshold", "32MiB"])
        .arg("--cert-dir")
        .arg(work.join("certs"))
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .env_remove("B2_APPLICATION_KEY_ID")
        .env_remove("B2_APPLICATION_KEY")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|error| Error::io("starting ringdown serve", error))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server { child };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|error| Error::io("reading the server's ready line", error))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let missing = || {
        Error::Fatal(format!(
            "ringdown serve did not print its ready line (see {})",
            work.join("serve.log").display()
        ))
    };
    let ready = Ready {
        realm: field("realm").ok_or_else(missing)?,
        ca_file: field("ca_file").map(PathBuf::from).ok_or_else(missing)?,
        key_id: field("key_id").ok_or_else(missing)?,
        key: field("key").ok_or_else(missing)?,
    };
    Ok((server, ready))
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let open = |path: &Path| std::fs::File::open(path).map(std::io::BufReader::new);
    let (Ok(mut a), Ok(mut b)) = (open(a), open(b)) else {
        return false;
    };
    let mut left = vec![0u8; 1 << 20];
    let mut right = vec![0u8; 1 << 20];
    loop {
        let n = match a.read(&mut left) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if b.read_exact(&mut right[..n]).is_err() || left[..n] != right[..n] {
            return false;
        }
        if n == 0 {
            return b.read(&mut right[..1]).map(|m| m == 0).unwrap_or(false);
        }
    }
}

pub fn run(args: DemoArgs) -> Result<i32> {
    // From the start, not from the restore on: a signal while the bucket
    // is generated or served ends the demo here, which removes its files.
    crate::runtime::watch_signals();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let work = std::env::temp_dir().join(format!("ringdown-demo-{}-{stamp:x}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|error| Error::io(format!("creating {}", work.display()), error))?;
    let result = run_in(&args, &work);
    if args.keep {
        say!("demo: kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
        if matches!(result, Err(Error::Interrupted { .. })) {
            say!("demo: interrupted; removed {}", work.display());
        }
    }
    result
}

/// "64 MiB", "4.77 MiB", "1 byte": the large objects' size, not rounded
/// down to a misleading "0 MiB".
fn large_size_text(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    match bytes {
        1 => "1 byte".to_string(),
        _ if bytes < MIB => format!("{bytes} bytes"),
        _ if bytes % MIB == 0 => format!("{} MiB", bytes / MIB),
        _ => format!("{:.2} MiB", bytes as f64 / MIB as f64),
    }
}

fn run_in(args: &DemoArgs, work: &Path) -> Result<i32> {
    let data = work.join("data");
    let bucket = data.join("demo-bucket");
    let mix = Mix::of(args);
    say!(
        "demo: generating {} objects ({} of up to 32 KiB, {} of about 1 MiB, {} of {}, and a README) in {}",
        mix.objects(),
        mix.small,
        mix.medium,
        mix.large,
        large_size_text(mix.large_bytes),
        bucket.display()
    );
    let (names, total) = generate(&bucket, &mix)?;
    // A Ctrl-C reaches the server too (one process group): then its
    // missing ready line is the signal's doing, and said as such.
    let started = start_server(work, &data);
    if let Some(signal) = crate::runtime::interrupted() {
        return Err(Error::Interrupted { signal });
    }
    let (server, ready) = started?;
    say!(
        "demo: ringdown serve at {} (TLS, CA {})",
        ready.realm,
        ready.ca_file.display()
    );
    let restored = work.join("restore");
    // The whole bucket, whatever array job the demo runs in: `--shard 0/1`
    // keeps JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_* from taking 1/N of
    // it (then checked as a whole, and "FAILED"). Paths go as they are
    // (a non-UTF-8 TMPDIR included).
    let command_line: [&std::ffi::OsStr; 10] = [
        "ringdown".as_ref(),
        "restore".as_ref(),
        "b2://demo-bucket".as_ref(),
        restored.as_os_str(),
        "--realm".as_ref(),
        ready.realm.as_ref(),
        "--ca-file".as_ref(),
        ready.ca_file.as_os_str(),
        "--shard".as_ref(),
        "0/1".as_ref(),
    ];
    say!(
        "demo: ringdown restore b2://demo-bucket {}",
        restored.display()
    );
    let restore_args = match super::Cli::try_parse_from(command_line) {
        Ok(super::Cli {
            command: super::Command::Restore(restore_args),
        }) => restore_args,
        _ => {
            return Err(Error::Fatal(
                "the demo's restore command line did not parse".into(),
            ));
        }
    };
    let restore_args: RestoreArgs = restore_args;
    let code = run_with(
        restore_args,
        Some((ready.key_id.clone(), ready.key.clone())),
    )?;
    drop(server);
    let mut differing = Vec::new();
    for name in &names {
        if !same_bytes(&bucket.join(name), &restored.join(name)) {
            differing.push(name.clone());
        }
    }
    let _ = std::io::stderr().flush();
    if code != exit_code::OK || !differing.is_empty() {
        say!(
            "demo: FAILED: restore exited {code}; {} files differ from the source{}",
            differing.len(),
            differing
                .first()
                .map(|name| format!(" (first: {name})"))
                .unwrap_or_default()
        );
        return Ok(exit_code::FAILED);
    }
    say!(
        "demo: {} objects, {:.1} MB restored, verified against their SHA1, and byte-for-byte equal to the source",
        names.len(),
        total as f64 / 1e6
    );
    Ok(exit_code::OK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_large_size_is_said_as_it_is() {
        use super::large_size_text;
        assert_eq!(large_size_text(64 << 20), "64 MiB");
        assert_eq!(large_size_text(5_000_000), "4.77 MiB");
        assert_eq!(large_size_text(1), "1 byte");
        assert_eq!(large_size_text(4096), "4096 bytes");
    }
}
