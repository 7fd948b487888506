//! Real remote servers for the offsite tests, each a process of its own on loopback, killed when
//! dropped: an S3-compatible server (examples/s3-server.rs: the `s3s-fs` crate's server, built
//! by `cargo test` with the other targets) and OpenSSH's sshd from Debian (SFTP) with a
//! throwaway host key and client key, touching no system configuration.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "nuwaxtest";
pub const SECRET_KEY: &str = "nuwaxtestsecret";
pub const BUCKET: &str = "nuwax";

/// The S3 server's binary, next to the test binary's directory (`target/<profile>/examples`).
fn s3_server_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile.join("examples/s3-server");
    assert!(
        bin.is_file(),
        "{} is not built: `cargo test` builds it (with `--test tests` alone, run `cargo build --example s3-server` first)",
        bin.display()
    );
    bin
}

pub struct S3Server {
    child: Child,
    pub root: PathBuf,
    pub addr: String,
}

impl S3Server {
    /// A server storing its objects under `root`, on `addr` (`127.0.0.1:0` for any port).
    pub fn start(root: &Path, addr: &str) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let mut child = Command::new(s3_server_bin())
            .args(["--listen", addr, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("s3-server said {line:?}"));
        S3Server { child, root: root.to_path_buf(), addr: addr.to_string() }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Killed (SIGKILL), as a crash or a pulled cable would end it.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.root.clone()
    }

    /// The files the server holds for keys under `prefix` of the bucket (objects are files).
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        let dir = self.root.join(BUCKET).join(prefix);
        let mut v: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().to_path_buf())
            .collect();
        v.sort();
        v
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The credentials file `remote add --credentials-file` points at.
pub fn s3_credentials(dir: &Path) -> PathBuf {
    let f = dir.join("s3.env");
    std::fs::write(&f, format!("AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"))
        .unwrap();
    f
}

/// OpenSSH's sshd on a loopback port, root logging in with a throwaway key, `internal-sftp`.
pub struct Sshd {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
    /// ssh's control sockets: short, since a socket path holds at most 108 bytes.
    state: PathBuf,
}

/// `Some` when sshd, ssh and ssh-keygen are here; else a loud SKIPPED (or a failure under
/// NUWAX_REQUIRE_DOCKER=1, as CI runs: it installs openssh-server).
pub fn sshd_available(test: &str) -> bool {
    let ok = super::is_root()
        && Path::new("/usr/sbin/sshd").is_file()
        && Command::new("ssh").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("NUWAX_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: not root, or no /usr/sbin/sshd or ssh (Debian openssh-server), and NUWAX_REQUIRE_DOCKER=1"
            );
        }
        eprintln!("\n*** {test}: SKIPPED (not root, or no sshd/ssh: apt-get install openssh-server) ***\n");
    }
    ok
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        for name in ["host_key", "client_key"] {
            let _ = std::fs::remove_file(dir.join(name));
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(dir.join(name))
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // The privilege separation directory sshd is built with (systemd makes it at boot).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let host: Vec<&str> = host.split_whitespace().take(2).collect();
        for _ in 0..5 {
            // sshd takes no port 0: a free one, and another try if it was taken meanwhile.
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_key\nPidFile none\nAuthorizedKeysFile {d}/authorized_keys\n\
                 AuthenticationMethods publickey\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nAllowUsers root\nAllowTcpForwarding no\n\
                 X11Forwarding no\nSubsystem sftp internal-sftp\n",
                d = dir.display()
            );
            std::fs::write(dir.join("sshd_config"), config).unwrap();
            std::fs::write(dir.join("known_hosts"), format!("[127.0.0.1]:{port} {} {}\n", host[0], host[1]))
                .unwrap();
            let log = dir.join("sshd.log");
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if std::fs::read_to_string(&log).unwrap_or_default().contains("Server listening on") {
                    let state = tempfile::Builder::new().prefix("nx").tempdir_in("/tmp").unwrap().keep();
                    return Sshd { child, dir: dir.to_path_buf(), port, state };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start: {}", std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default());
    }

    pub fn url(&self, path: &Path) -> String {
        format!("sftp://root@127.0.0.1:{}{}", self.port, path.display())
    }

    /// The credentials file: the client key.
    pub fn credentials(&self) -> PathBuf {
        let f = self.dir.join("sftp.env");
        std::fs::write(&f, format!("SSH_KEY={}\n", self.dir.join("client_key").display())).unwrap();
        f
    }

    /// What a nuwax run needs to reach this server as an operator's host would know it: an
    /// `ssh` that trusts only this server's host key (without touching ~/.ssh), and a short
    /// directory for ssh's control socket.
    pub fn env(&self) -> Vec<(String, String)> {
        let bin = self.dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let wrapper = bin.join("ssh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \"$@\"\n",
                self.dir.join("known_hosts").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        vec![("PATH".into(), path), ("XDG_STATE_HOME".into(), self.state.display().to_string())]
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
