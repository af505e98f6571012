//! The cgroup v2 hierarchy for the per-cgroup samplers: where it is
//! mounted, and the cgroups in it.

pub mod slots;
pub mod watch;

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::source::{fields, lines, Unsupported};

/// The cgroup2 mount under `root` (`/` on a host), from
/// `ROOT/proc/self/mountinfo`; [`Unsupported`] when there is none.
///
/// With a `root` other than `/` (a container given the host's `/proc` and
/// `/sys` under, say, `/host`), a cgroup2 mount that is itself under `root`
/// (`/host/sys/fs/cgroup`, from a recursive bind of the host's `/sys`) is
/// the host's hierarchy and is preferred; otherwise the first one listed is
/// looked for under `root`.
pub fn find_mount(root: &Path) -> Result<PathBuf, Unsupported> {
    let mountinfo_path = root.join("proc/self/mountinfo");
    let mountinfo = std::fs::read(&mountinfo_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Unsupported(format!("{} does not exist", mountinfo_path.display()))
        } else {
            Unsupported(format!("reading {}: {e}", mountinfo_path.display()))
        }
    })?;
    let mounts: Vec<PathBuf> = cgroup2_mounts(&mountinfo)
        .into_iter()
        .map(|m| PathBuf::from(std::ffi::OsString::from_vec(m)))
        .collect();
    if root != Path::new("/") {
        if let Some(under) = mounts.iter().find(|m| m.starts_with(root)) {
            return Ok(under.clone());
        }
    }
    let mount = mounts.first().ok_or_else(|| {
        Unsupported(format!(
            "no cgroup2 hierarchy is mounted ({} lists none): cgroup v1 alone is not supported",
            mountinfo_path.display()
        ))
    })?;
    Ok(root.join(mount.strip_prefix("/").unwrap_or(mount)))
}

/// One cgroup found by [`walk`].
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// Its path in the hierarchy, `/` for the root: the `name` label (raw
    /// bytes; see `source::label_value`).
    pub name: Vec<u8>,
    /// Its directory's inode number, which is the kernel's cgroup id: a
    /// cgroup re-created under the same path has a new one.
    pub id: u64,
}

/// What [`walk`] found.
pub struct Walk {
    /// Every cgroup it could list, depth first, parents before children,
    /// siblings in name order (a stable order). Shared by the walks that
    /// reuse it.
    pub cgroups: std::sync::Arc<[Cgroup]>,
    /// Directories it could not list (other than those removed meanwhile),
    /// and why: their subtrees are missing from `cgroups`. A path longer
    /// than PATH_MAX is one such case.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
    /// When the walk began (CLOCK_MONOTONIC, nanoseconds, as BPF's
    /// `bpf_ktime_get_ns` reads it): cgroups made later may be missing.
    pub started_ns: u64,
}

/// How long the last values of a removed cgroup's series are remembered: a
/// cgroup made again under the same path within this time continues them
/// (as an interface or disk does; see docs/METRICS.md, "Counters never go
/// backwards"), later it starts afresh.
pub const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// How old a walk made by another sampler may be and still be used: long
/// enough to cover one snapshot's samplers, short enough that a sampler
/// never sees cgroups later than its own scan interval would.
pub const SHARED_WALK_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a walk is reused while no directory event says the hierarchy
/// changed: a bound on what a lost event could cost.
pub const REWALK_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A mount's last walk, when it was made, and the watches on the
/// directories it listed (`None` without inotify: then every scan walks).
struct Shared {
    walk: std::sync::Arc<Walk>,
    walked_ns: u64,
    watches: Option<watch::Hierarchy>,
    /// Walks made of this mount.
    walks: u64,
}

/// How many walks of `mount` [`shared_walk`] has made.
pub fn walks_made(mount: &Path) -> u64 {
    WALKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|w| w.get(mount))
        .map_or(0, |s| s.walks)
}

/// The last walk of each mount, shared by the samplers of this process.
type Walks = std::collections::HashMap<PathBuf, Shared>;
static WALKS: std::sync::Mutex<Option<Walks>> = std::sync::Mutex::new(None);

