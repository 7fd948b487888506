//! `nuwax serve` against a real engine: a real server process on loopback, spoken to over
//! HTTP as a script or the page would (ureq), checking what a user would: who gets in, that a
//! backup started from the API is the catalog's, that uploads and rollbacks are guarded, and
//! that the console and the CLI share one lock.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::require_docker;
use crate::support::{Demo, json, stderr};

/// A `nuwax serve` of the demo on a free loopback port; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub login: String,
    pub token: String,
}

impl Server {
    pub fn start(demo: &Demo, env: &[(&str, &str)]) -> Server {
        let mut cmd = demo.nuwax();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let login = loop {
            assert!(Instant::now() < deadline, "nuwax serve printed no login URL");
            let line = lines.next().expect("nuwax serve ended before it printed its login URL").unwrap();
            if let Some(url) = line.strip_prefix("log in: ") {
                break url.to_string();
            }
        };
        // Keep reading its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let base = login.split("/login").next().unwrap().to_string();
        let token = login.split("token=").nth(1).unwrap().to_string();
        Server { child, base, login, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into()
    }

    /// GET with the bearer token: (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let mut res =
            Self::agent().get(self.url(path)).header("Authorization", &self.bearer()).call().unwrap();
        (res.status().as_u16(), json_of(&mut res))
    }

    /// POST of `body` (JSON) with the bearer token.
    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let mut res = Self::agent()
            .post(self.url(path))
            .header("Authorization", &self.bearer())
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        (res.status().as_u16(), json_of(&mut res))
    }

    /// POST of a file's bytes (an upload).
    pub fn upload(&self, path: &str, file: &Path) -> (u16, serde_json::Value) {
        let bytes = std::fs::read(file).unwrap();
        let mut res = Self::agent()
            .post(self.url(path))
            .header("Authorization", &self.bearer())
            .header("Content-Type", "application/octet-stream")
            .header("X-Nuwax-Filename", file.file_name().unwrap().to_str().unwrap())
            .send(&bytes[..])
            .unwrap();
        (res.status().as_u16(), json_of(&mut res))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Waits until operation `id` ended; returns it.
    pub fn wait(&self, id: &serde_json::Value) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (code, op) = self.get(&format!("/api/operations/{id}"));
            assert_eq!(code, 200, "{op}");
            if op["status"] != "running" {
                return op;
            }
            assert!(Instant::now() < deadline, "operation {id} still running: {op}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response's JSON body (`null` when it has none).
fn json_of(res: &mut ureq::http::Response<ureq::Body>) -> serde_json::Value {
    let text = res.body_mut().read_to_string().unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn only_the_token_gets_in_and_a_backup_from_the_api_is_the_catalogs() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let server = Server::start(&demo, &[]);
    let agent = Server::agent();

    // Without the token, or with a wrong one: 401, and nothing happens.
    let res = agent.get(server.url("/api/status")).call().unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res =
        agent.post(server.url("/api/backups")).header("Authorization", "Bearer wrong").send_empty().unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = agent.get(server.url("/login?token=wrong")).call().unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert!(res.headers().get("set-cookie").is_none());

    // The login URL opens a session: an HttpOnly, SameSite=Strict cookie, and a redirect.
    let res = agent.get(&server.login).call().unwrap();
    assert_eq!(res.status().as_u16(), 303);
    let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let mut res = agent.get(server.url("/api/session")).header("Cookie", &session).call().unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let csrf = json_of(&mut res)["csrf"].as_str().unwrap().to_string();
    // A cookie alone may read, not change: without the CSRF token the backup is refused.
    let res = agent.post(server.url("/api/backups")).header("Cookie", &session).send_empty().unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let res = agent
        .post(server.url("/api/backups"))
        .header("Cookie", &session)
        .header("X-Nuwax-CSRF", "forged")
        .send_empty()
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert!(demo.list().is_empty(), "refused requests changed nothing");

    // With it (as the page sends it): a backup, followed to its end by its events.
    let mut res = agent
        .post(server.url("/api/backups"))
        .header("Cookie", &session)
        .header("X-Nuwax-CSRF", &csrf)
        .header("Content-Type", "application/json")
        .send(r#"{"note": "from the console"}"#)
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let started = json_of(&mut res);
    let id = &started["operation"];
    let mut events = String::new();
    let res = agent
        .get(server.url(&format!("/api/operations/{id}/events")))
        .header("Authorization", &server.bearer())
        .call()
        .unwrap();
    res.into_body().into_reader().read_to_string(&mut events).unwrap();
    assert!(events.contains("event: log") && events.contains("event: progress"), "{events}");
    assert!(
        events.trim_end().lines().rev().any(|l| l == "event: done"),
        "the stream ends with done: {events}"
    );
    let op = server.wait(id);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert!(op["log"].to_string().contains("backup started"), "{op}");
    let backup = &op["result"];
    assert_eq!(backup["status"], "complete");
    demo.wait_healthy(&["db", "app", "worker"]);

    // The catalog has it, as the CLI sees it, and the download is its archive, byte for byte.
    let list = demo.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], backup["id"]);
    assert_eq!(list[0]["note"], "from the console");
    let (code, api_list) = server.get("/api/backups");
    assert_eq!((code, api_list[0]["checksum"].clone()), (200, list[0]["checksum"].clone()));
    let mut res = agent
        .get(server.url(&format!("/api/backups/{}/download", backup["id"])))
        .header("Authorization", &server.bearer())
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let disposition = res.headers().get("content-disposition").unwrap().to_str().unwrap().to_string();
    assert!(disposition.starts_with("attachment; filename=\"backup_manual_v1_"), "{disposition}");
    let body = res.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
    assert_eq!(sha256_hex(&body), list[0]["checksum"].as_str().unwrap());
    // Range: the middle of the file, as a resumed download asks for it.
    let mut res = agent
        .get(server.url(&format!("/api/backups/{}/download", backup["id"])))
        .header("Authorization", &server.bearer())
        .header("Range", "bytes=100-199")
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 206);
    assert_eq!(res.body_mut().read_to_vec().unwrap(), body[100..200]);

    // Verify runs as an operation too.
    let (code, v) = server.post(&format!("/api/backups/{}/verify", backup["id"]), serde_json::json!({}));
    assert_eq!(code, 202, "{v}");
    let op = server.wait(&v["operation"]);
    assert_eq!(
        (op["status"].as_str(), op["result"]["ok"].as_bool()),
        (Some("succeeded"), Some(true)),
        "{op}"
    );
}

