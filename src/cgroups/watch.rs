//! Which cgroups can have changed: an inotify watch on each cgroup's
//! directory, so that a sampler reads again only the cgroups that have
//! tasks, or that have lost their last task or been removed since it last
//! read them.
//!
//! The kernel writes `populated 1` to a cgroup's `cgroup.events` while the
//! cgroup or one of its descendants has a live task, and notifies a change
//! of that file as `IN_MODIFY` on it (`kernfs_notify`, from a work queue).
//! Two things about that notification shape this module:
//! - The kernel sends it only if the file's inode is in the inode cache
//!   (it looks it up, and skips the event when it is not there, e.g. after
//!   memory pressure evicted it). So the file itself is watched: a watch
//!   holds its inode. A watch on the directory alone missed entries after
//!   `echo 2 > /proc/sys/vm/drop_caches`, for good.
//! - It is rate-limited: at most one per file every `HZ/100` jiffies (10
//!   to 13 ms), later ones deferred to the end of that interval. So a
//!   cgroup stays read at every snapshot for [`NOTIFY_GRACE`] after each
//!   change seen: a task that comes back within the interval is read
//!   although its event is still held back.
//!
//! Removing a cgroup (`rmdir`) is `IN_DELETE` of its name on its parent's
//! directory, at once. (`IN_DELETE_SELF` on its own directory would come
//! only when the last reference to it goes, and an open `cpu.stat` in it
//! is one.) A cgroup whose subtree has no task cannot use CPU, so its
//! `cpu.stat` cannot change until a task enters it, which is again an
//! event.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The file whose changes count.
const EVENTS: &str = "cgroup.events";

/// How long after a change is seen a cgroup is still read at every
/// snapshot, whatever `cgroup.events` said: longer than the kernel's
/// notification interval (`CGROUP_FILE_NOTIFY_MIN_INTV`, `HZ/100` jiffies
/// rounded up: 10 to 13 ms) with room for the timer and the work queue.
pub const NOTIFY_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// A non-blocking inotify instance: what [`Watches`] and [`Hierarchy`]
/// share.
struct Inotify {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Inotify {
    fn new(buf_len: usize) -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags only.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            buf: vec![0; buf_len],
        })
    }

    /// Adds a watch on `dir` for `mask`; its descriptor.
    fn add(&self, dir: &Path, mask: u32) -> io::Result<i32> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    fn remove(&self, wd: i32) {
        // SAFETY: a valid descriptor; a stale wd is refused (EINVAL).
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
    }

    /// Every event queued, each given to `f`. Never blocks; stops at
    /// `EAGAIN` (drained) or any other error (nothing more to learn).
    fn drain(&mut self, mut f: impl FnMut(i32, u32, &[u8])) {
        loop {
            // SAFETY: reading into our own buffer, at most its length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
            for (wd, mask, name) in events(&self.buf[..n as usize]) {
                f(wd, mask, name);
            }
        }
    }
}

/// Inotify watches for cgroups: each cgroup's `cgroup.events` and its
/// directory (for its children's removal), both for one cgroup name.
pub struct Watches {
    inotify: Inotify,
    names: HashMap<i32, Vec<u8>>,
}

/// What [`Watches::changed`] found.
#[derive(Debug, PartialEq)]
pub enum Changes {
    /// These cgroups (by name) had events.
    Some(Vec<Vec<u8>>),
    /// The kernel's event queue overflowed: any cgroup may have changed.
    All,
}

impl Watches {
    /// A new, empty set of watches (an inotify instance, non-blocking).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inotify: Inotify::new(64 << 10)?,
            names: HashMap::new(),
        })
    }

    /// Watches cgroup `name`, whose directory is `dir`: its
    /// `cgroup.events` for changes and the directory for its children's
    /// removal. The two watch descriptors, or the error (`ENOENT`: no
    /// `cgroup.events`, as in the root cgroup; `ENOSPC`: the user's
    /// `fs.inotify.max_user_watches` reached), in which case the caller
    /// reads that cgroup every time.
    pub fn add(&mut self, dir: &Path, name: &[u8]) -> io::Result<[i32; 2]> {
        let events = self.inotify.add(&dir.join(EVENTS), libc::IN_MODIFY)?;
        let children = libc::IN_DELETE | libc::IN_DELETE_SELF | libc::IN_ONLYDIR;
        let dir_wd = match self.inotify.add(dir, children) {
            Ok(wd) => wd,
            Err(e) => {
                self.inotify.remove(events);
                return Err(e);
            }
        };
        for wd in [events, dir_wd] {
            self.names.insert(wd, name.to_vec());
        }
        Ok([events, dir_wd])
    }

    /// Stops the watches `add` returned (already gone if the cgroup was
    /// removed).
    pub fn remove(&mut self, wds: [i32; 2]) {
        for wd in wds {
            if self.names.remove(&wd).is_some() {
                self.inotify.remove(wd);
            }
        }
    }

    /// The cgroups with events since the last call: `cgroup.events`
    /// modified, or the cgroup removed (named by its parent's event: the
    /// parent's name, `/`, the directory's). Never blocks.
    pub fn changed(&mut self) -> Changes {
        let mut names = Vec::new();
        let mut overflow = false;
        let known = &mut self.names;
        self.inotify.drain(|wd, mask, name| {
            overflow |= mask & libc::IN_Q_OVERFLOW != 0;
            if let Some(cgroup) = known.get(&wd) {
                if mask & libc::IN_DELETE != 0 && mask & libc::IN_ISDIR != 0 {
                    names.push(child_name(cgroup, name));
                } else if mask & (libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_IGNORED) != 0 {
                    // IN_MODIFY comes only from the cgroup.events watch
                    names.push(cgroup.clone());
                }
            }
            if mask & libc::IN_IGNORED != 0 {
                known.remove(&wd);
            }
        });
        if overflow {
            Changes::All
        } else {
            Changes::Some(names)
        }
    }
}

