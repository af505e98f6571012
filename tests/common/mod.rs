//! Starting the real `rezolus` binary for integration tests, and reading
//! its snapshots.
#![allow(dead_code)]

pub mod browser;
pub mod cgroups;
pub mod disks;
pub mod fake;
pub mod parquet;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use metriken_exposition::Snapshot;

pub const BIN: &str = env!("CARGO_BIN_EXE_rezolus");

/// A running agent on an ephemeral loopback port; killed on drop.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// The lines logged before the address, already taken from `log`.
    pub startup: Vec<String>,
    _dir: tempfile::TempDir,
    /// Files the agent reads for as long as it runs (a copy of the binary,
    /// a BTF file).
    _bin_dir: Option<tempfile::TempDir>,
}

/// `general_extra` with `ttl = "0s"` unless it sets a TTL: every request
/// builds a new snapshot, so a workload shorter than the default TTL is
/// never measured against a cached one.
fn with_ttl(general_extra: &str) -> String {
    if general_extra.contains("ttl") {
        general_extra.to_string()
    } else {
        format!("ttl = \"0s\"\n{general_extra}")
    }
}

impl Agent {
    /// Starts the agent with `extra` appended to a config whose `[general]`
    /// section sets an ephemeral port (so `extra` must not repeat `[general]`
    /// keys other than through `general_extra`).
    pub fn start(general_extra: &str, extra: &str) -> Self {
        Self::start_as(None, general_extra, extra)
    }

    /// Like [`Agent::start`], run as user `uid` (with group `uid`) when given.
    pub fn start_as(uid: Option<u32>, general_extra: &str, extra: &str) -> Self {
        Self::spawn(uid, &[], &with_ttl(general_extra), extra)
    }

    /// Starts `rezolus hindsight` (with HTTP on) like [`Agent::start`]
    /// starts the agent.
    pub fn hindsight(general_extra: &str) -> Self {
        Self::spawn(None, &["hindsight"], general_extra, "")
    }

    /// Starts `rezolus exporter` like [`Agent::start`] starts the agent.
    pub fn exporter(general_extra: &str, extra: &str) -> Self {
        Self::spawn(None, &["exporter"], general_extra, extra)
    }

