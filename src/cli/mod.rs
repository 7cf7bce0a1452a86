//! The command line: parse, then hand over to one module per subcommand.

mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for an invalid configuration or command line.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for failures while starting or running.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "jserve",
    version,
    about = "A target-level cache service for justbuild clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the serve daemon (the drop-in for `just serve`).
    Serve {
        /// Config file in the just-serve-config(5) format; defaults apply without one.
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve::run(config.as_deref()),
    }
}
