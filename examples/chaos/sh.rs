//! Running commands: each in its own process group (a Ctrl-C at the terminal reaches the harness
//! alone, which then cleans up), with a timeout, its output kept in the run's log.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Set by the harness's first Ctrl-C (or SIGTERM): no new runs, the current ones tear down.
pub static STOP: AtomicBool = AtomicBool::new(false);

pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Still running at its timeout (then killed).
    TimedOut,
}

impl Exit {
    pub fn of(s: ExitStatus) -> Exit {
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }

    pub fn ok(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(9) => write!(f, "killed (SIGKILL)"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::TimedOut => write!(f, "timed out"),
        }
    }
}

/// The log of one run: the harness's notes and every command's output, in order.
pub struct Log {
    file: Mutex<File>,
}

impl Log {
    pub fn create(path: PathBuf) -> std::io::Result<Log> {
        let file = File::options().create(true).append(true).open(&path)?;
        Ok(Log { file: Mutex::new(file) })
    }

    /// A line from the harness (`## ` marks it apart from nuwax's output).
    pub fn note(&self, line: &str) {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "## {line}");
    }

    /// A command's output, as it printed it.
    pub fn raw(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = f.write_all(b"\n");
        }
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Out {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.exit.ok()
    }

    /// A short description for a violation or an error: the exit and the end of stderr.
    pub fn brief(&self) -> String {
        let tail: Vec<&str> = self.stderr.lines().rev().take(4).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{}: {}", self.exit, tail.join(" | "))
    }
}

/// `cmd` as one would type it.
pub fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

/// Prepares `cmd` as every child of the harness runs: its own process group, no stdin.
pub fn detach(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0).stdin(Stdio::null())
}

/// Runs `cmd` to its end (killing its group at `timeout`), logging the command and its output.
pub fn run(cmd: &mut Command, log: &Log, timeout: Duration) -> Out {
    log.note(&format!("$ {}", shown(cmd)));
    let started = Instant::now();
    let child = detach(cmd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log.note(&format!("cannot start: {e}"));
            return Out { exit: Exit::Code(127), stdout: String::new(), stderr: e.to_string(), secs: 0.0 };
        }
    };
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let exit = wait(&mut child, timeout, || false).unwrap_or(Exit::TimedOut);
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let secs = started.elapsed().as_secs_f64();
    // Logs (stderr) come before the result (stdout) in time, mostly.
    log.raw(&stderr);
    log.raw(&stdout);
    log.note(&format!("{exit} after {secs:.1} s"));
    Out { exit, stdout, stderr, secs }
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for `child` up to `timeout`; kills its process group at the timeout or when `abort`
/// says so, and returns `None` then.
pub fn wait(child: &mut Child, timeout: Duration, abort: impl Fn() -> bool) -> Option<Exit> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(Exit::of(s)),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline || abort() {
            kill_group(child);
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn pid(child: &Child) -> Option<Pid> {
    Pid::from_raw(child.id() as i32)
}

/// SIGKILL to the child's process group (it leads its own group: see [`detach`]).
pub fn kill_group(child: &Child) {
    if let Some(p) = pid(child) {
        let _ = rustix::process::kill_process_group(p, Signal::KILL);
    }
}

/// Whether `path` exists (without following a final symlink).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