    /// Starts `rezolus ROLE... CONFIG` (like [`Agent::start`] for the agent)
    /// with its open file limit (soft and hard) set to `nofile` and `env`
    /// added to its environment.
    pub fn start_limited(
        role: &[&str],
        general_extra: &str,
        extra: &str,
        nofile: u64,
        env: &[(&str, &str)],
    ) -> Self {
        let launch = Launch {
            nofile: Some(nofile),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Self::spawn_with(None, role, general_extra, extra, &launch)
    }

    /// Starts the agent like [`Agent::start`], with `setup` run in the
    /// child between fork and exec (e.g. to enter a mount namespace).
    pub fn start_with_setup(
        setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
        general_extra: &str,
        extra: &str,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(BIN);
        // SAFETY: the tests' setups only make async-signal-safe system calls
        unsafe { command.pre_exec(setup) };
        Self::spawn_command(command, &[], &with_ttl(general_extra), extra)
    }

    /// Starts the agent like [`Agent::start`] with the BPF samplers `names`
    /// on `path`: `"auto"` or `"compat"` through each one's `path` key, or
    /// `"no-btf"`, as on a kernel without BTF of its own: the agent runs in
    /// a mount namespace where `/sys/kernel/btf` is an empty tmpfs, with
    /// `[general] btf` a copy of this kernel's BTF, and every BPF sampler
    /// takes its compatibility path by itself. `extra` must not hold the
    /// `[samplers.<name>]` sections of `names`.
    pub fn start_on(path: &str, names: &[&str], general_extra: &str, extra: &str) -> Self {
        if path != "no-btf" {
            let paths: String = names.iter().map(|name| on_path(name, path)).collect();
            return Self::start(general_extra, &format!("{paths}{extra}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let btf = dir.path().join("vmlinux.btf");
        std::fs::copy("/sys/kernel/btf/vmlinux", &btf).unwrap();
        let mut agent = Self::start_with_setup(
            hide_kernel_btf,
            &format!("btf = {btf:?}\n{general_extra}"),
            extra,
        );
        agent._bin_dir = Some(dir);
        agent
    }

    /// Starts `PREFIX... rezolus ROLE... CONFIG` (a role under a wrapper
    /// such as `setpriv` or `strace`) with a config like
    /// [`Agent::spawn_command`]'s, with `setup` run in the child between
    /// fork and exec.
    pub fn start_wrapped(
        prefix: &[&str],
        setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
        role: &[&str],
        general_extra: &str,
        extra: &str,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(prefix[0]);
        command.args(&prefix[1..]).arg(BIN);
        // SAFETY: the tests' setups only make async-signal-safe system calls
        unsafe { command.pre_exec(setup) };
        Self::spawn_command(command, role, general_extra, extra)
    }

    fn spawn(uid: Option<u32>, role: &[&str], general_extra: &str, extra: &str) -> Self {
        Self::spawn_with(uid, role, general_extra, extra, &Launch::default())
    }

    fn spawn_with(
        uid: Option<u32>,
        role: &[&str],
        general_extra: &str,
        extra: &str,
        launch: &Launch,
    ) -> Self {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(BIN);
        command.envs(launch.env.iter().map(|(k, v)| (k, v)));
        if let Some(nofile) = launch.nofile {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            // SAFETY: setrlimit is async-signal-safe and reads only `limit`
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        if let Some(uid) = uid {
            // the user must be able to reach a copy of the binary
            let dir = tempfile::tempdir().unwrap();
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(dir.path(), mode(0o755)).unwrap();
            let bin = dir.path().join("rezolus");
            std::fs::copy(BIN, &bin).unwrap();
            std::fs::set_permissions(&bin, mode(0o755)).unwrap();
            command = Command::new(bin);
            command.uid(uid).gid(uid);
            let mut agent = Self::spawn_command(command, role, general_extra, extra);
            agent._bin_dir = Some(dir);
            return agent;
        }
        Self::spawn_command(command, role, general_extra, extra)
    }

    /// Starts `command ROLE... CONFIG` with a config listening on an
    /// ephemeral loopback port, and waits until it answers.
    fn spawn_command(
        mut command: Command,
        role: &[&str],
        general_extra: &str,
        extra: &str,
    ) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "[general]\nlisten = \"127.0.0.1:0\"\n{general_extra}\n{extra}"
        )
        .unwrap();
        // an unprivileged agent must be able to reach the config
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(dir.path(), mode(0o755)).unwrap();
        std::fs::set_permissions(&path, mode(0o644)).unwrap();
        let mut child = command
            .args(role)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rezolus");
        let rx = log_lines(&mut child, "agent");
        // readiness: the log names the bound address, then `/` answers
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut startup = Vec::new();
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "agent did not report its address; status {:?}",
                        child.try_wait()
                    )
                });
            if let Some(addr) = line.split("listening on ").nth(1) {
                break addr.trim().parse().unwrap();
            }
            startup.push(line);
        };
        let agent = Self {
            child,
            addr,
            log: rx,
            startup,
            _dir: dir,
            _bin_dir: None,
        };
        while agent.try_get("/").is_none() {
            assert!(Instant::now() < deadline, "agent never answered on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_get(&self, path: &str) -> Option<Vec<u8>> {
        let url = format!("http://{}{path}", self.addr);
        let mut response = ureq::get(&url).call().ok()?;
        response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .ok()
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(path)).unwrap()
    }

    /// The binary snapshot, decoded by `metriken-exposition`.
    pub fn snapshot(&self) -> Snap {
        let bytes = self.get("/metrics/binary");
        Snap::decode(&bytes)
    }

