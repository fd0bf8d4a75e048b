//! The `streamgate` binary: parse the command line and hand over to the library.

use clap::Parser;

/// jemalloc: much cheaper than glibc's malloc for the proxy's many short-lived buffers,
/// without mimalloc's larger resident size per held connection (docs/tuning.md#allocator).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // Without `RUST_LOG`, the config's `log.level` sets the level (and a reload changes it),
    // so the logger itself lets everything through.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace")).init();
    log::set_max_level(log::LevelFilter::Info);
    streamgate::cli::run(streamgate::cli::Cli::parse())
}
