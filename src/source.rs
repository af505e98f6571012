//! Reading kernel-provided text files (procfs, sysfs), and the errors that
//! tell "this machine can't" apart from "this broke".

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A sampler cannot run on this machine (missing file, kernel feature,
/// privilege). Kept as a distinct type so it survives `anyhow` context and
/// the agent can report it as `unsupported` rather than `failed`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// True when `err`, or anything it wraps, is [`Unsupported`].
pub fn is_unsupported(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Unsupported>())
}

/// A parse failure, naming the file and the offending line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}{}", line.as_ref().map(|l| format!(" (line: {l:?})")).unwrap_or_default())]
pub struct ParseError {
    pub path: PathBuf,
    pub reason: String,
    pub line: Option<String>,
}

impl ParseError {
    pub fn new(path: &Path, reason: impl Into<String>, line: Option<&str>) -> Self {
        Self {
            path: path.to_path_buf(),
            reason: reason.into(),
            line: line.map(str::to_string),
        }
    }
}

/// A file kept open and re-read from the start on every refresh: one
/// `lseek` + `read` per refresh instead of a path walk and `open`/`close`.
/// procfs and sysfs regenerate the content on each read from offset 0.
#[derive(Debug)]
pub struct ProcFile {
    path: PathBuf,
    file: File,
    buf: String,
}

impl ProcFile {
    /// Opens `root/relative`. A missing file is [`Unsupported`]; any other
    /// failure is an ordinary error with the path named.
    pub fn open(root: &Path, relative: &str) -> anyhow::Result<Self> {
        let path = root.join(relative.trim_start_matches('/'));
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Unsupported(format!("{} does not exist", path.display())).into())
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("opening {}", path.display())))
            }
        };
        Ok(Self {
            path,
            file,
            buf: String::with_capacity(4096),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's current content.
    pub fn read(&mut self) -> anyhow::Result<&str> {
        self.buf.clear();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_string(&mut self.buf))
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("reading {}", self.path.display()))
            })?;
        Ok(&self.buf)
    }
}

/// Parses `key value...` tables where a header line of names is followed by
/// a line of values with the same prefix (`/proc/net/snmp`, `/proc/net/netstat`).
/// Returns `(section, name, value)` triples; pairs whose value does not parse
/// are left out (a missing value is absent, never zero).
pub fn parse_keyed_tables(text: &str) -> Vec<(&str, &str, i64)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(header) = lines.next() {
        let Some((section, names)) = header.split_once(':') else {
            continue;
        };
        let Some(values) = lines.next() else { break };
        let Some((vsection, values)) = values.split_once(':') else {
            continue;
        };
        if vsection != section {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse::<i64>() {
                out.push((section, name, value));
            }
        }
    }
    out
}

/// Parses a kernel CPU list (`0-3,6,8-9`) into the CPU ids it names.
pub fn parse_cpu_list(text: &str, path: &Path) -> Result<Vec<u32>, ParseError> {
    let text = text.trim();
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    let bad = || ParseError::new(path, "bad CPU list", Some(text));
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo || hi - lo > 1 << 16 {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// The CPUs online (empty if that can't be read), to leave possible but
/// absent CPUs out of per-CPU series. Read at most once a second: several
/// samplers ask during each snapshot, and CPU hotplug is rare.
pub fn online_cpus() -> Arc<Vec<usize>> {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static CACHE: Mutex<Option<(Instant, Arc<Vec<usize>>)>> = Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((read_at, cpus)) = cache.as_ref() {
        if read_at.elapsed() < Duration::from_secs(1) {
            return Arc::clone(cpus);
        }
    }
    let path = Path::new("/sys/devices/system/cpu/online");
    let cpus: Arc<Vec<usize>> = Arc::new(
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| parse_cpu_list(&text, path).ok())
            .map(|cpus| cpus.into_iter().map(|c| c as usize).collect())
            .unwrap_or_default(),
    );
    *cache = Some((Instant::now(), Arc::clone(&cpus)));
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_unsupported_even_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProcFile::open(dir.path(), "proc/stat").unwrap_err();
        assert!(is_unsupported(&err));
        let wrapped = err.context("cpu_usage init");
        assert!(is_unsupported(&wrapped));
        let other = anyhow::anyhow!("boom").context("x");
        assert!(!is_unsupported(&other));
    }

    #[test]
    fn reread_sees_new_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "one").unwrap();
        let mut f = ProcFile::open(dir.path(), "/f").unwrap();
        assert_eq!(f.read().unwrap(), "one");
        std::fs::write(dir.path().join("f"), "two!").unwrap();
        assert_eq!(f.read().unwrap(), "two!");
    }

    #[test]
    fn parses_cpu_lists() {
        let p = Path::new("online");
        assert_eq!(parse_cpu_list("0-1\n", p).unwrap(), vec![0, 1]);
        assert_eq!(
            parse_cpu_list("0-2,5,7-8", p).unwrap(),
            vec![0, 1, 2, 5, 7, 8]
        );
        assert_eq!(parse_cpu_list("0", p).unwrap(), vec![0]);
        assert!(parse_cpu_list("3-1", p).is_err());
        assert!(parse_cpu_list("a-b", p).is_err());
    }

    #[test]
    fn keyed_tables_pair_headers_with_values() {
        let text = "Tcp: A B C\nTcp: 1 -1 x\nUdp: D\nUdp: 4\nBroken: E\n";
        let got = parse_keyed_tables(text);
        assert_eq!(
            got,
            vec![("Tcp", "A", 1), ("Tcp", "B", -1), ("Udp", "D", 4)]
        );
    }
}
