//! Client commands: each turns into one order sent to the master.

use std::process::ExitCode;

use crate::cli::{Command, GlobalArgs};

pub fn run(_global: GlobalArgs, command: Command) -> ExitCode {
    eprintln!("error: {command:?} is not available yet");
    ExitCode::FAILURE
}
