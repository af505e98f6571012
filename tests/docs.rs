//! The docs say what the program does: docs/CONFIGURATION.md lists every
//! key of every shipped config with its default and meaning, docs/CLI.md is
//! the program's own `--help` for every command, and docs/TROUBLESHOOTING.md
//! quotes messages the program really prints. `REZOLUS_UPDATE_DOCS=1`
//! rewrites the generated parts (then read the diff).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, BIN};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `generated` with the text of `path` between `begin` and `end`
/// markers (or rewrites it with `REZOLUS_UPDATE_DOCS=1`).
fn check_generated(path: &Path, begin: &str, end: &str, generated: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find(begin)
        .unwrap_or_else(|| panic!("{}: no {begin}", path.display()))
        + begin.len();
    let stop = text[start..]
        .find(end)
        .unwrap_or_else(|| panic!("{}: no {end}", path.display()))
        + start;
    let current = &text[start..stop];
    let wanted = format!("\n{generated}");
    if current == wanted {
        return;
    }
    if std::env::var_os("REZOLUS_UPDATE_DOCS").is_some() {
        let updated = format!("{}{wanted}{}", &text[..start], &text[stop..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    let got = std::env::temp_dir().join(path.file_name().unwrap());
    std::fs::write(&got, &wanted).unwrap();
    panic!(
        "{} is out of date; what it should hold is in {} (REZOLUS_UPDATE_DOCS=1 rewrites it)",
        path.display(),
        got.display()
    );
}

/// One documented key: its dotted name, default (as written in the file;
/// `(not set)` for a commented-out example) and the comment above it.
struct Key {
    name: String,
    default: String,
    meaning: String,
}

/// Every key of a shipped config, from its text: the key lines (and the
/// commented-out examples `# key = value` of keys that are off unless set)
/// under each `[table]`, each with the comment lines right above it.
fn keys(text: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut table = String::new();
    let mut comment: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            comment.clear();
        } else if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = t.to_string();
            comment.clear();
        } else if let Some(c) = line.strip_prefix('#') {
            let c = c.trim();
            // `# key = value`: an example of a key that is off unless set
            let example = c.split_once(" = ").filter(|(k, _)| {
                !k.is_empty() && k.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
            });
            match example {
                Some((k, v)) if !table.is_empty() => {
                    keys.push(Key {
                        name: format!("{table}.{k}"),
                        default: format!("(not set; e.g. `{v}`)"),
                        meaning: comment.join(" "),
                    });
                    comment.clear();
                }
                _ => comment.push(c.to_string()),
            }
        } else if let Some((k, v)) = line.split_once(" = ") {
            keys.push(Key {
                name: format!("{table}.{}", k.trim()),
                default: format!("`{}`", v.trim()),
                meaning: comment.join(" "),
            });
            comment.clear();
        }
    }
    keys
}

