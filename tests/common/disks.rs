//! Disks for tests: loop devices, direct IO, and the disk under a path.

use std::path::Path;

/// A loop device backed by a file in tmpfs (so no other device sees the IO),
/// detached on drop.
pub struct LoopDevice {
    pub path: String,
    _backing: Option<tempfile::NamedTempFile>,
}

impl LoopDevice {
    pub fn new(size: u64) -> Self {
        let backing = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        backing.as_file().set_len(size).unwrap();
        let mut device = Self::over(backing.path());
        device._backing = Some(backing);
        device
    }

    /// A loop device over an existing file.
    pub fn over(file: &Path) -> Self {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self {
            path,
            _backing: None,
        }
    }

    pub fn name(&self) -> &str {
        self.path.trim_start_matches("/dev/")
    }
}

impl Drop for LoopDevice {
    /// Detaches the device, then removes it: a detached loop device stays
    /// in /sys/block and /proc/diskstats, and tests make dozens.
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.path])
            .status();
        const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
        let Some(number) = self
            .name()
            .strip_prefix("loop")
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            return;
        };
        if let Ok(control) = std::fs::File::open("/dev/loop-control") {
            use std::os::fd::AsRawFd;
            // SAFETY: an ioctl on an open fd with an integer argument
            unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_REMOVE, number) };
        }
    }
}

/// N O_DIRECT writes of S bytes of a file on the root filesystem's disk.
pub fn direct_writes(path: &Path, n: usize, s: usize) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    // O_DIRECT needs an aligned buffer
    let layout = std::alloc::Layout::from_size_align(s, 4096).unwrap();
    let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc_zeroed(layout), s) };
    buf.fill(0xab);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    for i in 0..n {
        file.write_all_at(buf, (i * s) as u64).unwrap();
    }
    drop(file);
    unsafe { std::alloc::dealloc(buf.as_mut_ptr(), layout) };
}

/// The whole disk holding `path` (its kernel name, e.g. `vda`).
pub fn disk_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    // a partition's directory sits inside its disk's
    let disk = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    disk.file_name().unwrap().to_str().unwrap().to_string()
}
