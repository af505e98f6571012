//! The systemd units in config/systemd: each starts a real role of the
//! binary with a shipped config, and systemd accepts it.

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;

#[test]
fn units_start_real_roles_with_shipped_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(args[0], "/usr/local/bin/rezolus", "{}", path.display());
        // the config it names is one the repository ships
        let config = args.last().unwrap();
        let name = config
            .strip_prefix("/etc/rezolus/")
            .expect("config under /etc/rezolus");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name)
                .is_file(),
            "{}: no config/{name}",
            path.display()
        );
        // the role exists: `rezolus [ROLE] --help` succeeds
        let role = &args[1..args.len() - 1];
        let help = Command::new(BIN).args(role).arg("--help").output().unwrap();
        assert!(
            help.status.success(),
            "{}: rezolus {role:?} --help failed",
            path.display()
        );
        // for systemd: the same unit with this build's binary
        let copy = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text.replace("/usr/local/bin/rezolus", BIN)).unwrap();
        units.push(copy);
    }
    assert_eq!(units.len(), 3, "{units:?}");
    // scripts/deps installs systemd: without systemd-analyze this fails
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian package systemd, installed by scripts/deps): {e}")
        });
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
