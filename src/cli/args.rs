//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Clone, Parser)]
#[command(name = "nuwax", version, about = "Backup, upgrade and rollback for docker compose projects")]
pub struct Cli {
    /// The compose project directory (default: the current directory).
    #[arg(long, global = true, value_name = "DIR", env = "NUWAX_PROJECT_DIR")]
    pub project_dir: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// An age identity file that opens encrypted archives (besides `identity_file` in nuwax.toml).
    #[arg(long, global = true, value_name = "PATH", env = "NUWAX_IDENTITY")]
    pub identity: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Write a commented nuwax.toml and create the directories nuwax uses.
    Init,
    /// Services, version, last backup and any unfinished operation.
    Status,
    /// Stop the services, archive configs, database and volumes, start the services again.
    Backup(BackupArgs),
    /// The backups in the catalog.
    List,
    /// One backup: its record and what its archive holds.
    Show { id: i64 },
    /// Read an archive back and check every byte against its checksums.
    Verify {
        #[arg(required_unless_present_any = ["all", "remote"], conflicts_with_all = ["all", "remote"])]
        id: Option<i64>,
        /// Every complete backup of the project.
        #[arg(long)]
        all: bool,
        /// Read every copy on the remotes back instead and hold it to its archive's sha256.
        #[arg(long, conflicts_with = "all")]
        remote: bool,
    },
    /// Remove a backup's archive, then its record.
    Delete { id: i64 },
    /// Finish an operation a killed nuwax left behind: start its services, mark its backup failed.
    Recover,
    /// Add an archive made elsewhere to the catalog, after verifying it.
    Import {
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        archive: Option<std::path::PathBuf>,
        /// Fetch every archive of this project that remote REMOTE holds and the catalog does not
        /// know (a site moved to a new machine with its compose files and the remote's credentials).
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
    },
    /// Make the project what a backup holds: configs, volumes, bind mounts, images.
    Rollback(RollbackArgs),
    /// Move the project to a package's version: pre-upgrade backup, apply, health gate, and an
    /// automatic rollback when it fails.
    Upgrade(UpgradeArgs),
    /// The upgrades of the project: versions, backup ids, durations, downtime, outcome.
    History,
    /// Upgrade packages.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Remove the backups the retention policy does not keep.
    Prune(PruneArgs),
    /// Scheduled backups: in the foreground, or as a systemd timer.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// The storage directory.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// The catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Check the engine, compose, storage, catalog, archives, operations and kept images.
    Doctor,
    /// The web console: a page and a JSON API for this project (backup now, download, verify,
    /// restore by upload, upgrade, history, prune), until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// The console's access token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Remotes: where copies of the backups go.
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Copy the backups the remotes' policies want and do not hold yet (pending copies included).
    Sync {
        /// Only this remote.
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8765")]
    pub listen: std::net::SocketAddr,
    /// Allow an address other than loopback (put a TLS proxy in front of it).
    #[arg(long)]
    pub allow_remote: bool,
    /// The largest archive or package taken by upload, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 65536)]
    pub max_upload: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Replace the console's token (sessions opened with the old one end) and print the new one.
    New,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// List what would go and why each kept backup stays; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the N newest backups (overrides `[retention]` in nuwax.toml).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep everything newer than this (e.g. 7d, 36h, 2w).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ScheduleCommand {
    /// Stay in the foreground: back up (kind scheduled) and prune on the schedule, until SIGTERM.
    Run {
        /// A cron expression instead of `schedule` in nuwax.toml.
        #[arg(long, value_name = "EXPR")]
        cron: Option<String>,
    },
    /// Write a systemd service and timer that run `nuwax backup` + `nuwax prune`.
    Install {
        /// Print the units instead of writing them.
        #[arg(long)]
        print: bool,
        /// Where to write them.
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        dir: PathBuf,
        /// A cron expression instead of `schedule` in nuwax.toml.
        #[arg(long, value_name = "EXPR")]
        cron: Option<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum StorageCommand {
    /// Move every archive to NEW_DIR (any filesystem), then point the catalog and nuwax.toml at it.
    Migrate { new_dir: PathBuf },
}

#[derive(Debug, Clone, Subcommand)]
pub enum CatalogCommand {
    /// Record the archives in the storage directory the catalog does not know; mark rows whose
    /// archive is gone as missing.
    Rebuild {
        /// First fetch the archives remote REMOTE holds that the storage directory lacks.
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum RemoteCommand {
    /// Add a remote to nuwax.toml (credentials go in a file or the environment, never here).
    Add(RemoteAddArgs),
    /// The remotes, and how many copies each holds or owes.
    List,
    /// Write, read back and remove a test object.
    Test { name: String },
    /// Remove a remote from nuwax.toml (its objects stay where they are).
    Remove { name: String },
}

#[derive(Debug, Clone, Args)]
pub struct RemoteAddArgs {
    pub name: String,
    /// `s3://bucket/prefix`, `sftp://user@host:port/path`, or a directory.
    pub url: String,
    /// S3: the endpoint URL (AWS's own when left out).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// S3: the region (default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// A file of KEY=VALUE lines holding the credentials (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY; SSH_KEY for SFTP).
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Which backups are copied there.
    #[arg(long, default_value = "all", value_parser = ["all", "kinds", "scheduled"])]
    pub copy: String,
    /// With --copy kinds: manual, scheduled, pre-upgrade, pre-rollback (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PackageCommand {
    /// Make a package file (.tar.zst or .tar.gz, plus OUT.sha256) from a package directory.
    Build {
        /// The directory holding nuwax-package.toml and the files it names.
        dir: PathBuf,
        /// The package file to write.
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// The package: a directory, a .tar.gz/.tar.zst/.zip of one, or an http(s):// URL.
    #[arg(long, value_name = "P")]
    pub package: String,
    /// The package file's published sha256 (else `<P>.sha256` beside it is used).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Install a version that is not newer than the running one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Leave a failed upgrade in place for inspection instead of rolling back.
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds the new version has to become healthy (default: health_timeout, else 120).
    #[arg(long, value_name = "SECS")]
    pub health_timeout: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The backup to go back to (see `nuwax list`).
    pub id: i64,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Restore volumes and bind mounts only, not configs.
    #[arg(long, conflicts_with = "config_only")]
    pub data_only: bool,
    /// Restore compose files, .env and other configs only, not data.
    #[arg(long)]
    pub config_only: bool,
    /// Restore a backup whose data was copied while services ran (`backup --no-stop`): it is
    /// not one point in time, and a database in it may need its own crash recovery.
    #[arg(long)]
    pub accept_live: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// A note stored with the backup.
    #[arg(long)]
    pub note: Option<String>,
    /// zstd (default, multithreaded), gzip or none.
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<String>,
    /// Compression level (zstd 1-19, default 1; gzip 0-9, default 6).
    #[arg(long)]
    pub level: Option<i32>,
    /// Read the data while the services keep running (faster, not crash-consistent).
    #[arg(long)]
    pub no_stop: bool,
    /// Copy in one phase while the services are stopped, and remove the snapshot (the copy kept
    /// on the storage filesystem so that only changes are copied while they are stopped).
    #[arg(long)]
    pub no_snapshot: bool,
    /// Do not talk to the Docker engine: back up config files and bind mounts only.
    #[arg(long, conflicts_with = "with_images")]
    pub no_docker: bool,
    /// Also store the services' images in the archive, for restores on another machine.
    #[arg(long)]
    pub with_images: bool,
    /// Print what the backup would do (who stops, what is dumped, each mount and whether it
    /// holds one point in time, one phase or two, the room) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The backup's kind: manual, or scheduled (what timers run).
    #[arg(long, value_name = "KIND", default_value = "manual", value_parser = ["manual", "scheduled"])]
    pub kind: String,
}
