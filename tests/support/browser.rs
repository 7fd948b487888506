//! A headless Chromium driven through chromedriver (WebDriver, with fantoccini), for the web
//! console's tests. Each [`Browser`] has its own chromedriver on a free loopback port, its own
//! profile and download dir, and is killed (chromedriver's whole process group, Chromium with
//! it) when dropped, also when the test panics.
//!
//! Without `chromium` or `chromedriver` on PATH the tests print a loud SKIPPED and pass, unless
//! NUWAX_REQUIRE_BROWSER=1 (CI installs both and sets it): then they fail.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The programs a browser test needs.
pub struct Tools {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `Some(tools)` when chromium and chromedriver are installed; otherwise a loud SKIPPED and
/// `None`, or a panic when NUWAX_REQUIRE_BROWSER=1.
pub fn tools(test: &str) -> Option<Tools> {
    if let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver")) {
        return Some(Tools { chromium, chromedriver });
    }
    let why = "no chromium/chromedriver (apt-get install chromium chromium-driver)";
    if std::env::var("NUWAX_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}, and NUWAX_REQUIRE_BROWSER=1");
    }
    let _ = writeln!(std::io::stderr(), "\n*** {test}: SKIPPED ({why}) ***\n");
    None
}

/// Runs the test body only with chromium and chromedriver installed; see [`tools`].
#[macro_export]
macro_rules! require_browser {
    () => {
        match $crate::support::browser::tools(module_path!()) {
            Some(t) => t,
            None => return,
        }
    };
}

/// The flags that keep Chromium quiet on a closed network: without the background networking
/// ones its start-up connections are refused and it stalls.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// A Chromium session; `c` is the WebDriver client.
pub struct Browser {
    pub c: Client,
    driver: Child,
    /// Where the browser saves downloads.
    pub downloads: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium with a `width` x `height` window.
    pub async fn start(tools: &Tools, width: u32, height: u32) -> Browser {
        let profile = tempfile::Builder::new().prefix("nuwax-chromium-").tempdir().unwrap();
        let downloads = tempfile::Builder::new().prefix("nuwax-downloads-").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let mut cmd = Command::new(&tools.chromedriver);
        cmd.arg(format!("--port={port}")).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // Its own process group: Drop kills chromedriver and the Chromium it started together.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().unwrap();
        let user_data = format!("--user-data-dir={}", profile.path().join("profile").display());
        let size = format!("--window-size={width},{height}");
        let args: Vec<&str> = FLAGS.iter().copied().chain([user_data.as_str(), size.as_str()]).collect();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                },
            },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        // chromedriver needs a moment before it listens.
        let c = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    let log =
                        std::fs::read_to_string(profile.path().join("chromedriver.log")).unwrap_or_default();
                    assert!(Instant::now() < deadline, "no WebDriver session: {e}\nchromedriver log:\n{log}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let b = Browser { c, driver, downloads, _profile: profile };
        b.viewport(width, height).await;
        b
    }

    /// Sizes the window so that the page gets `width` x `height` (the window's own frame,
    /// even headless, takes some of its height).
    pub async fn viewport(&self, width: u32, height: u32) {
        self.c.set_window_size(width, height).await.unwrap();
        let inner = self.js("return [window.innerWidth, window.innerHeight]", vec![]).await;
        let (w, h) = (inner[0].as_u64().unwrap() as u32, inner[1].as_u64().unwrap() as u32);
        self.c.set_window_size(2 * width - w, 2 * height - h).await.unwrap();
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub async fn close(self) {
        let _ = self.c.clone().close().await;
    }

    /// Runs `script` (a function body; `arguments[0..]` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.c.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Whether an element matches `css` and is displayed.
    pub async fn shown(&self, css: &str) -> bool {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        let v = self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            vec![json!(css)],
        );
        v.await.as_str().unwrap_or_default().to_string()
    }

    /// Attribute `name` of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let e = self.c.find(Locator::Css(css)).await.ok()?;
        e.attr(name).await.ok().flatten()
    }

    /// Waits until `css` is displayed, then clicks it.
    pub async fn click(&self, css: &str) {
        self.until(&format!("{css} shown"), 30, || async { self.shown(css).await.then_some(()) }).await;
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Waits until `check` returns `Some`, polling; panics after `secs` with what the page
    /// shows (the operation panel and any messages) and a screenshot in target/.
    pub async fn until<T, F, Fut>(&self, what: &str, secs: u64, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() > deadline {
                let shot = crate::support::repo().join("target/nuwax-console-failure.png");
                if let Ok(png) = self.c.screenshot().await {
                    let _ = std::fs::write(&shot, png);
                }
                let page = self.text("body").await;
                panic!("waited {secs} s for {what}; screenshot {}; the page says:\n{page}", shot.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the operation panel to show the end of an operation; returns its status
    /// (`succeeded`, `failed`, `rolled-back`).
    pub async fn operation_done(&self, secs: u64) -> String {
        self.until("the operation to end", secs, || async {
            let s = self.attr("#op", "data-status").await?;
            (s != "running").then_some(s)
        })
        .await
    }

    /// Saves a screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.c.screenshot().await.unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Waits for a finished download: a file that is not Chromium's temp file (`*.crdownload`,
    /// hidden ones) and whose size stayed the same between two looks; its path.
    pub async fn downloaded(&self, secs: u64) -> PathBuf {
        let dir = self.downloads.path().to_path_buf();
        let last = std::cell::Cell::new(None::<(PathBuf, u64)>);
        self.until("the download", secs, || {
            let seen = last.take();
            let now = std::fs::read_dir(&dir).ok().and_then(|d| {
                let done = d.flatten().find(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    !name.starts_with('.') && !name.ends_with(".crdownload")
                })?;
                Some((done.path(), done.metadata().ok()?.len()))
            });
            last.set(now.clone());
            let stable = now.filter(|n| n.1 > 0 && seen.as_ref() == Some(n)).map(|n| n.0);
            async move { stable }
        })
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.driver.id() as i32);
        if let Some(group) = pid {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}
