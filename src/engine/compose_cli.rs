//! Which compose CLI nuwax runs: v2 (`docker compose`) or v1 (`docker-compose`), as the operator
//! chose it (`NUWAX_COMPOSE`, `compose_cli` in nuwax.toml) or, by default, detected by asking
//! each, never assumed. Always run as an argument vector, never through a shell.

use std::process::Command;

/// The environment variable that chooses the compose CLI; it wins over nuwax.toml.
pub const ENV: &str = "NUWAX_COMPOSE";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComposeCli {
    /// The program and leading arguments: `["docker", "compose"]` or `["docker-compose"]`.
    pub command: Vec<String>,
    /// 1 or 2.
    pub major: u8,
    pub version: String,
}

/// The compose CLI asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Want {
    /// v2 first, then v1: whichever answers.
    Auto,
    V2,
    V1,
}

impl Want {
    fn parse(s: &str) -> Option<Want> {
        match s.trim() {
            "auto" => Some(Want::Auto),
            "v2" | "2" => Some(Want::V2),
            "v1" | "1" => Some(Want::V1),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Want::Auto => "auto",
            Want::V2 => "v2",
            Want::V1 => "v1",
        }
    }
}

/// What the operator asked for, and where they said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ComposeChoice {
    pub want: Want,
    /// `NUWAX_COMPOSE`, `nuwax.toml`, or `default`.
    pub from: &'static str,
}

/// The compose CLI asked for is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeMissing {
    #[error("neither `docker compose` (compose v2) nor `docker-compose` (compose v1) answers")]
    Neither,
    #[error("{said} asks for compose {want}, and {detail}")]
    Chosen { said: String, want: &'static str, detail: String },
}

impl ComposeChoice {
    /// `env` (NUWAX_COMPOSE) over `setting` (`compose_cli` in nuwax.toml) over `auto`. An
    /// empty `env` counts as unset. The error names the value that is not `auto`, `v2` or `v1`.
    pub fn new(env: Option<&str>, setting: Option<&str>) -> Result<ComposeChoice, String> {
        let (value, from) = match (env.filter(|v| !v.trim().is_empty()), setting) {
            (Some(v), _) => (v, ENV),
            (None, Some(v)) => (v, "nuwax.toml"),
            (None, None) => return Ok(ComposeChoice { want: Want::Auto, from: "default" }),
        };
        match Want::parse(value) {
            Some(want) => Ok(ComposeChoice { want, from }),
            None => Err(format!("{}: {value:?} is not a compose CLI: use auto, v2 or v1", Self::key(from))),
        }
    }

    /// The choice read from the environment and `setting`, for [`Project`](crate::project::Project).
    pub fn from_env(setting: Option<&str>) -> Result<ComposeChoice, String> {
        ComposeChoice::new(std::env::var(ENV).ok().as_deref(), setting)
    }

    /// A fixed choice (tests, and callers that must not read the environment).
    pub fn forced(want: Want) -> ComposeChoice {
        ComposeChoice { want, from: ENV }
    }

    fn key(from: &str) -> &'static str {
        if from == ENV { ENV } else { "compose_cli in nuwax.toml" }
    }

    /// How the CLI is picked, for status and doctor: `detected (v2 first, then v1)` or
    /// `chosen by NUWAX_COMPOSE=v1`.
    pub fn how(&self) -> String {
        match self.want {
            Want::Auto => "detected (v2 first, then v1)".into(),
            _ => format!("chosen by {}", self.said()),
        }
    }

    /// Where the choice was said: `NUWAX_COMPOSE=v1` or `compose_cli = "v1" in nuwax.toml`.
    fn said(&self) -> String {
        if self.from == ENV {
            format!("{ENV}={}", self.want.as_str())
        } else {
            format!("compose_cli = \"{}\" in nuwax.toml", self.want.as_str())
        }
    }

    /// The one place the choice is applied: the CLI nuwax runs, or why there is none. A chosen
    /// CLI that is missing (or is not the major version asked for) is an error, never a silent
    /// fallback to the other one.
    pub fn select(&self) -> Result<ComposeCli, ComposeMissing> {
        let (cmd, major): (&[&str], u8) = match self.want {
            Want::Auto => return ComposeCli::detect().ok_or(ComposeMissing::Neither),
            Want::V2 => (&["docker", "compose"], 2),
            Want::V1 => (&["docker-compose"], 1),
        };
        let missing =
            |detail: String| ComposeMissing::Chosen { said: self.said(), want: self.want.as_str(), detail };
        let cli = ComposeCli::probe(cmd, major).map_err(missing)?;
        if cli.major != major {
            return Err(missing(format!("`{}` is compose {}", cmd.join(" "), cli.version)));
        }
        Ok(cli)
    }
}

impl ComposeCli {
    /// v2 first (what most users have), then v1. `None` when neither answers.
    pub fn detect() -> Option<ComposeCli> {
        let candidates: [(&[&str], u8); 2] = [(&["docker", "compose"], 2), (&["docker-compose"], 1)];
        candidates.into_iter().find_map(|(cmd, major)| ComposeCli::probe(cmd, major).ok())
    }

    /// Asks `cmd version --short`; the error says why it did not answer.
    fn probe(cmd: &[&str], default_major: u8) -> Result<ComposeCli, String> {
        let shown = cmd.join(" ");
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .args(["version", "--short"])
            .output()
            .map_err(|e| format!("`{shown}` cannot be run: {e}"))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim();
            return Err(format!("`{shown} version` fails ({}): {why}", out.status));
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches('v').to_string();
        let major = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(default_major);
        Ok(ComposeCli { command: cmd.iter().map(|s| s.to_string()).collect(), major, version })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_over_nuwax_toml_over_auto() {
        let c = |env, setting| ComposeChoice::new(env, setting);
        assert_eq!(c(None, None), Ok(ComposeChoice { want: Want::Auto, from: "default" }));
        assert_eq!(c(None, Some("v1")), Ok(ComposeChoice { want: Want::V1, from: "nuwax.toml" }));
        assert_eq!(c(Some("v2"), Some("v1")), Ok(ComposeChoice { want: Want::V2, from: ENV }));
        assert_eq!(c(Some(""), Some("v1")).unwrap().want, Want::V1);
        assert_eq!(c(Some("auto"), Some("v1")).unwrap().want, Want::Auto);
        let e = c(Some("docker-compose"), None).unwrap_err();
        assert!(e.contains("NUWAX_COMPOSE") && e.contains("\"docker-compose\""), "{e}");
        let e = c(None, Some("3")).unwrap_err();
        assert!(e.contains("compose_cli in nuwax.toml"), "{e}");
    }

    #[test]
    fn how_says_chosen_or_detected() {
        assert_eq!(ComposeChoice::forced(Want::V1).how(), "chosen by NUWAX_COMPOSE=v1");
        let toml = ComposeChoice { want: Want::V2, from: "nuwax.toml" };
        assert_eq!(toml.how(), "chosen by compose_cli = \"v2\" in nuwax.toml");
        assert_eq!(ComposeChoice { want: Want::Auto, from: ENV }.how(), "detected (v2 first, then v1)");
    }
}