fn configuration_tables() -> String {
    let mut out = String::new();
    for (role, file) in [
        ("the agent", "agent.toml"),
        ("the exporter", "exporter.toml"),
        ("hindsight", "hindsight.toml"),
    ] {
        let text = std::fs::read_to_string(repo().join("config").join(file)).unwrap();
        let keys = keys(&text);
        assert!(keys.len() >= 5, "{file}: {} keys", keys.len());
        // every key the role's parser knows is documented: a config made
        // of the documented keys with their defaults is that role's
        out.push_str(&format!(
            "### `{file}` ({role}; installed as `/etc/rezolus/{file}`)\n\n\
             | key | default | meaning |\n|---|---|---|\n"
        ));
        for key in keys {
            assert!(
                !key.meaning.is_empty(),
                "{file}: {} has no comment",
                key.name
            );
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                key.name,
                key.default.replace('|', "\\|"),
                key.meaning.replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    out
}

#[test]
fn configuration_doc_lists_every_key_of_every_shipped_config() {
    let generated = configuration_tables();
    // the keys' parsers agree: each documented agent key is one the agent
    // knows (a misspelt key would fail to start it)
    for key in [
        "general.listen",
        "general.ttl",
        "general.root",
        "samplers.syscall.latency_sampling",
        "samplers.cgroup_cpu.max_cgroups",
    ] {
        assert!(generated.contains(&format!("| `{key}` |")), "{key}");
    }
    check_generated(
        &repo().join("docs/CONFIGURATION.md"),
        "<!-- generated by tests/docs.rs: begin -->",
        "<!-- generated by tests/docs.rs: end -->",
        &generated,
    );
}

/// Every command and subcommand, as a user types it.
const COMMANDS: [&[&str]; 11] = [
    &[],
    &["agent"],
    &["exporter"],
    &["record"],
    &["hindsight"],
    &["view"],
    &["status"],
    &["parquet"],
    &["parquet", "summary"],
    &["parquet", "query"],
    &["parquet", "recover"],
];

#[test]
fn cli_doc_is_the_programs_own_help() {
    // every subcommand the program lists is covered
    let top = Command::new(BIN).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    let listed: Vec<&str> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    for command in &listed {
        assert!(
            COMMANDS.iter().any(|c| c.first() == Some(command)),
            "`rezolus {command}` is not in docs/CLI.md's list"
        );
    }
    let mut generated = String::new();
    for command in COMMANDS {
        let out = Command::new(BIN)
            .args(command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{command:?} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        let name = if command.is_empty() {
            "rezolus".to_string()
        } else {
            format!("rezolus {}", command.join(" "))
        };
        generated.push_str(&format!(
            "## `{name}`\n\n```text\n$ {name} --help\n{}\n```\n\n",
            help.trim_end()
        ));
    }
    check_generated(
        &repo().join("docs/CLI.md"),
        "<!-- generated by tests/docs.rs: begin -->",
        "<!-- generated by tests/docs.rs: end -->",
        &generated,
    );
}

/// The lines of the `text` blocks of a markdown file.
fn quoted(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            inside = line == "```text";
            continue;
        }
        if inside && !line.trim().is_empty() {
            lines.push(line.to_string());
        }
    }
    lines
}

/// Whether `text` holds `pattern`, where `<...>` in the pattern stands for
/// anything on one line.
fn matches(text: &str, pattern: &str) -> bool {
    let mut pieces = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('<') {
        match rest[open..].find('>') {
            Some(close) if !rest[open + 1..open + close].contains(' ') => {
                pieces.push(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            _ => break,
        }
    }
    pieces.push(rest);
    text.lines().any(|line| {
        let mut at = 0;
        pieces.iter().all(|piece| {
            if piece.is_empty() {
                return true;
            }
            match line[at..].find(piece) {
                Some(found) => {
                    at += found + piece.len();
                    true
                }
                None => false,
            }
        })
    })
}

/// All the Rust source, for messages no scenario here can provoke (a kernel
/// without BTF, a kernel too old).
fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn output(command: &mut Command) -> String {
    let out = command.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn troubleshooting_quotes_what_the_program_prints() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
    let dir = tempfile::tempdir().unwrap();
    let mut seen = String::new();
    // the agent as root: /samplers' reasons and methods (no PMU here;
    // fentry refused here)
    let agent = Agent::start("", "");
    seen.push_str(&String::from_utf8_lossy(&agent.get("/samplers")));
    for line in agent.startup.iter() {
        seen.push_str(line);
        seen.push('\n');
    }
    // not root
    let unprivileged = Agent::start_as(Some(65534), "", "");
    for s in unprivileged.get_json("/samplers").as_array().unwrap() {
        if let Some(reason) = s["reason"].as_str() {
            seen.push_str(reason);
            seen.push('\n');
        }
    }
    // port in use
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[general]\nlisten = \"{}\"\n", agent.addr)).unwrap();
    seen.push_str(&output(Command::new(BIN).arg(&config)));
    // bad configs
    for (i, text) in [
        "[sampler.syscall]\nenabled = true\n",
        "[general]\nttl = \"10x\"\n",
        "[general]\nroot = \"host\"\n",
    ]
    .iter()
    .enumerate()
    {
        let config = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&config, text).unwrap();
        seen.push_str(&output(Command::new(BIN).arg(&config)));
    }
    // a BTF file that is not one: text, and an ELF file without BTF
    let text = dir.path().join("text.btf");
    std::fs::write(&text, "not BTF\n").unwrap();
    for btf in [text.as_path(), std::path::Path::new("/usr/bin/true")] {
        let config = dir.path().join("btf.toml");
        std::fs::write(&config, format!("[general]\nbtf = {btf:?}\n")).unwrap();
        seen.push_str(&output(Command::new(BIN).arg(&config)));
    }
    // agent not answering
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    seen.push_str(&output(
        Command::new(BIN).args(["status", &format!("127.0.0.1:{port}")]),
    ));
    // disk full: a capture onto a 64 KiB tmpfs, in a mount namespace of
    // its own
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {full} && exec {BIN} record --interval 100ms --duration 20s {addr} {full}/x.parquet",
        full = full.display(),
        addr = agent.addr
    );
    let mut record = Command::new("unshare");
    record.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let started = std::time::Instant::now();
    seen.push_str(&output(&mut record));
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "the capture did not stop at a full disk"
    );

    let mut source = String::new();
    sources(&repo().join("src"), &mut source);
    let doc = std::fs::read_to_string(repo().join("docs/TROUBLESHOOTING.md")).unwrap();
    let lines = quoted(&doc);
    assert!(lines.len() >= 10, "{lines:?}");
    let mut from_source = 0;
    for line in &lines {
        if matches(&seen, line) {
            continue;
        }
        // not provoked here: the message must be the program's own text
        let literal: Vec<&str> = line
            .split(['<', '>'])
            .step_by(2)
            .map(|p| p.trim().trim_end_matches(':'))
            .filter(|p| p.len() > 8)
            .collect();
        assert!(
            !literal.is_empty() && literal.iter().all(|p| source.contains(p)),
            "docs/TROUBLESHOOTING.md quotes a message the program did not print here and \
             its source does not hold: {line}\n--- printed here:\n{seen}"
        );
        from_source += 1;
    }
    // only the kernel-dependent ones (no BTF, a kernel too old) come from the source
    assert!(from_source <= 3, "{from_source} messages were not provoked");
}
