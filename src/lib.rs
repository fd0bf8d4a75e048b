//! streamgate: an edge reverse proxy on Pingora that caps concurrent video streams per user.
//!
//! The binary (`src/main.rs`) only parses the command line; everything else lives here so
//! that integration tests build and run the very same server. The modules are named after
//! what they decide; see the README's file map.

mod access_log;
mod admin;
pub mod cli;
pub mod config;
mod demo;
mod drain;
mod framing;
mod head_limits;
pub mod identity;
mod inflight;
pub mod jwt;
mod lease;
pub mod manifest;
mod metrics;
mod policy;
mod proxy;
mod reload;
pub mod routing;
pub mod server;
pub mod store;
mod tls;
mod upstream;
