//! Storage: `filesystem_latency` on file systems the tests make (ext4 and
//! XFS on loop devices, tmpfs), and `blockio`'s per-disk histograms on two
//! loop devices, one of them slow (over a FUSE file system that sleeps).
//! Root only; CI runs them as root.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::disks::{direct_writes, LoopDevice};
use common::{added, added_between, counter_delta, require_active, sampler_status, Agent, Snap};

const FS_ONLY: &str =
    "[defaults]\nenabled = false\n[samplers.filesystem_latency]\nenabled = true\n";
/// With the syscall sampler, whose programs then time the system calls.
const FS_AND_SYSCALL: &str = "[defaults]\nenabled = false\n[samplers.filesystem_latency]\nenabled = true\n[samplers.syscall]\nenabled = true\n";
/// On the compatibility path: raw tracepoints and a hash map of threads,
/// with the syscall sampler on its own compatibility path beside it (whose
/// programs then time file system calls too).
const FS_COMPAT: &str = "[defaults]\nenabled = false\n[samplers.filesystem_latency]\nenabled = true\npath = \"compat\"\n[samplers.syscall]\nenabled = true\npath = \"compat\"\n";
/// [`FS_COMPAT`] with the syscall sampler timing one call in 8: file system
/// calls are still all timed.
const FS_COMPAT_SAMPLED: &str = "[defaults]\nenabled = false\n[samplers.filesystem_latency]\nenabled = true\npath = \"compat\"\n[samplers.syscall]\nenabled = true\npath = \"compat\"\nlatency_sampling = 8\n";
/// On the compatibility path in this sampler's own programs: the syscall
/// sampler off.
const FS_COMPAT_ALONE: &str = "[defaults]\nenabled = false\n[samplers.filesystem_latency]\nenabled = true\npath = \"compat\"\n";
const BLOCKIO_ONLY: &str = "[defaults]\nenabled = false\n[samplers.blockio]\nenabled = true\n";