/// A walk of `mount` begun less than `max_age` (and at most
/// [`SHARED_WALK_WINDOW`]) ago: the last one made by any sampler of this
/// process when it is that recent, so samplers that scan in the same
/// snapshot walk once between them; else a new one. A new one is not made
/// when the inotify watches on the hierarchy's directories (added before
/// each was listed) report no directory made, removed or moved since the
/// last walk, which had no unreadable directory, and that walk is less
/// than [`REWALK_AFTER`] old: its cgroups are still the hierarchy's, and
/// are returned as a walk begun now.
pub fn shared_walk(
    mount: &Path,
    max_age: std::time::Duration,
) -> std::io::Result<std::sync::Arc<Walk>> {
    let max_age = max_age.min(SHARED_WALK_WINDOW);
    let now = crate::ticker::mono_now().as_nanos() as u64;
    let mut walks = WALKS.lock().unwrap_or_else(|e| e.into_inner());
    let walks = walks.get_or_insert_with(Default::default);
    if let Some(last) = walks.get_mut(mount) {
        if now.saturating_sub(last.walk.started_ns) < max_age.as_nanos() as u64 {
            return Ok(last.walk.clone());
        }
        let unchanged = last.walk.unreadable.is_empty()
            && now.saturating_sub(last.walked_ns) < REWALK_AFTER.as_nanos() as u64
            && last.watches.as_mut().is_some_and(|w| !w.changed());
        if unchanged {
            last.walk = std::sync::Arc::new(Walk {
                cgroups: std::sync::Arc::clone(&last.walk.cgroups),
                unreadable: Vec::new(),
                started_ns: now,
            });
            return Ok(last.walk.clone());
        }
    }
    let mut watches = watch::Hierarchy::new().ok();
    let walked = std::sync::Arc::new(walk_watched(mount, watches.as_mut())?);
    let made = walks.get(mount).map_or(0, |s| s.walks) + 1;
    walks.insert(
        mount.to_path_buf(),
        Shared {
            walk: walked.clone(),
            walked_ns: walked.started_ns,
            watches,
            walks: made,
        },
    );
    Ok(walked)
}

/// Every cgroup under `mount`.
pub fn walk(mount: &Path) -> std::io::Result<Walk> {
    walk_watched(mount, None)
}

/// [`walk`], adding each directory to `watches` before listing it.
fn walk_watched(mount: &Path, mut watches: Option<&mut watch::Hierarchy>) -> std::io::Result<Walk> {
    let started_ns = crate::ticker::mono_now().as_nanos() as u64;
    let root = Cgroup {
        dir: mount.to_path_buf(),
        name: b"/".to_vec(),
        id: std::fs::metadata(mount)?.ino(),
    };
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let mut stack = vec![root];
    while let Some(cgroup) = stack.pop() {
        if let Some(w) = watches.as_deref_mut() {
            w.watch(&cgroup.dir);
        }
        match std::fs::read_dir(&cgroup.dir) {
            Ok(entries) => {
                let mut children: Vec<Cgroup> = entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| {
                        let mut name = if cgroup.name == b"/" {
                            Vec::new()
                        } else {
                            cgroup.name.clone()
                        };
                        name.push(b'/');
                        name.extend_from_slice(e.file_name().as_bytes());
                        Cgroup {
                            dir: e.path(),
                            name,
                            id: e.ino(),
                        }
                    })
                    .collect();
                children.sort_by(|a, b| b.name.cmp(&a.name));
                stack.extend(children);
            }
            // removed while we walked
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => unreadable.push((cgroup.dir.clone(), e)),
        }
        found.push(cgroup);
    }
    Ok(Walk {
        cgroups: found.into(),
        unreadable,
        started_ns,
    })
}

/// How many files a per-cgroup sampler may hold open: a quarter of the
/// soft open-file limit (raised to the hard limit first), so that HTTP
/// connections and other samplers keep the rest.
pub fn open_file_budget() -> usize {
    crate::http::raise_fd_limit();
    let soft = crate::http::soft_fd_limit().unwrap_or(1024);
    usize::try_from(soft / 4).unwrap_or(usize::MAX)
}

