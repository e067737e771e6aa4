//! Flags and environment → configuration. No I/O beyond reading the
//! environment; the commands themselves live in the library.

pub mod demo;
pub mod get;
pub mod restore;
mod ticker;

use clap::{Parser, Subcommand};

use crate::error::Result;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    some object failed, was refused, or was unverified under --require-verified
  2    usage or configuration error (caught before any network I/O)
  3    authentication or TLS trust failure, a proxy refusing the tunnel (4xx), or an
       application key not allowed to do this (bucket, name prefix, capability)
  4    io_uring unavailable (seccomp profile, kernel.io_uring_disabled, old kernel)
  130  interrupted by SIGINT, 143 by SIGTERM

Proxies: https_proxy / http_proxy / all_proxy (http://[user:pass@]host[:port]) and
no_proxy are honoured through CONNECT tunnels; loopback is never proxied.";

#[derive(Debug, Parser)]
#[command(name = "ringdown", version, about = "Restore data from Backblaze B2 and HTTP origins onto Linux servers, fast and verified", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a directory as a B2-compatible origin (for tests, demos and benchmarks).
    Serve(crate::server::ServeArgs),
    /// Download one object (b2://BUCKET/NAME or an http(s) URL) to a file, verified.
    Get(get::GetArgs),
    /// Restore a bucket or folder (b2://BUCKET[/PREFIX]) into a directory, verified and resumable.
    Restore(restore::RestoreArgs),
    /// Generate a bucket, serve it locally over TLS, restore it and verify it (no network needed).
    Demo(demo::DemoArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve(args) => crate::server::run(args).map(|()| 0),
        Command::Get(args) => get::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Demo(args) => demo::run(args),
    }
}