/// A format 1 archive whose checksums are right but which holds a hard link to /etc/passwd in
/// its one volume: it verifies, and must still be refused.
fn hostile_archive(path: &Path) {
    use crate::extract::{Data, craft_manifest, header, meta};
    use nuwax::archive::manifest::{Access, MountKind, MountRecord};
    use nuwax::archive::{Compression, EntryKind};
    let dir = meta("volumes/x", EntryKind::Dir, 0, None);
    let link = meta("volumes/x/passwd", EntryKind::File, 0, Some("/etc/passwd"));
    let mut m = crate::support::manifest(1, vec![dir.clone(), link.clone()], Compression::Zstd);
    m.mounts.push(MountRecord {
        kind: MountKind::Volume,
        name: "x".into(),
        source: "/nonexistent".into(),
        destinations: vec!["app:/x".into()],
        archive_path: "volumes/x".into(),
        access: Access::Host,
        size: 0,
        file_count: 1,
        running: Vec::new(),
    });
    let members = vec![
        (header(&dir, tar::EntryType::Directory, 0), Data::Bytes(Vec::new())),
        (header(&link, tar::EntryType::Link, 0), Data::Bytes(Vec::new())),
    ];
    craft_manifest(path, Compression::Zstd, &m, members);
}

#[test]
fn uploads_are_checked_before_anything_and_a_rollback_needs_a_confirmation() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let out = demo.run(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = json(&out);
    let archive = std::path::PathBuf::from(b["path"].as_str().unwrap());
    let uploads = demo.dir.join("uploads");
    std::fs::write(uploads.join("marker"), "after the backup").unwrap();
    let server = Server::start(&demo, &[]);
    let tmp = tempfile::tempdir().unwrap();

    // A hostile archive (checksums right, a hard link out of its volume) and garbage are refused
    // with the reason, and nothing is recorded.
    let hostile = tmp.path().join("hostile.tar.zst");
    hostile_archive(&hostile);
    let (code, e) = server.upload("/api/imports", &hostile);
    assert_eq!(code, 422, "{e}");
    assert!(e["error"].as_str().unwrap().contains("hard link"), "{e}");
    assert!(e["error"].as_str().unwrap().contains("the upload hostile.tar.zst"), "{e}");
    let junk = tmp.path().join("junk.tar.zst");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let (code, e) = server.upload("/api/imports", &junk);
    assert_eq!((code, e["exit_code"].as_u64()), (422, Some(7)), "{e}");
    assert_eq!(demo.list().len(), 1, "nothing recorded");
    let state = demo.dir.join(".nuwax/uploads");
    assert!(std::fs::read_dir(&state).unwrap().next().is_none(), "no upload left behind");

    // The backup's own archive, uploaded, is a new backup holding the same data.
    let (code, imported) = server.upload("/api/imports", &archive);
    assert_eq!(code, 200, "{imported}");
    let id = imported["record"]["id"].clone();
    assert_eq!(imported["record"]["checksum"], b["checksum"]);

    // Its plan says what the restore replaces; without a confirmation nothing runs.
    let (code, plan) = server.get(&format!("/api/backups/{id}/plan"));
    assert_eq!(code, 200, "{plan}");
    assert_eq!(plan["backup_id"], id);
    let started = demo.started_at();
    let (code, e) = server.post(&format!("/api/backups/{id}/rollback"), serde_json::json!({}));
    assert_eq!((code, e["exit_code"].as_u64()), (400, Some(10)), "{e}");
    let (code, _) =
        server.post(&format!("/api/backups/{id}/rollback"), serde_json::json!({"confirm": false}));
    assert_eq!(code, 400);
    assert_eq!(demo.started_at(), started, "nothing was stopped");
    assert!(uploads.join("marker").exists());

    // Confirmed: the data is what the backup holds, the services run.
    let (code, r) = server.post(&format!("/api/backups/{id}/rollback"), serde_json::json!({"confirm": true}));
    assert_eq!(code, 202, "{r}");
    let op = server.wait(&r["operation"]);
    assert_eq!(op["status"], "succeeded", "{op}");
    assert!(!uploads.join("marker").exists(), "the file made after the backup is gone");
    demo.wait_healthy(&["db", "app", "worker"]);
    let (_, status) = server.get("/api/status");
    let running = status["services"].as_array().unwrap().iter().filter(|s| s["state"] == "running").count();
    assert_eq!(running, 3, "{status}");
}

