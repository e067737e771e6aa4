//! ringdown: restore data from object storage onto Linux servers with io_uring,
//! verified. See the README for the architecture.

pub mod b2;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod get;
pub mod http;
pub mod plan;
pub mod restore;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod tls;
pub mod units;
pub mod uring;
pub mod verify;

pub use error::{Error, Result};
pub use get::{Download, DownloadOptions, DownloadReport, Source};
