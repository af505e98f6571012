//! Cgroups for tests: made in the machine's cgroup v2 hierarchy (found
//! from /proc/self/mountinfo, as the agent finds it), removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Snap;

/// Tests that count cgroups must not overlap.
pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    super::serial()
}

/// Where cgroup2 is mounted, read the way a user would.
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (before, after) = l.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(before.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount")
}

/// A cgroup made for the test (and its children), removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
    /// Its name in the hierarchy, as the `name` label shows it.
    pub name: String,
}

impl Cgroup {
    pub fn new(parent: &Path, parent_name: &str, leaf: &str) -> Self {
        let path = parent.join(leaf);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let name = if parent_name == "/" {
            format!("/{leaf}")
        } else {
            format!("{parent_name}/{leaf}")
        };
        Self { path, name }
    }

    pub fn top(leaf: &str) -> Self {
        Self::new(&cgroup2_mount(), "/", leaf)
    }

    pub fn child(&self, leaf: &str) -> Self {
        Self::new(&self.path, &self.name, leaf)
    }

    /// Runs `sh -c script` inside this cgroup, to completion.
    pub fn run(&self, script: &str) {
        let procs = self.path.join("cgroup.procs");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && {script}", procs.display()))
            .status()
            .unwrap();
        assert!(status.success(), "{script} in {}", self.name);
    }

    /// Runs python3 code in a new process that first moves itself into this
    /// cgroup (`os` is imported), to completion; returns what it printed.
    pub fn python(&self, code: &str) -> String {
        let procs = self.path.join("cgroup.procs");
        let script = format!(
            "import os\nopen({:?}, 'w').write(str(os.getpid()))\n{code}\n",
            procs.to_str().unwrap()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "python3 in {}", self.name);
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // children first (a test may leave some), then this one
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

pub fn series_count(snap: &Snap) -> usize {
    snap.entries.len() + snap.histograms.len()
}

pub fn names(snap: &Snap) -> std::collections::BTreeSet<String> {
    snap.entries
        .iter()
        .filter_map(|e| e.labels.get("name").cloned())
        .collect()
}

pub fn walk_count(dir: &Path) -> usize {
    1 + std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| walk_count(&e.path()))
        .sum::<usize>()
}