#[test]
fn the_console_and_the_cli_share_one_lock() {
    let demo = Demo::new(require_docker!());
    demo.up();
    // The console's backup is slowed down, so the CLI meets it running.
    let server = Server::start(&demo, &[("NUWAX_RATE_LIMIT", "1")]);
    std::fs::write(demo.dir.join("uploads/slow.bin"), vec![1u8; 64 * 1024]).unwrap();
    let (code, r) = server.post("/api/backups", serde_json::json!({}));
    assert_eq!(code, 202, "{r}");
    let out = demo.run(&["backup"]);
    assert_eq!(out.status.code(), Some(3), "the CLI is refused: {}", stderr(&out));
    assert!(stderr(&out).contains("another nuwax operation is running"), "{}", stderr(&out));
    let (code, e) = server.post("/api/backups", serde_json::json!({}));
    assert_eq!((code, e["exit_code"].as_u64()), (409, Some(3)), "{e}");
    assert!(e["error"].as_str().unwrap().contains("another nuwax operation is running"), "{e}");
    drop(server);
    // Killed mid-backup: the next command (a CLI one) recovers it, and the services run.
    let out = demo.run(&["--json", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    demo.wait_healthy(&["db", "app", "worker"]);
    assert!(json(&out).as_array().unwrap().iter().all(|r| r["status"] != "pending"), "{}", json(&out));
}

/// Starts a console backup held inside its stop (services down); returns the server and the
/// pause file that holds it.
fn backup_held_in_its_stop(demo: &Demo, tmp: &Path) -> (Server, std::path::PathBuf) {
    let pause = tmp.join("pause");
    let env = [("NUWAX_TEST_PAUSE", "backup-stopped"), ("NUWAX_TEST_PAUSE_FILE", pause.to_str().unwrap())];
    let server = Server::start(demo, &env);
    let (code, r) = server.post("/api/backups", serde_json::json!({}));
    assert_eq!(code, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pause.exists() {
        assert!(Instant::now() < deadline, "the backup never reached its stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(demo.state_of("db").starts_with("exited"), "{:?}", demo.states());
    (server, pause)
}

#[test]
fn sigterm_ends_the_console_after_its_operation_started_what_it_stopped() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, pause) = backup_held_in_its_stop(&demo, tmp.path());
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    std::fs::remove_file(&pause).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "nuwax serve did not end after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    // It ended only once the services ran again; the backup is failed, nothing half written.
    let states = demo.states();
    assert!(states.iter().all(|(_, s)| s.starts_with("running")), "{states:?}");
    let list = demo.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "failed", "{list:?}");
    assert!(
        !demo.storage_files().iter().any(|f| f.starts_with("backup_") || f.starts_with(".nuwax-partial"))
    );
}

#[test]
fn a_console_killed_in_a_stop_is_recovered_when_it_starts_again() {
    let demo = Demo::new(require_docker!());
    demo.up();
    let tmp = tempfile::tempdir().unwrap();
    let (server, pause) = backup_held_in_its_stop(&demo, tmp.path());
    drop(server); // SIGKILL
    std::fs::remove_file(&pause).unwrap();
    assert!(demo.state_of("db").starts_with("exited"), "{:?}", demo.states());
    // The next console recovers before it offers anything.
    let server = Server::start(&demo, &[]);
    demo.wait_healthy(&["db", "app", "worker"]);
    let (_, status) = server.get("/api/status");
    assert_eq!(status["unfinished_operations"], serde_json::json!([]), "{status}");
    let (_, list) = server.get("/api/backups");
    assert_eq!(list[0]["status"], "failed", "{list}");
}
