//! The master process: owns the state, starts and supervises workers, serves
//! the command socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// `sozu start`
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Configuration file (Sōzu 2.x compatible TOML).
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
}

pub fn start(args: StartArgs) -> ExitCode {
    eprintln!(
        "error: cannot start from {}: the master is not available yet",
        args.config.display()
    );
    ExitCode::FAILURE
}
