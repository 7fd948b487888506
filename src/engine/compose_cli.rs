//! Which compose CLI is installed: v2 (`docker compose`) or v1 (`docker-compose`). Detected by
//! asking each, never assumed; always run as an argument vector, never through a shell.

use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComposeCli {
    /// The program and leading arguments: `["docker", "compose"]` or `["docker-compose"]`.
    pub command: Vec<String>,
    /// 1 or 2.
    pub major: u8,
    pub version: String,
}

impl ComposeCli {
    /// v2 first (what most users have), then v1. `None` when neither answers.
    pub fn detect() -> Option<ComposeCli> {
        let candidates: [(&[&str], u8); 2] = [(&["docker", "compose"], 2), (&["docker-compose"], 1)];
        for (cmd, default_major) in candidates {
            let out = Command::new(cmd[0]).args(&cmd[1..]).args(["version", "--short"]).output();
            if let Ok(out) = out
                && out.status.success()
            {
                let version = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('v').to_string();
                let major = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(default_major);
                return Some(ComposeCli {
                    command: cmd.iter().map(|s| s.to_string()).collect(),
                    major,
                    version,
                });
            }
        }
        None
    }

    /// A `Command` for `compose -p PROJECT -f FILE... ARGS`, run in `dir`.
    pub fn command(
        &self,
        dir: &std::path::Path,
        project: &str,
        files: &[std::path::PathBuf],
        args: &[&str],
    ) -> Command {
        let mut c = Command::new(&self.command[0]);
        c.args(&self.command[1..]).current_dir(dir).arg("-p").arg(project);
        for f in files {
            c.arg("-f").arg(f);
        }
        c.args(args);
        c
    }

    pub fn display(&self) -> String {
        format!("{} (v{})", self.command.join(" "), self.version)
    }
}
