//! The command line: run, check a config (like `nginx -t`), or start the demo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::server::Launch;

/// Exit code for a configuration that cannot be used.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "streamgate",
    version,
    about = "Edge proxy that caps concurrent streams per user"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, default_value = "conf/streamgate.toml", global = true)]
    pub config: PathBuf,
    /// Validate the configuration and exit (0 when valid, 2 when not).
    #[arg(long, short = 't')]
    pub check: bool,
    /// Listen address, instead of `server.listen` (repeatable).
    #[arg(long, value_name = "ADDR", global = true, value_parser = listen_addr("server.listen"))]
    pub listen: Vec<SocketAddr>,
    /// Upstream address, instead of `upstream.addrs` (repeatable).
    #[arg(long, value_name = "ADDR", global = true)]
    pub upstream: Vec<String>,
    /// Streams per user, instead of `streams.limit`.
    #[arg(long, global = true)]
    pub limit: Option<u32>,
    /// Metrics listen address, instead of `metrics.listen`.
    #[arg(long, value_name = "ADDR", global = true, value_parser = listen_addr("metrics.listen"))]
    pub metrics: Option<SocketAddr>,
    /// Take the listening sockets over from the running instance (zero-downtime upgrade):
    /// start this, then send the old process SIGQUIT within 5 s.
    #[arg(long, short = 'u')]
    pub upgrade: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy on :3001 in front of a built-in demo origin; no config file needed.
    Demo {
        /// Where the built-in origin listens.
        #[arg(long, default_value = "127.0.0.1:3080")]
        origin: String,
    },
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            limit: self.limit,
            metrics: self.metrics,
        }
    }
}

/// Run the command line; returns only on error (the server itself runs forever).
pub fn run(cli: Cli) -> ExitCode {
    let (config, demo_origin) = match &cli.command {
        Some(Command::Demo { origin }) => {
            let mut o = cli.overrides();
            o.upstream = vec![origin.clone()];
            // The defaults, with the demo origin as upstream and the flags applied.
            let cfg = Config::default().with_overrides(&o).validate();
            match cfg {
                Ok(c) => (c, Some(origin.clone())),
                Err(e) => {
                    eprintln!("streamgate: demo: {}: {}", e.key, e.message);
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        None => match Config::load(&cli.config, &cli.overrides()) {
            Ok(c) => (c, None),
            Err(e) => {
                eprintln!("streamgate: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    if let Err(e) = crate::server::check_identity(&config) {
        eprintln!("streamgate: {}: {e}", cli.config.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    if config.identity.mode == crate::config::IdentityMode::Jwt
        && config.streams.limit_status == 401
    {
        let why =
            "streams.limit_status = 401 with identity.mode = \"jwt\": OAuth clients read a 401 \
                   as \"refresh the token\", not \"too many streams\" (set 403, 409 or 429)";
        if cli.check {
            eprintln!("streamgate: {}: warning: {why}", cli.config.display());
        } else {
            log::warn!("{why}");
        }
    }
    if cli.check {
        println!(
            "streamgate: {}: configuration is valid",
            cli.config.display()
        );
        return ExitCode::SUCCESS;
    }
    crate::reload::apply_log_level(config.log.level);
    let launch = Launch {
        demo_origin: demo_origin.as_deref(),
        upgrade: cli.upgrade,
        reload_from: demo_origin
            .is_none()
            .then(|| (cli.config.clone(), cli.overrides())),
    };
    let server = match crate::server::build(&config, prometheus::default_registry(), &launch) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("streamgate: {}: {e}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    log::info!(
        "streamgate listening on {:?}, upstream {:?}, limit {} per user",
        config.server.listen,
        config.upstream.addrs,
        config.streams.limit
    );
    server.run_forever()
}

/// A listen flag's value: an `IP:port`, named after the key it replaces when it is not.
fn listen_addr(key: &'static str) -> impl Fn(&str) -> Result<SocketAddr, String> + Clone {
    move |v: &str| {
        v.parse()
            .map_err(|_| format!("not an IP:port address (instead of {key})"))
    }
}
