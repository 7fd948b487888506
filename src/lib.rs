//! nuwax: backup, upgrade and rollback for docker compose projects.
//!
//! The code is split by what it talks to: [`engine`] (the Docker engine and the compose CLI),
//! [`archive`] (the archive format), [`catalog`] (SQLite), [`project`] (compose files and
//! `nuwax.toml`), and the [`flows`] that combine them. [`runner`] is the shape every flow takes:
//! a typed journal written first, one stop scope that always starts what it stopped, recovery
//! per operation kind.

pub mod archive;
pub mod catalog;
pub mod cli;
pub mod database;
pub mod engine;
pub mod error;
pub mod faults;
pub mod flows;
pub mod fsutil;
pub mod interrupt;
pub mod lock;
pub mod package;
pub mod project;
pub mod remote;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod serve;
pub mod snapshot;

pub use error::Error;

/// The version of this nuwax build, written into every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
