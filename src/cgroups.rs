//! The cgroup v2 hierarchy: where it is mounted, for the per-cgroup samplers.

use crate::source::{fields, lines};

/// The mount point of the cgroup v2 hierarchy in `/proc/self/mountinfo`
/// text (the first `cgroup2` mount), with the kernel's octal escapes
/// (`\040` for a space) undone.
pub fn cgroup2_mount(mountinfo: &[u8]) -> Option<Vec<u8>> {
    lines(mountinfo).find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE ..."
        let f: Vec<&[u8]> = fields(line).collect();
        let separator = f.iter().position(|&x| x == b"-")?;
        (separator >= 6 && f.get(separator + 1) == Some(&&b"cgroup2"[..]))
            .then(|| unescape_octal(f[4]))
    })
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
        let v1_only = b"42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(v1_only), None);
        // a mount point with a dash in it is not the separator
        let dashed = b"30 23 0:26 / /run/cg-2 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(dashed).unwrap(), b"/run/cg-2");
    }
}