    /// Sends a signal and waits for the exit status.
    pub fn stop(mut self, signal: i32) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How to start the binary, beyond its config.
#[derive(Default)]
struct Launch {
    /// RLIMIT_NOFILE, soft and hard.
    nofile: Option<u64>,
    env: Vec<(String, String)>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series: its labels (metadata without `metric` and `unit`) and value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub metric: String,
    pub labels: HashMap<String, String>,
    pub value: i128,
}

/// A decoded snapshot, flattened for lookups.
pub struct Snap {
    pub systemtime: std::time::SystemTime,
    pub entries: Vec<Entry>,
    pub histograms: Vec<HistogramEntry>,
}

/// One histogram series.
#[derive(Debug, Clone)]
pub struct HistogramEntry {
    pub metric: String,
    pub labels: HashMap<String, String>,
    pub value: histogram::Histogram,
}

impl Snap {
    pub fn decode(bytes: &[u8]) -> Self {
        let mut snapshot = Snapshot::from_msgpack(bytes).expect("binary snapshot decodes");
        assert!(
            matches!(snapshot, Snapshot::V2(_)),
            "expected a V2 snapshot"
        );
        let mut entries = Vec::new();
        let split = |mut metadata: HashMap<String, String>| {
            let metric = metadata.remove("metric").expect("metadata.metric");
            metadata.remove("unit");
            (metric, metadata)
        };
        for c in snapshot.counters() {
            let (metric, labels) = split(c.metadata);
            entries.push(Entry {
                metric,
                labels,
                value: c.value as i128,
            });
        }
        for g in snapshot.gauges() {
            let (metric, labels) = split(g.metadata);
            entries.push(Entry {
                metric,
                labels,
                value: g.value as i128,
            });
        }
        let mut histograms = Vec::new();
        for h in snapshot.histograms() {
            let (metric, mut labels) = split(h.metadata);
            assert_eq!(labels.remove("grouping_power").as_deref(), Some("3"));
            assert_eq!(labels.remove("max_value_power").as_deref(), Some("64"));
            histograms.push(HistogramEntry {
                metric,
                labels,
                value: h.value,
            });
        }
        Self {
            systemtime: snapshot.systemtime(),
            entries,
            histograms,
        }
    }

