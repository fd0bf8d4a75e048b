//! The `streamgate` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    streamgate::cli::run(streamgate::cli::Cli::parse())
}
