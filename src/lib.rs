//! ringdown: restore data from object storage onto Linux servers with io_uring,
//! verified. See DESIGN.md in the README for the architecture.

pub mod b2;
pub mod cli;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod names;
pub mod plan;
pub mod server;
pub mod stats;
pub mod units;

pub use error::{Error, Result};
