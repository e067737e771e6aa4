//! `ringdown serve`: a B2-compatible origin for tests, demos and benchmarks.
//! (Being written: see issue 3.)

use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory whose subdirectories are served as buckets.
    pub dir: std::path::PathBuf,
}

pub fn run(_args: ServeArgs) -> Result<()> {
    Err(crate::error::Error::Usage("serve is not built yet".into()))
}