    /// The histogram series with exactly these labels.
    pub fn histogram(&self, metric: &str, labels: &[(&str, &str)]) -> &histogram::Histogram {
        let hits: Vec<_> = self
            .histograms
            .iter()
            .filter(|e| {
                e.metric == metric
                    && e.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| e.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{metric} {labels:?} matched {} histograms",
            hits.len()
        );
        &hits[0].value
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, metric: &str, labels: &[(&str, &str)]) -> Option<i128> {
        let hits: Vec<_> = self
            .entries
            .iter()
            .filter(|e| {
                e.metric == metric
                    && e.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| e.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(hits.len() <= 1, "{metric} {labels:?} matched {hits:?}");
        hits.first().map(|e| e.value)
    }

    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> i128 {
        self.get(metric, labels)
            .unwrap_or_else(|| panic!("no series {metric} {labels:?}"))
    }

    /// Every metric served: counters, gauges and histograms.
    pub fn metrics(&self) -> std::collections::BTreeSet<&str> {
        let histograms = self.histograms.iter().map(|h| h.metric.as_str());
        self.entries
            .iter()
            .map(|e| e.metric.as_str())
            .chain(histograms)
            .collect()
    }
}

/// Observations added between two snapshots of a histogram, counting only
/// buckets that overlap `[low, high]`.
pub fn added_between(
    before: &histogram::Histogram,
    after: &histogram::Histogram,
    low: u64,
    high: u64,
) -> u64 {
    before
        .iter()
        .zip(after.iter())
        .filter(|(b, _)| b.end() >= low && b.start() <= high)
        .map(|(b, a)| a.count() - b.count())
        .sum()
}

/// Observations added between two snapshots of a histogram.
pub fn added(before: &histogram::Histogram, after: &histogram::Histogram) -> u64 {
    added_between(before, after, 0, u64::MAX)
}

/// Runs the binary with these arguments to completion.
/// Waits for a log line containing `text`.
/// The child's stderr lines, echoed to the test's output with `tag`, on a
/// channel (the child must have been spawned with piped stderr).
pub fn log_lines(child: &mut Child, tag: &'static str) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{tag}: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn wait_line(log: &mpsc::Receiver<String>, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("never logged {text:?}"));
        if line.contains(text) {
            return;
        }
    }
}

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// For `Agent::start_with_setup`: moves the child into a mount namespace of
/// its own, with every mount private, so what it mounts or unmounts next is
/// seen by it alone. Only async-signal-safe system calls.
pub fn private_mount_namespace() -> std::io::Result<()> {
    // SAFETY: plain system calls on static C strings
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0
            || libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// For `Agent::start_with_setup`: a private mount namespace in which
/// `/sys/kernel/btf` is an empty tmpfs, as on a kernel built without BTF.
/// Only async-signal-safe system calls.
pub fn hide_kernel_btf() -> std::io::Result<()> {
    private_mount_namespace()?;
    // SAFETY: a plain system call on static C strings
    let mounted = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/sys/kernel/btf".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Fails unless every named sampler is active, showing the reason if not.
pub fn require_active(agent: &Agent, names: &[&str]) {
    for name in names {
        let s = sampler_status(agent, name);
        assert_eq!(s["state"], "active", "{name}: {s}");
    }
}

/// The config section that puts BPF sampler `name` on `path` (`"auto"` or
/// `"compat"`).
pub fn on_path(name: &str, path: &str) -> String {
    format!("[samplers.{name}]\npath = \"{path}\"\n")
}

/// Asserts that each sampler is active on `path` ([`Agent::start_on`]):
/// its `/samplers` method names the default path for `"auto"` (this kernel
/// loads it), the compatibility path for `"compat"`, and the compatibility
/// path taken for want of kernel BTF for `"no-btf"`. (filesystem_latency's
/// method first says where it times: "syscalls, ".)
pub fn require_path(agent: &Agent, names: &[&str], path: &str) {
    require_active(agent, names);
    let expected = match path {
        "auto" => "default path",
        "compat" => "compatibility path",
        "no-btf" => "compatibility path (the kernel has no BTF of its own)",
        other => panic!("no path {other}"),
    };
    for name in names {
        let s = sampler_status(agent, name);
        let method = s["method"].as_str().unwrap_or_default();
        assert!(
            method
                .trim_start_matches("syscalls, ")
                .starts_with(expected),
            "{name} on {path}: {s}"
        );
    }
}

/// One sampler's entry in `/samplers`.
pub fn sampler_status(agent: &Agent, name: &str) -> serde_json::Value {
    agent
        .get_json("/samplers")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == *name)
        .unwrap_or_else(|| panic!("{name} not listed"))
        .clone()
}

/// Held by tests of one binary that measure something host-wide (packets,
/// cgroups), so that they do not see each other's work.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn counter_delta(before: &Snap, after: &Snap, metric: &str, labels: &[(&str, &str)]) -> i128 {
    after.value(metric, labels) - before.value(metric, labels)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

/// Pins the calling thread to one CPU.
pub fn pin_to(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

/// `m` round trips of one byte between two threads over a socket pair,
/// both pinned to `cpu`: at least `2m` context switches there.
pub fn ping_pong(cpu: usize, m: usize) {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        pin_to(cpu);
        let mut byte = [0u8];
        for _ in 0..m {
            b.read_exact(&mut byte).unwrap();
            b.write_all(&byte).unwrap();
        }
    });
    std::thread::spawn(move || {
        pin_to(cpu);
        let mut byte = [7u8];
        for _ in 0..m {
            a.write_all(&byte).unwrap();
            a.read_exact(&mut byte).unwrap();
        }
    })
    .join()
    .unwrap();
    echo.join().unwrap();
}

/// Whether this machine has a hardware PMU, asked of the kernel directly
/// (not through the agent): counting this thread's instructions works.
pub fn has_hardware_pmu() -> bool {
    use perf_event_open_sys::bindings as sys;
    let mut attr: sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<sys::perf_event_attr>() as u32;
    attr.type_ = sys::PERF_TYPE_HARDWARE;
    attr.config = u64::from(sys::PERF_COUNT_HW_INSTRUCTIONS);
    attr.set_exclude_kernel(1);
    let fd = unsafe { perf_event_open_sys::perf_event_open(&mut attr, 0, -1, -1, 0) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "perf_event_open(instructions) failed unexpectedly: {err}"
    );
    false
}
