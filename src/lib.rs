//! nuwax: backup, upgrade and rollback for docker compose projects.
//!
//! The code is split by what it talks to: [`engine`] (the Docker engine and the compose CLI),
//! [`archive`] (the archive format), [`catalog`] (SQLite), [`project`] (compose files and
//! `nuwax.toml`), and the [`flows`] that combine them. [`guard`] is the stop → work → always
//! start guard every flow that stops services goes through.

pub mod archive;
pub mod catalog;
pub mod cli;
pub mod engine;
pub mod error;
pub mod flows;
pub mod fsutil;
pub mod guard;
pub mod lock;
pub mod package;
pub mod project;
pub mod retention;
pub mod schedule;

pub use error::Error;

/// The version of this nuwax build, written into every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
