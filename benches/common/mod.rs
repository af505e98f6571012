//! What the benchmarks share: processes they start and reap, what those
//! processes cost (from /proc), and cgroups made for a run.
#![allow(dead_code)] // each benchmark uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rezolus");

/// A child process killed and reaped on drop, so that a failed assertion
/// leaves nothing running (and polling) after the bench.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Starts the real agent in `dir` with `[general]` lines `general` added
/// and the rest of its config `extra` (every sampler on unless `extra`
/// says otherwise); returns once `/metrics/binary` answers.
pub fn start_agent(dir: &Path, general: &str, extra: &str) -> (Reaped, u16) {
    start_agent_of(BIN, dir, general, extra)
}

/// [`start_agent`] with the binary at `bin`.
pub fn start_agent_of(bin: &str, dir: &Path, general: &str, extra: &str) -> (Reaped, u16) {
    let port = free_port();
    let config = dir.join(format!("agent-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "[general]\nlisten = \"127.0.0.1:{port}\"\n{general}\n[log]\nlevel = \"warn\"\n{extra}"
        ),
    )
    .expect("write the agent's config");
    let agent = Reaped(
        Command::new(bin)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn rezolus"),
    );
    wait_for(&format!("http://127.0.0.1:{port}/metrics/binary"), "agent");
    (agent, port)
}

/// An HTTP client that keeps its connection open between requests, as
/// hindsight, the recorder and the exporter do (so a request's cost is the
/// request, not a TCP handshake).
pub fn client() -> ureq::Agent {
    ureq::Agent::new_with_defaults()
}

/// GETs `url` with `client` and returns the body's length (up to 64 MiB).
pub fn fetch_len(client: &ureq::Agent, url: &str) -> usize {
    client
        .get(url)
        .call()
        .expect("request")
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .expect("body")
        .len()
}

/// Waits (up to 30 s) until `url` answers.
pub fn wait_for(url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(url).call().is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running process's memory and CPU time, from /proc/PID/status and stat.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
    /// RssAnon: the process's own memory, bytes.
    pub anon: u64,
    /// RssFile: mapped files' pages (the binary's code, libraries, BPF
    /// maps), bytes.
    pub file: u64,
    /// User plus system time of all its threads: nanosecond resolution from
    /// the process's CPU-time clock (`clock_getcpuclockid`), else clock
    /// ticks from /proc/PID/stat.
    pub cpu: Duration,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bytes = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // fields 14 and 15 of stat: utime and stime
    let ticks = if fields.len() > 13 {
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
    } else {
        0
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Usage {
        rss: bytes("VmRSS:"),
        hwm: bytes("VmHWM:"),
        anon: bytes("RssAnon:"),
        file: bytes("RssFile:"),
        cpu: process_cpu(pid)
            .unwrap_or_else(|| Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1))),
    }
}

/// Another process's CPU time in nanoseconds, from its CPU-time clock.
fn process_cpu(pid: u32) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes a clock id into `clock`.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills in the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills in the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Decimal megabytes.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `count` cgroups made for the run under the cgroup2 mount (root only),
/// removed on drop.
pub struct Cgroups {
    pub mount: PathBuf,
    pub top: PathBuf,
    pub children: Vec<PathBuf>,
}

impl Cgroups {
    /// `None` (with the reason printed) without a cgroup2 mount or the
    /// right to make cgroups.
    pub fn make(count: usize) -> Option<Self> {
        let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
        let Some(mount) = rezolus::cgroups::cgroup2_mount(&mountinfo) else {
            println!("\n(no cgroup2 mount: no cgroups made)");
            return None;
        };
        let mount = PathBuf::from(std::str::from_utf8(&mount).expect("mount path"));
        let top = mount.join(format!("rezolus-bench-{}", std::process::id()));
        if std::fs::create_dir(&top).is_err() {
            println!(
                "\n(cannot make cgroups under {}: run as root for the cgroup benchmarks)",
                top.display()
            );
            return None;
        }
        let children: Vec<_> = (0..count).map(|i| top.join(format!("c{i}"))).collect();
        for c in &children {
            std::fs::create_dir(c).expect("mkdir cgroup");
        }
        Some(Self {
            mount,
            top,
            children,
        })
    }

    /// A process moves into every cgroup, makes a system call and sleeps
    /// there (a context switch), and moves back out, so the per-cgroup BPF
    /// counts have a slot and series for each.
    pub fn visit(&self) {
        let paths: Vec<String> = self
            .children
            .iter()
            .map(|c| c.join("cgroup.procs").display().to_string())
            .collect();
        let home = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let home = home
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| self.mount.join(p.trim_start_matches('/')))
            .unwrap_or_else(|| self.top.clone());
        let script = "import os, sys, time\npid = str(os.getpid())\n\
             for p in sys.argv[2:]:\n    open(p, 'w').write(pid)\n    os.getppid()\n    time.sleep(0.0001)\n\
             open(sys.argv[1], 'w').write(pid)\n";
        let status = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(home.join("cgroup.procs"))
            .args(&paths)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            println!("(python3 could not visit the cgroups: per-cgroup BPF series not made)");
        }
    }
}

/// Processes that sleep, one in each cgroup, killed on drop.
pub struct Sleepers(Vec<Reaped>);

impl Cgroups {
    /// A sleeping process in every cgroup, so that each has a task
    /// (`populated 1`) without using CPU.
    pub fn populate(&self) -> Sleepers {
        Sleepers(
            self.children
                .iter()
                .map(|c| {
                    let procs = c.join("cgroup.procs");
                    Reaped(
                        Command::new("sh")
                            .arg("-c")
                            .arg(format!("echo $$ > {} && exec sleep 3600", procs.display()))
                            .spawn()
                            .expect("spawn a sleeper"),
                    )
                })
                .collect(),
        )
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for c in &self.children {
            let _ = std::fs::remove_dir(c);
        }
        let _ = std::fs::remove_dir(&self.top);
    }
}