/// Held by the tests that make loop devices: each agent has disk slots for
/// the disks present at its start plus a few, which one test's 30 new disks
/// would use up under another test's feet.
fn disks_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (scripts/deps installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file system of type `fs` mounted on a fresh directory, on a loop device
/// of its own unless it is tmpfs; unmounted on drop.
struct Mounted {
    dir: tempfile::TempDir,
    _device: Option<LoopDevice>,
}

impl Mounted {
    fn new(fs: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_str().unwrap();
        let device = if fs == "tmpfs" {
            run("mount", &["-t", "tmpfs", "-o", "size=64m", "none", target]);
            None
        } else {
            // XFS wants at least 300 MB; the backing file is sparse, in tmpfs
            let device = LoopDevice::new(512 << 20);
            let force = if fs == "xfs" { "-f" } else { "-F" };
            run(&format!("mkfs.{fs}"), &["-q", force, &device.path]);
            run("mount", &["-t", fs, &device.path, target]);
            Some(device)
        };
        Self {
            dir,
            _device: device,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The loop device's name (`loop3`), unless tmpfs.
    fn device(&self) -> Option<&str> {
        self._device.as_ref().map(LoopDevice::name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

const N: usize = 200;

/// N each of pwrite, pread (of cached data), fsync and open on one file of
/// `dir`, and N opens that fail (not counted), between two snapshots.
fn file_ops(agent: &Agent, dir: &Path) -> (Snap, Snap) {
    let path = dir.join("f");
    let file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = vec![7u8; 4096];
    file.write_all_at(&block, 0).unwrap();
    file.sync_all().unwrap();
    let mut buf = vec![0u8; 4096];

    let before = agent.snapshot();
    for _ in 0..N {
        file.write_all_at(&block, 0).unwrap();
    }
    for _ in 0..N {
        file.read_exact_at(&mut buf, 0).unwrap();
    }
    for _ in 0..N {
        file.sync_all().unwrap();
    }
    for _ in 0..N {
        drop(std::fs::File::open(&path).unwrap());
        assert!(std::fs::File::open(dir.join("missing")).is_err());
    }
    let after = agent.snapshot();
    (before, after)
}

fn operations(before: &Snap, after: &Snap, fs: &str, op: &str) -> i128 {
    let labels = [("fs", fs), ("op", op)];
    after.get("filesystem_operations", &labels).unwrap_or(0)
        - before.get("filesystem_operations", &labels).unwrap_or(0)
}

fn latency(snap: &Snap, fs: &str, op: &str) -> histogram::Histogram {
    let labels = [("fs", fs), ("op", op)];
    let present = snap.get("filesystem_operations", &labels).is_some();
    if present {
        snap.histogram("filesystem_latency", &labels).clone()
    } else {
        histogram::Histogram::new(3, 64).unwrap()
    }
}

/// The ops this agent times on `fs`: with fentry, tmpfs has no open or
/// fsync of its own (it uses generic ones shared with other types).
fn timed_ops(agent: &Agent, fs: &str) -> Vec<&'static str> {
    let method = sampler_status(agent, "filesystem_latency")["method"]
        .as_str()
        .expect("filesystem_latency reports its method")
        .to_string();
    assert!(
        method.starts_with("syscalls") || method.starts_with("fentry"),
        "{method}"
    );
    if method.starts_with("fentry") && fs == "tmpfs" {
        vec!["read", "write"]
    } else {
        vec!["read", "write", "open", "fsync"]
    }
}

/// N of each op on a file system of type `fs` move each op's count and
/// histogram by at least N, by exactly N where nothing else uses that type
/// (`exact`), and cached 4 KiB reads are mostly under 10 us.
fn check_file_system(fs: &str, exact: bool) {
    check_file_system_with(FS_ONLY, fs, exact)
}

fn check_file_system_with(config: &str, fs: &str, exact: bool) {
    let _disks = disks_lock();
    let agent = Agent::start("", config);
    check_file_system_on(&agent, fs, exact);
}

/// [`check_file_system_with`] on a running agent (the caller holds
/// [`disks_lock`], taken before the agent started).
fn check_file_system_on(agent: &Agent, fs: &str, exact: bool) {
    require_active(agent, &["filesystem_latency"]);
    let mounted = Mounted::new(fs);
    let (before, after) = file_ops(agent, mounted.path());
    for op in timed_ops(agent, fs) {
        let counted = operations(&before, &after, fs, op);
        let timed = added(&latency(&before, fs, op), &latency(&after, fs, op)) as i128;
        let seen = format!("{fs} {op}: {counted} counted, {timed} timed, for {N}");
        if exact {
            assert_eq!(counted, N as i128, "{seen}");
            assert_eq!(timed, counted, "{seen}");
        } else {
            // others' calls land between the reads of the counter and the
            // histogram, so the two may differ by a few
            assert!(counted >= N as i128 && timed >= N as i128, "{seen}");
        }
    }
    if exact {
        let fast = added_between(
            &latency(&before, fs, "read"),
            &latency(&after, fs, "read"),
            0,
            10_000,
        );
        assert!(
            fast * 10 >= N as u64 * 9,
            "{fast} of {N} cached {fs} reads under 10 us"
        );
    }
}

/// XFS is used by nothing else here: its counts must be exact.
#[test]
fn xfs_operations_are_counted_and_timed() {
    check_file_system("xfs", true);
}

/// With the syscall sampler running, its programs time the system calls
/// (when fentry is refused, as here) and the counts are as exact.
#[test]
fn xfs_operations_are_counted_in_the_syscall_samplers_programs() {
    check_file_system_with(FS_AND_SYSCALL, "xfs", true);
}

/// On the compatibility path the counts are as exact: in the syscall
/// sampler's compatibility programs when that sampler is on its
/// compatibility path too (whatever its latency sampling), in this
/// sampler's own when it does not run, and
/// where both take that path by themselves, on a kernel without BTF of its
/// own (the objects opened there have no kfunc). The sampler says which,
/// and its untracked series is served (the thread map never filled here).
#[test]
fn xfs_operations_are_counted_on_the_compatibility_path() {
    for (path, config, shared) in [
        ("compat", FS_COMPAT, true),
        ("compat", FS_COMPAT_SAMPLED, true),
        ("compat", FS_COMPAT_ALONE, false),
        ("no-btf", FS_AND_SYSCALL, true),
    ] {
        let _disks = disks_lock();
        let agent = Agent::start_on(path, &[], "", config);
        common::require_path(&agent, &["filesystem_latency"], path);
        let method = sampler_status(&agent, "filesystem_latency")["method"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            method.ends_with("; in the syscall sampler's programs"),
            shared,
            "{path}: {method}"
        );
        check_file_system_on(&agent, "xfs", true);
        let untracked = agent.snapshot().get(
            "rezolus_bpf_untracked",
            &[("sampler", "filesystem_latency")],
        );
        assert_eq!(untracked, Some(0), "{path}: {method}");
    }
}

/// Where fentry is refused, the system call path runs in the syscall
/// sampler's programs when that sampler runs, and in this sampler's own
/// programs when it does not: never in both.
#[test]
fn the_system_call_path_shares_the_syscall_samplers_programs() {
    let own = Agent::start("", FS_ONLY);
    let shared = Agent::start("", FS_AND_SYSCALL);
    let method = |agent: &Agent| {
        sampler_status(agent, "filesystem_latency")["method"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (own, shared) = (method(&own), method(&shared));
    if own.starts_with("fentry") {
        assert_eq!(own, shared, "fentry is used whatever else runs");
    } else {
        assert!(own.starts_with("syscalls (fentry"), "{own}");
        assert!(
            shared.starts_with("syscalls, in the syscall sampler's programs (fentry"),
            "{shared}"
        );
    }
}

/// The root file system may be ext4 too, so others' ops add to ours.
#[test]
fn ext4_operations_are_counted_and_timed() {
    check_file_system("ext4", false);
}

#[test]
fn tmpfs_operations_are_counted_and_timed() {
    check_file_system("tmpfs", false);
}

/// Only regular files and directories count: reads and writes on a pipe
/// (pipefs) and on /dev/null (devtmpfs) add nothing.
#[test]
fn pipes_and_devices_are_not_file_system_operations() {
    let agent = Agent::start("", FS_ONLY);
    require_active(&agent, &["filesystem_latency"]);
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let before = agent.snapshot();
    let mut byte = [0u8; 1];
    for _ in 0..N {
        assert_eq!(unsafe { libc::write(fds[1], byte.as_ptr().cast(), 1) }, 1);
        assert_eq!(
            unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) },
            1
        );
        null.write_all_at(&byte, 0).unwrap();
    }
    let after = agent.snapshot();
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    for fs in ["pipefs", "devtmpfs"] {
        for op in ["read", "write"] {
            assert_eq!(operations(&before, &after, fs, op), 0, "{fs} {op}");
        }
    }
}

/// With `fentry = 0` the sampler times system calls, and says so.
#[test]
fn the_method_is_reported_and_can_be_forced_to_system_calls() {
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.filesystem_latency]\nenabled = true\nfentry = 0\n",
    );
    let status = sampler_status(&agent, "filesystem_latency");
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["method"], "syscalls (fentry = 0)", "{status}");
    let mounted = Mounted::new("tmpfs");
    let (before, after) = file_ops(&agent, mounted.path());
    assert!(operations(&before, &after, "tmpfs", "fsync") >= N as i128);
}

/// A FUSE file system (tests/slowfs.py) that sleeps `delay_ms` per request,
/// serving `backing`; unmounted on drop.
struct SlowFs {
    mountpoint: tempfile::TempDir,
    child: Child,
}

impl SlowFs {
    fn new(backing: &Path, delay_ms: u32) -> Self {
        let mountpoint = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slowfs.py");
        let child = Command::new(common::parquet::python())
            .arg(script)
            .arg(backing)
            .arg(mountpoint.path())
            .arg(delay_ms.to_string())
            .spawn()
            .expect("start tests/slowfs.py");
        let fs = Self { mountpoint, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs.mounted() {
            assert!(Instant::now() < deadline, "slowfs.py did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        fs
    }

    fn mounted(&self) -> bool {
        let target = self.mountpoint.path().to_str().unwrap();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(target))
    }

    fn path(&self) -> &Path {
        self.mountpoint.path()
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mountpoint.path()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn device_histogram(snap: &Snap, metric: &str, device: &str) -> histogram::Histogram {
    let labels = [("op", "write"), ("device", device)];
    let present = snap
        .histograms
        .iter()
        .any(|h| h.metric == metric && h.labels.get("device").map(String::as_str) == Some(device));
    if present {
        snap.histogram(metric, &labels).clone()
    } else {
        histogram::Histogram::new(3, 64).unwrap()
    }
}

/// Two loop devices, one over tmpfs and one over a FUSE file system that
/// sleeps 5 ms per request: writes to each move only that device's
/// per-device histograms, by exactly the writes made, and the slow device's
/// latency sits above 4 ms while the fast one's sits below.
#[test]
fn blockio_latency_is_per_device() {
    const W: usize = 40;
    const S: usize = 4096;
    const SLOW_NS: u64 = 4_000_000;
    let _disks = disks_lock();
    let agent = Agent::start("", BLOCKIO_ONLY);
    require_active(&agent, &["blockio"]);
    let backing = tempfile::tempdir_in("/dev/shm").unwrap();
    std::fs::File::create(backing.path().join("disk"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let slow_fs = SlowFs::new(backing.path(), 5);
    let slow = LoopDevice::over(&slow_fs.path().join("disk"));
    let fast = LoopDevice::new(16 << 20);

    let latency =
        |snap: &Snap, d: &LoopDevice| device_histogram(snap, "blockio_device_latency", d.name());
    let size =
        |snap: &Snap, d: &LoopDevice| device_histogram(snap, "blockio_device_size", d.name());

    let s0 = agent.snapshot();
    direct_writes(Path::new(&fast.path), W, S);
    let s1 = agent.snapshot();
    direct_writes(Path::new(&slow.path), W, S);
    let s2 = agent.snapshot();

    for (device, during, other) in [
        (&fast, (&s0, &s1), (&s1, &s2)),
        (&slow, (&s1, &s2), (&s0, &s1)),
    ] {
        let name = device.name();
        let sized = added_between(
            &size(during.0, device),
            &size(during.1, device),
            S as u64,
            S as u64,
        );
        let timed = added(&latency(during.0, device), &latency(during.1, device));
        assert_eq!(
            sized, W as u64,
            "{name}: {sized} writes of {S} bytes for {W}"
        );
        assert_eq!(timed, W as u64, "{name}: {timed} latencies for {W} writes");
        let idle = added(&latency(other.0, device), &latency(other.1, device))
            + added(&size(other.0, device), &size(other.1, device));
        assert_eq!(idle, 0, "{name} moved while the other device was written");
    }
    let slow_ones = added_between(
        &latency(&s1, &slow),
        &latency(&s2, &slow),
        SLOW_NS,
        u64::MAX,
    );
    let fast_ones = added_between(
        &latency(&s0, &fast),
        &latency(&s1, &fast),
        SLOW_NS,
        u64::MAX,
    );
    assert_eq!(
        slow_ones, W as u64,
        "{slow_ones} of {W} writes to the slow device took over 4 ms"
    );
    assert!(
        fast_ones * 10 <= W as u64,
        "{fast_ones} of {W} writes to the fast device took over 4 ms"
    );

    // the all-disk series leave loop devices out
    let all = counter_delta(&s0, &s2, "blockio_operations", &[("op", "write")]);
    assert!(
        all < W as i128 / 2,
        "blockio_operations{{op=write}} moved {all}"
    );
    drop(slow);
    drop(slow_fs);
}

/// More disks than slots: each disk with a slot of its own moves only its
/// series, by its own writes, and the writes to disks beyond the slots are
/// counted in `device="other"`; nothing is lost either way.
#[test]
fn disks_beyond_the_slots_count_as_other() {
    const DISKS: usize = 30;
    let _disks = disks_lock();
    let agent = Agent::start("", BLOCKIO_ONLY);
    require_active(&agent, &["blockio"]);
    let devices: Vec<LoopDevice> = (0..DISKS).map(|_| LoopDevice::new(1 << 20)).collect();
    let size = |snap: &Snap, device: &str| device_histogram(snap, "blockio_device_size", device);
    let before = agent.snapshot();
    for device in &devices {
        direct_writes(Path::new(&device.path), 1, 4096);
    }
    let after = agent.snapshot();
    let own: Vec<&LoopDevice> = devices
        .iter()
        .filter(|d| {
            after
                .histograms
                .iter()
                .any(|h| h.labels.get("device").map(String::as_str) == Some(d.name()))
        })
        .collect();
    for device in &own {
        let moved = added(&size(&before, device.name()), &size(&after, device.name()));
        assert_eq!(moved, 1, "{} moved {moved} for one write", device.name());
    }
    let beyond = (DISKS - own.len()) as u64;
    assert!(beyond > 0, "all {DISKS} new disks got slots of their own");
    let other = added(&size(&before, "other"), &size(&after, "other"));
    assert!(
        other >= beyond,
        "device=\"other\" moved {other} for {beyond} disks without a slot"
    );
}

/// 32-bit (compat) system calls use other numbers: ia32 `lseek` is 19, the
/// x86-64 number of `readv`. Made through `int 0x80` on a file of a
/// file system nothing else uses, they must not count as reads.
#[cfg(target_arch = "x86_64")]
#[test]
fn compat_system_calls_are_not_taken_for_native_ones() {
    use std::os::fd::AsRawFd;
    const IA32_LSEEK: u32 = 19;
    let _disks = disks_lock();
    for config in [FS_ONLY, FS_AND_SYSCALL] {
        let agent = Agent::start("", config);
        let mounted = Mounted::new("xfs");
        let file = std::fs::File::create(mounted.path().join("f")).unwrap();
        let before = agent.snapshot();
        for _ in 0..N {
            let ret: u32;
            // SAFETY: the ia32 lseek(fd, 0, SEEK_SET) system call; it reads
            // and writes no memory
            unsafe {
                // rbx holds the fd for the call; LLVM keeps rbx for itself,
                // so it is swapped in and out around the call
                std::arch::asm!(
                    "xchg {fd}, rbx",
                    "int 0x80",
                    "xchg {fd}, rbx",
                    fd = inout(reg) file.as_raw_fd() as u64 => _,
                    inlateout("eax") IA32_LSEEK => ret,
                    in("ecx") 0,
                    in("edx") 0,
                    // where a native call's first argument would be: a
                    // sampler reading the call as native finds the file
                    in("edi") file.as_raw_fd(),
                );
            }
            assert_eq!(ret, 0, "the compat lseek failed: is IA32 emulation on?");
        }
        let after = agent.snapshot();
        for op in ["read", "write", "open", "fsync"] {
            assert_eq!(
                operations(&before, &after, "xfs", op),
                0,
                "{op} with {config}"
            );
        }
    }
}

/// An fsync's cache flush rides on an empty write request that the block
/// layer completes without issuing: it must not show as a write of 0 bytes.
#[test]
fn fsync_flushes_are_not_empty_writes() {
    let _disks = disks_lock();
    let agent = Agent::start("", BLOCKIO_ONLY);
    let mounted = Mounted::new("xfs");
    let device = mounted.device().unwrap().to_string();
    let file = std::fs::File::create(mounted.path().join("f")).unwrap();
    let before = agent.snapshot();
    for _ in 0..N / 4 {
        file.write_all_at(&[1u8; 4096], 0).unwrap();
        file.sync_data().unwrap();
    }
    let after = agent.snapshot();
    let size = |snap: &Snap| device_histogram(snap, "blockio_device_size", &device);
    let empty = added_between(&size(&before), &size(&after), 0, 0);
    let writes = added(&size(&before), &size(&after));
    assert!(
        writes >= (N / 4) as u64,
        "{writes} writes for {} fdatasyncs",
        N / 4
    );
    assert_eq!(empty, 0, "{empty} empty writes among {writes}");
}
