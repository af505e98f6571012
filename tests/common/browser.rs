//! A real browser for tests: headless Chromium (Debian `chromium`, which
//! scripts/deps installs) driven over its DevTools protocol. Every console
//! error, uncaught exception and failed load the page reports is kept, so a
//! test can fail on any.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Console errors, exceptions and failed loads, as reported.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin"] {
            let path = Path::new(dir).join(name);
            if path.exists() {
                return path;
            }
        }
    }
    panic!("no chromium in /usr/bin: run scripts/deps (it installs Debian's chromium)");
}

impl Browser {
    /// Starts Chromium on a blank page, `width` x `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Self {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        // its own process group, so that its helpers go with it
        let child = Command::new(chromium())
            .process_group(0)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        // Chromium writes the port it picked into the profile
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium never opened its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let targets: Value = loop {
            let list = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            match list {
                Some(l)
                    if l.as_array()
                        .is_some_and(|a| a.iter().any(|t| t["type"] == "page")) =>
                {
                    break l
                }
                _ => {
                    assert!(Instant::now() < deadline, "chromium lists no page");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap();
        let url = page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (socket, _) = tungstenite::connect(url).expect("connecting to the page's DevTools");
        let mut browser = Self {
            child,
            socket,
            next_id: 1,
            errors: Vec::new(),
            _profile: profile,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    fn note(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", params["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", params["exceptionDetails"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", params["entry"]));
            }
            _ => {}
        }
    }

    /// Calls a DevTools method and returns its result (panics on an error).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(request.to_string()))
            .expect("sending to DevTools");
        loop {
            let message = self.socket.read().expect("reading from DevTools");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["id"] == id {
                assert!(
                    value["error"].is_null(),
                    "{method} failed: {}",
                    value["error"]
                );
                return value["result"].clone();
            }
            self.note(&value);
        }
    }

    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// The value of a JavaScript expression (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if !result["exceptionDetails"].is_null() {
            panic!("{expression}: {}", result["exceptionDetails"]);
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.eval(expression) != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "never true: {expression} (errors: {:?})",
                self.errors
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the whole page.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group Chromium leads
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where tests leave screenshots: `target/test-artifacts/`.
pub fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}