/// Inotify watches on every directory of a cgroup hierarchy, each added
/// before the directory is listed, so that a cgroup made, removed or moved
/// anywhere after its parent was listed is an event: [`super::shared_walk`]
/// walks the hierarchy again only after one.
pub struct Hierarchy {
    inotify: Inotify,
    /// Every directory listed has its watch (else every walk is needed).
    complete: bool,
}

impl Hierarchy {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inotify: Inotify::new(16 << 10)?,
            complete: true,
        })
    }

    /// Watches `dir` for child directories made, removed or moved; call it
    /// before listing `dir`. A watch that cannot be had (`ENOSPC`: the
    /// user's `fs.inotify.max_user_watches`) makes [`Self::changed`] say
    /// true from then on.
    pub fn watch(&mut self, dir: &Path) {
        let mask = libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_FROM
            | libc::IN_MOVED_TO
            | libc::IN_ONLYDIR;
        // a directory removed meanwhile (ENOENT) is no loss: its parent's
        // watch reports the removal
        if let Err(e) = self.inotify.add(dir, mask) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                self.complete = false;
            }
        }
    }

    /// Whether a directory was made, removed or moved under a watched one
    /// since the watches were added (or the last call said so). Never
    /// blocks.
    pub fn changed(&mut self) -> bool {
        let mut changed = !self.complete;
        self.inotify.drain(|_, mask, _| {
            changed |= mask & (libc::IN_ISDIR | libc::IN_Q_OVERFLOW) != 0;
        });
        changed
    }
}

/// The events in `bytes` (whole `struct inotify_event`s, as read): watch
/// descriptor, mask and name (the NUL padding removed; empty for an event
/// on the watched directory itself).
pub fn events(bytes: &[u8]) -> impl Iterator<Item = (i32, u32, &[u8])> {
    const HEADER: usize = 16; // wd, mask, cookie, len: 4 bytes each
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = bytes.get(at..at + HEADER)?;
        let word =
            |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        let name = bytes.get(at + HEADER..at + HEADER + len)?;
        at += HEADER + len;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some((wd, mask, &name[..end]))
    })
}

/// The name of cgroup `parent`'s child directory `leaf`.
pub fn child_name(parent: &[u8], leaf: &[u8]) -> Vec<u8> {
    let mut name = parent.to_vec();
    if name.last() != Some(&b'/') {
        name.push(b'/');
    }
    name.extend_from_slice(leaf);
    name
}

/// Whether `cgroup.events` in `dir` says the cgroup's subtree has a live
/// task (`populated 1`). `None` when the file cannot be read (the root
/// cgroup has none) or has no `populated` line.
pub fn populated(dir: &Path) -> Option<bool> {
    let text = std::fs::read(dir.join(EVENTS)).ok()?;
    parse_populated(&text)
}

/// The `populated` value of a `cgroup.events` file's text.
pub fn parse_populated(text: &[u8]) -> Option<bool> {
    crate::source::lines(text).find_map(|line| {
        let mut f = crate::source::fields(line);
        (f.next()? == b"populated").then(|| f.next().map(|v| v != b"0"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(wd: i32, mask: u32, name: &[u8], padded: usize) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&wd.to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(padded as u32).to_ne_bytes());
        let mut n = name.to_vec();
        n.resize(padded, 0);
        out.extend_from_slice(&n);
        out
    }

    #[test]
    fn events_are_split_with_their_names_unpadded() {
        let mut bytes = event(3, libc::IN_MODIFY, b"cgroup.events", 16);
        bytes.extend(event(4, libc::IN_DELETE_SELF, b"", 0));
        bytes.extend(event(5, libc::IN_MODIFY, b"memory.events", 32));
        // a truncated last event is left out, not misread
        bytes.extend(&event(6, libc::IN_MODIFY, b"x", 16)[..10]);
        let got: Vec<_> = events(&bytes).collect();
        assert_eq!(
            got,
            vec![
                (3, libc::IN_MODIFY, &b"cgroup.events"[..]),
                (4, libc::IN_DELETE_SELF, &b""[..]),
                (5, libc::IN_MODIFY, &b"memory.events"[..]),
            ]
        );
    }

    #[test]
    fn a_removed_child_is_named_from_its_parent() {
        assert_eq!(child_name(b"/", b"a"), b"/a");
        assert_eq!(child_name(b"/a", b"b"), b"/a/b");
    }

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert_eq!(parse_populated(b"populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated(b"populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated(b"frozen 0\n"), None);
        assert_eq!(parse_populated(b"populated\n"), None);
    }
}
