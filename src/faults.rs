//! Test-only fault injection, in one place: every point where a test makes nuwax crash, fail,
//! signal itself or slow down is named here, and the flows call these functions at those
//! points. Compiled into debug builds (what `cargo test` runs) and into release builds only
//! with the `fault-injection` feature; otherwise every function is a no-op.

/// Where a test can make nuwax abort (as a SIGKILL or power loss would), with
/// `NUWAX_TEST_CRASH=<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// A prune removed an archive and dies before removing its row.
    PruneAfterFile,
    /// A prune (or delete) removed an archive and its row and dies before releasing its
    /// image tags.
    PruneAfterRow,
    /// A failed rollback journaled its way back and dies before taking it.
    RollbackWhileUndoing,
    /// A rollback finished its swap (phase `swapped`) and dies before starting anything.
    RollbackAfterSwap,
    /// A rollback started a database server on its fresh data and dies loading its first dump.
    RollbackWhileLoading,
    /// An upgrade started a reloaded database's new server and dies loading its first dump.
    UpgradeWhileLoading,
}

/// Where a test can make nuwax fail with an error, with `NUWAX_TEST_FAIL=<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Everything was replaced; the rollback fails before it is done, to prove the way back.
    RollbackAfterSwap,
}

/// Where a test can make nuwax send SIGINT to its own process group, as a terminal's Ctrl-C
/// does, with `NUWAX_TEST_SIGINT=<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sigint {
    /// Right after a rollback's swap, before the services are created again.
    RollbackAfterSwap,
    /// While the automatic rollback of a failed upgrade runs.
    UpgradeRollingBack,
    /// During an upgrade's preflight, once the package is open.
    UpgradePreflight,
}

/// Where a test can hold nuwax, with `NUWAX_TEST_PAUSE=<name>` and `NUWAX_TEST_PAUSE_FILE=F`:
/// nuwax writes its pid to F and waits until the test removes F (or kills nuwax there), so the
/// test can change the data, or kill, at an exact point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// A backup finished its copy while running; nothing is stopped yet.
    BackupAfterPrecopy,
    /// A two-phase backup stopped the services; the copy of what changed has not begun.
    BackupStopped,
    /// A backup's services run again and its dumps are started, not yet read.
    BackupDumpsStarted,
    /// A rollback staged the backup and copied its safety backup while running; nothing stopped.
    RollbackBeforeStop,
    /// A rollback is done and the services run again; its safety backup's archive is not written.
    RollbackSafetyArchive,
    /// An upgrade copied its pre-upgrade backup while running; nothing stopped.
    UpgradeBeforeStop,
    /// An upgrade's new version passed its gate and runs; the pre-upgrade archive is not written.
    UpgradeBackupArchive,
}

impl Pause {
    fn name(self) -> &'static str {
        match self {
            Pause::BackupAfterPrecopy => "backup-after-precopy",
            Pause::BackupStopped => "backup-stopped",
            Pause::BackupDumpsStarted => "backup-dumps-started",
            Pause::RollbackBeforeStop => "rollback-before-stop",
            Pause::RollbackSafetyArchive => "rollback-safety-archive",
            Pause::UpgradeBeforeStop => "upgrade-before-stop",
            Pause::UpgradeBackupArchive => "upgrade-backup-archive",
        }
    }
}

impl Crash {
    fn name(self) -> &'static str {
        match self {
            Crash::PruneAfterFile => "prune-after-file",
            Crash::PruneAfterRow => "prune-after-row",
            Crash::RollbackWhileUndoing => "rollback-while-undoing",
            Crash::RollbackAfterSwap => "rollback-after-swap",
            Crash::RollbackWhileLoading => "rollback-while-loading",
            Crash::UpgradeWhileLoading => "upgrade-while-loading",
        }
    }
}

impl Fail {
    fn name(self) -> &'static str {
        match self {
            Fail::RollbackAfterSwap => "rollback-after-swap",
        }
    }
}

impl Sigint {
    fn name(self) -> &'static str {
        match self {
            Sigint::RollbackAfterSwap => "rollback-after-swap",
            Sigint::UpgradeRollingBack => "upgrade-rolling-back",
            Sigint::UpgradePreflight => "upgrade-preflight",
        }
    }
}

#[cfg(any(debug_assertions, feature = "fault-injection"))]
fn armed(var: &str, name: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == name)
}

#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
fn armed(_var: &str, _name: &str) -> bool {
    false
}

/// Whether the test armed `point` (for a flow that must prepare the moment of the crash).
pub fn crash_armed(point: Crash) -> bool {
    armed("NUWAX_TEST_CRASH", point.name())
}

/// Aborts the process when the test armed `point`.
pub fn crash(point: Crash) {
    if armed("NUWAX_TEST_CRASH", point.name()) {
        eprintln!("nuwax: NUWAX_TEST_CRASH={}: aborting", point.name());
        std::process::abort();
    }
}

/// Fails when the test armed `point`.
pub fn fail(point: Fail) -> anyhow::Result<()> {
    if armed("NUWAX_TEST_FAIL", point.name()) {
        anyhow::bail!("injected failure at {} (NUWAX_TEST_FAIL)", point.name());
    }
    Ok(())
}

/// Sends SIGINT to this process's group when the test armed `point`, and waits a moment for
/// it to arrive: the Ctrl-C a terminal sends to every process of the foreground group.
pub fn sigint(point: Sigint) {
    if armed("NUWAX_TEST_SIGINT", point.name()) {
        let group = rustix::process::getpgrp();
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::INT);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Waits at `point` while the test holds it (at most two minutes).
pub async fn pause(point: Pause) {
    if !armed("NUWAX_TEST_PAUSE", point.name()) {
        return;
    }
    let Ok(file) = std::env::var("NUWAX_TEST_PAUSE_FILE") else { return };
    let _ = std::fs::write(&file, std::process::id().to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::path::Path::new(&file).exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Bytes per second to slow archiving, extraction and copies down to (`NUWAX_RATE_LIMIT`), so
/// that tests can signal or kill nuwax in the middle of them.
pub fn rate_limit() -> Option<u64> {
    if !cfg!(any(debug_assertions, feature = "fault-injection")) {
        return None;
    }
    std::env::var("NUWAX_RATE_LIMIT").ok().and_then(|v| v.parse().ok()).filter(|r| *r > 0)
}