/// The mount point of the cgroup v2 hierarchy in `/proc/self/mountinfo`
/// text (the first `cgroup2` mount), with the kernel's octal escapes
/// (`\040` for a space) undone.
pub fn cgroup2_mount(mountinfo: &[u8]) -> Option<Vec<u8>> {
    cgroup2_mounts(mountinfo).into_iter().next()
}

/// Every cgroup2 mount point in a `mountinfo` file, in its order.
pub fn cgroup2_mounts(mountinfo: &[u8]) -> Vec<Vec<u8>> {
    lines(mountinfo)
        .filter_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE ..."
            let f: Vec<&[u8]> = fields(line).collect();
            let separator = f.iter().position(|&x| x == b"-")?;
            (separator >= 6 && f.get(separator + 1) == Some(&&b"cgroup2"[..]))
                .then(|| unescape_octal(f[4]))
        })
        .collect()
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hierarchy is walked again only after a directory is made, removed
    /// or moved in it; in between, the last walk is returned as begun now.
    #[test]
    fn a_hierarchy_is_walked_again_only_after_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let count = |w: &Walk| w.cgroups.len();
        let first = shared_walk(root, std::time::Duration::ZERO).unwrap();
        assert_eq!((count(&first), walks_made(root)), (3, 1));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let same = shared_walk(root, std::time::Duration::ZERO).unwrap();
        assert_eq!((count(&same), walks_made(root)), (3, 1));
        assert!(same.started_ns > first.started_ns);
        // a file is not a cgroup: no walk
        std::fs::write(root.join("a/file"), b"x").unwrap();
        shared_walk(root, std::time::Duration::ZERO).unwrap();
        assert_eq!(walks_made(root), 1);
        // made deep down, removed, moved: each a walk
        std::fs::create_dir(root.join("a/b/c")).unwrap();
        let made = shared_walk(root, std::time::Duration::ZERO).unwrap();
        assert_eq!((count(&made), walks_made(root)), (4, 2));
        std::fs::remove_dir(root.join("a/b/c")).unwrap();
        let removed = shared_walk(root, std::time::Duration::ZERO).unwrap();
        assert_eq!((count(&removed), walks_made(root)), (3, 3));
        std::fs::rename(root.join("a/b"), root.join("b")).unwrap();
        let moved = shared_walk(root, std::time::Duration::ZERO).unwrap();
        assert_eq!(walks_made(root), 4);
        let names: Vec<&[u8]> = moved.cgroups.iter().map(|c| c.name.as_slice()).collect();
        assert_eq!(names, [&b"/"[..], b"/a", b"/b"]);
    }

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_mode() {
        let hybrid = b"25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
            42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(hybrid).unwrap(), b"/sys/fs/cgroup/unified");
        let unified =
            b"30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(unified).unwrap(), b"/sys/fs/cgroup");
        let escaped = b"30 23 0:26 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(escaped).unwrap(), b"/mnt/my cgroups");
        // in a container, the host's hierarchy mounted under the root wins
        // over the container's own
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/self")).unwrap();
        let under = root.path().join("sys/fs/cgroup");
        std::fs::write(
            root.path().join("proc/self/mountinfo"),
            format!(
                "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                 31 23 0:26 / {} rw - cgroup2 cgroup2 rw\n",
                under.display()
            ),
        )
        .unwrap();
        assert_eq!(find_mount(root.path()).unwrap(), under);
        // with none under it, the first is looked for under the root
        std::fs::write(
            root.path().join("proc/self/mountinfo"),
            "30 23 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        assert_eq!(
            find_mount(root.path()).unwrap(),
            root.path().join("sys/fs/cgroup/unified")
        );
        let v1_only = b"42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(v1_only), None);
        // a mount point with a dash in it is not the separator
        let dashed = b"30 23 0:26 / /run/cg-2 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(dashed).unwrap(), b"/run/cg-2");
    }
}
