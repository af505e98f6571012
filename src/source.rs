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

/// A parse failure, naming the file and the offending line (escaped as a
/// label value would be, see [`label_value`]).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}{}", line.as_ref().map(|l| format!(" (line: {l:?})")).unwrap_or_default())]
pub struct ParseError {
    pub path: PathBuf,
    pub reason: String,
    pub line: Option<String>,
}

impl ParseError {
    pub fn new(path: &Path, reason: impl Into<String>, line: Option<&[u8]>) -> Self {
        Self {
            path: path.to_path_buf(),
            reason: reason.into(),
            line: line.map(label_value),
        }
    }
}

/// A file kept open and re-read from the start on every refresh: one
/// `lseek` + `read` per refresh instead of a path walk and `open`/`close`.
/// procfs and sysfs regenerate the content on each read from offset 0.
///
/// The content is bytes, not text: kernel files may hold names in any
/// encoding (an interface may be called `bad\xff`), so parsers split lines
/// and fields themselves and one odd line costs only that line.
#[derive(Debug)]
pub struct ProcFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Whether malformed lines have been logged already (once per file).
    warned: bool,
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
            buf: Vec::with_capacity(4096),
            warned: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's current content.
    pub fn read(&mut self) -> anyhow::Result<&[u8]> {
        self.buf.clear();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_end(&mut self.buf))
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("reading {}", self.path.display()))
            })?;
        Ok(&self.buf)
    }

    /// Logs the lines a parser skipped: a warning the first time this file
    /// has any, at debug level after that (a file read every second must not
    /// flood the log).
    pub fn report(&mut self, skipped: Option<(usize, String)>) {
        let Some((count, line)) = skipped else { return };
        let path = self.path.display();
        if self.warned {
            tracing::debug!("{path}: skipped {count} malformed line(s), first: {line:?}");
        } else {
            self.warned = true;
            tracing::warn!(
                "{path}: skipped {count} malformed line(s), first: {line:?} \
                 (their values are left out; further occurrences are logged at debug level)"
            );
        }
    }
}

/// The lines a parser could not use (each costs only itself).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped<'a> {
    pub count: usize,
    /// The first skipped line, raw.
    pub first: Option<&'a [u8]>,
}

impl<'a> Skipped<'a> {
    pub fn add(&mut self, line: &'a [u8]) {
        self.count += 1;
        self.first.get_or_insert(line);
    }

    /// How many lines were skipped and the first one (escaped), if any:
    /// what [`ProcFile::report`] logs.
    pub fn summary(&self) -> Option<(usize, String)> {
        self.first.map(|line| (self.count, label_value(line)))
    }
}

/// Parses each non-empty line of `text` with `line`: a line it returns
/// `Some` for is kept, one it returns `None` for is skipped and reported,
/// unless `ignore` says it is an expected non-data line (a header).
pub fn parse_lines<'a, T>(
    text: &'a [u8],
    ignore: impl Fn(&[u8]) -> bool,
    line: impl Fn(&'a [u8]) -> Option<T>,
) -> (Vec<T>, Skipped<'a>) {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for l in lines(text) {
        match line(l) {
            Some(item) => out.push(item),
            None if ignore(l) => {}
            None => skipped.add(l),
        }
    }
    (out, skipped)
}

/// The non-empty lines of kernel text, as bytes, without their newline.
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// The fields of a line separated by ASCII whitespace, as the kernel writes
/// them (`%s %llu ...`, padded with spaces).
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
}

/// A decimal `u64` field (digits only, no sign, no overflow).
pub fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 20 {
        return None;
    }
    field.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// A decimal `i64` field, optionally negative.
pub fn parse_i64(field: &[u8]) -> Option<i64> {
    match field.strip_prefix(b"-") {
        Some(digits) => {
            let magnitude = parse_u64(digits)?;
            // -2^63 is the one magnitude without a positive counterpart
            (magnitude <= 1 << 63).then(|| (magnitude as i64).wrapping_neg())
        }
        None => i64::try_from(parse_u64(field)?).ok(),
    }
}

/// A name taken from kernel text (an interface or device name: any bytes
/// but `/`, NUL and whitespace) made into a label value, losslessly:
/// valid UTF-8 is kept as it is, except that `\` becomes `\\`; every byte
/// that is not part of valid UTF-8, and every ASCII control character,
/// becomes `\xHH` (two lowercase hex digits). So `bad\xff\xfe` (bytes
/// `62 61 64 ff fe`) is the label value `bad\xff\xfe`, and distinct names
/// give distinct labels.
pub fn label_value(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Parses `key value...` tables where a header line of names is followed by
/// a line of values with the same prefix (`/proc/net/snmp`, `/proc/net/netstat`).
/// Returns `(section, name, value)` triples; pairs whose value does not parse
/// are left out (a missing value is absent, never zero). A header or value
/// line that cannot be paired (not UTF-8, no `:`, another section) costs only
/// its own table, and is reported in [`Skipped`].
pub fn parse_keyed_tables(text: &[u8]) -> (Vec<(&str, &str, i64)>, Skipped<'_>) {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    fn split(line: &[u8]) -> Option<(&str, &[u8])> {
        let colon = line.iter().position(|&b| b == b':')?;
        let section = std::str::from_utf8(&line[..colon]).ok()?;
        Some((section, &line[colon + 1..]))
    }
    let mut lines = lines(text).peekable();
    while let Some(header) = lines.next() {
        let Some((section, names)) = split(header) else {
            skipped.add(header);
            continue;
        };
        // the value line must follow with the same section; otherwise this
        // header is the odd one and the next line starts a new table
        let Some((vsection, values)) = lines.peek().and_then(|l| split(l)) else {
            skipped.add(header);
            continue;
        };
        if vsection != section {
            skipped.add(header);
            continue;
        }
        lines.next();
        for (name, value) in fields(names).zip(fields(values)) {
            if let (Ok(name), Some(value)) = (std::str::from_utf8(name), parse_i64(value)) {
                out.push((section, name, value));
            }
        }
    }
    (out, skipped)
}

