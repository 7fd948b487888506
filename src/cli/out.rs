//! Writing to stdout and stderr without panicking when they fail: `nuwax list | head` ends
//! quietly once `head` has gone.
//!
//! `println!` panics when stdout fails, and a panic in the command's task is reported as an
//! internal error followed by a recovery pass. Rust ignores SIGPIPE, so a reader that went away
//! shows up here as `BrokenPipe`. From then on output is dropped, and the command finishes as
//! it would have, with its own exit code (0 when it succeeded): as ripgrep does, quietly. git
//! and coreutils die of SIGPIPE instead (status 141); restoring that signal's default needs
//! `libc::signal` (`unsafe_code` is forbidden here), and a signal status would hide whether a
//! command that changed something (a backup, a prune) succeeded.
//!
//! Any other stdout error (a full disk behind `> file`) also drops the rest of the output, and
//! [`finish`] turns it into the command's error, so output is never lost without a word.
//! stderr errors are ignored: there is nowhere left to report them.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first failed write to stdout; later output is dropped.
static STOPPED: AtomicBool = AtomicBool::new(false);
/// The first stdout error other than a closed pipe.
static FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// `println!` that never panics (see the module docs).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (see the module docs).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::err_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

/// Writes `args` and a newline to stdout, unless an earlier write failed.
pub(crate) fn line(args: fmt::Arguments<'_>) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        stop(e);
    }
}

/// Writes `args` and a newline to stderr, ignoring failure.
pub(crate) fn err_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

fn stop(e: io::Error) {
    STOPPED.store(true, Ordering::Relaxed);
    if e.kind() != io::ErrorKind::BrokenPipe {
        let mut failure = FAILURE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        failure.get_or_insert(e);
    }
}

/// Flushes stdout; the first write error other than a closed pipe, if there was one.
pub(crate) fn finish() -> io::Result<()> {
    if !STOPPED.load(Ordering::Relaxed)
        && let Err(e) = io::stdout().lock().flush()
    {
        stop(e);
    }
    let failure = FAILURE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    failure.map_or(Ok(()), Err)
}
