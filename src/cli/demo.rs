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
    /// Small objects in the generated bucket.
    #[arg(long, default_value_t = 400)]
    pub files: usize,
    /// Size of the one large object (restored with all cores on it).
    #[arg(long, default_value = "64MiB", value_parser = crate::units::parse_size_bytes)]
    pub large_size: u64,
    /// Keep the temporary directory (data, restore, server log) and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// Deterministic bytes (xorshift) so the demo needs no randomness source.
fn generated(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn write(root: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = root.join(name);
    let parent = path.parent().expect("a parent");
    std::fs::create_dir_all(parent)
        .map_err(|error| Error::io(format!("creating {}", parent.display()), error))?;
    std::fs::write(&path, bytes)
        .map_err(|error| Error::io(format!("writing {}", path.display()), error))
}

/// Creates the bucket; returns the object names and the total bytes.
fn generate(bucket: &Path, files: usize, large_size: u64) -> Result<(Vec<String>, u64)> {
    let mut names = Vec::new();
    let mut total = 0u64;
    for i in 0..files {
        let name = format!("photos/{:02}/img-{i:04}.jpg", i % 17);
        // Mostly small, a few around a megabyte, one in twenty empty.
        let size = match i % 20 {
            0 => 0,
            1 => (1 << 20) + i * 31,
            _ => (i * 7919) % 96_000 + 1,
        };
        write(bucket, &name, &generated(i as u64 + 1, size))?;
        names.push(name);
        total += size as u64;
    }
    write(bucket, "docs/README.txt", b"restored by ringdown demo\n")?;
    names.push("docs/README.txt".into());
    total += 26;
    write(
        bucket,
        "archive/backup.tar",
        &generated(99, large_size as usize),
    )?;
    names.push("archive/backup.tar".into());
    total += large_size;
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
    }
    result
}

fn run_in(args: &DemoArgs, work: &Path) -> Result<i32> {
    let data = work.join("data");
    let bucket = data.join("demo-bucket");
    say!(
        "demo: generating {} objects (one a {} MiB large file) in {}",
        args.files + 2,
        args.large_size >> 20,
        bucket.display()
    );
    let (names, total) = generate(&bucket, args.files, args.large_size)?;
    let (server, ready) = start_server(work, &data)?;
    say!(
        "demo: ringdown serve at {} (TLS, CA {})",
        ready.realm,
        ready.ca_file.display()
    );
    let restored = work.join("restore");
    let command_line = [
        "ringdown",
        "restore",
        "b2://demo-bucket",
        restored.to_str().unwrap_or("restore"),
        "--realm",
        &ready.realm,
        "--ca-file",
        ready.ca_file.to_str().unwrap_or(""),
    ];
    say!("demo: {}", command_line[..4].join(" "));
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