/// Parses a kernel CPU list (`0-3,6,8-9`) into the CPU ids it names.
pub fn parse_cpu_list(text: &[u8], path: &Path) -> Result<Vec<u32>, ParseError> {
    let bad = || ParseError::new(path, "bad CPU list", Some(text));
    let text = std::str::from_utf8(text).map_err(|_| bad())?.trim();
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
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

/// The root [`online_cpus`] reads `sys` under: `/` unless the agent's
/// `[general] root` says otherwise.
static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the root [`online_cpus`] reads under, once, before any sampler
/// starts; later calls are ignored.
pub fn set_root(root: &Path) {
    let _ = ROOT.set(root.to_path_buf());
}

/// The root set by [`set_root`], `/` if none was.
pub fn root() -> &'static Path {
    ROOT.get().map_or(Path::new("/"), PathBuf::as_path)
}

/// The CPUs online, from `ROOT/sys/devices/system/cpu/online` (empty if
/// that can't be read), to leave possible but absent CPUs out of per-CPU
/// series. Read at most once a second: several samplers ask during each
/// snapshot, and CPU hotplug is rare.
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
    let path = root().join("sys/devices/system/cpu/online");
    let path = path.as_path();
    let cpus: Arc<Vec<usize>> = Arc::new(
        std::fs::read(path)
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
        assert_eq!(f.read().unwrap(), b"one");
        std::fs::write(dir.path().join("f"), "two!").unwrap();
        assert_eq!(f.read().unwrap(), b"two!");
    }

    #[test]
    fn parses_cpu_lists() {
        let p = Path::new("online");
        assert_eq!(parse_cpu_list(b"0-1\n", p).unwrap(), vec![0, 1]);
        assert_eq!(
            parse_cpu_list(b"0-2,5,7-8", p).unwrap(),
            vec![0, 1, 2, 5, 7, 8]
        );
        assert_eq!(parse_cpu_list(b"0", p).unwrap(), vec![0]);
        assert!(parse_cpu_list(b"3-1", p).is_err());
        assert!(parse_cpu_list(b"a-b", p).is_err());
        assert!(parse_cpu_list(b"0-\xff", p).is_err());
    }

    #[test]
    fn keyed_tables_pair_headers_with_values() {
        let text = b"Tcp: A B C\nTcp: 1 -1 x\nUdp: D\nUdp: 4\nBroken: E\n";
        let (got, skipped) = parse_keyed_tables(text);
        assert_eq!(
            got,
            vec![("Tcp", "A", 1), ("Tcp", "B", -1), ("Udp", "D", 4)]
        );
        assert_eq!(skipped.count, 1);
    }

    #[test]
    fn keyed_tables_survive_an_odd_line() {
        // a stray line between tables, and one that is not UTF-8: each costs
        // only itself, and the tables after it are still paired
        let text = b"Ip: A\nIp: 1\nstray\n\xff\xfe: X\nTcp: B C\nTcp: 2 3\n";
        let (got, skipped) = parse_keyed_tables(text);
        assert_eq!(got, vec![("Ip", "A", 1), ("Tcp", "B", 2), ("Tcp", "C", 3)]);
        assert_eq!(skipped.count, 2);
        assert_eq!(skipped.first, Some(&b"stray"[..]));
    }

    #[test]
    fn label_values_escape_invalid_bytes_losslessly() {
        assert_eq!(label_value(b"eth0"), "eth0");
        assert_eq!(label_value(b"bad\xff\xfe"), "bad\\xff\\xfe");
        assert_eq!(label_value("wlan-\u{1f600}".as_bytes()), "wlan-\u{1f600}");
        // a literal backslash is doubled, so it can't be confused with an escape
        assert_eq!(label_value(b"a\\xff"), "a\\\\xff");
        assert_ne!(label_value(b"a\\xff"), label_value(b"a\xff"));
        assert_eq!(label_value(b"tab\there"), "tab\\x09here");
        // a truncated multi-byte sequence
        assert_eq!(label_value(b"x\xe2\x82"), "x\\xe2\\x82");
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        let f: Vec<&[u8]> = fields(b"  a\tb  c ").collect();
        assert_eq!(f, vec![&b"a"[..], b"b", b"c"]);
    }
}
