//! Reading an agent's snapshot over HTTP (exporter, recorder, hindsight).

use std::time::Duration;

use crate::snapshot::Received;

impl From<ureq::Error> for FetchError {
    fn from(e: ureq::Error) -> Self {
        Self::Request(e)
    }
}

/// A source that is not an agent address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an agent address; expected host:port or http://host:port (e.g. \"127.0.0.1:4241\")")]
pub struct BadSource(pub String);

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer: refused, unreachable, timed out, or an HTTP error status.
    /// (Not a `source`: the message already says it, and `{:#}` would
    /// print it twice.)
    #[error("{0}")]
    Request(ureq::Error),
    /// An answer that is not a Rezolus snapshot.
    #[error("not a Rezolus snapshot: {0}")]
    NotASnapshot(#[from] rmp_serde::decode::Error),
}

/// The URL of an agent's binary snapshot, from `host:port`,
/// `http://host:port` (the scheme in any case; a trailing `/` is fine) or
/// the full `http://host:port/metrics/binary`.
pub fn snapshot_url(source: &str) -> Result<String, BadSource> {
    let trimmed = source.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/metrics/binary").unwrap_or(trimmed);
    let rest = match trimmed.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &trimmed[7..],
        _ => trimmed,
    };
    if rest.is_empty() || rest.contains('/') || rest.contains("://") {
        return Err(BadSource(source.to_string()));
    }
    let url = format!("http://{rest}/metrics/binary");
    // exactly a host and a port (1 to 65535): no spaces, query, user
    match url.parse::<ureq::http::Uri>() {
        Ok(uri)
            if uri.host().is_some_and(|h| !h.is_empty())
                && uri.port_u16().is_some_and(|p| p > 0)
                && uri.path() == "/metrics/binary"
                && uri.query().is_none()
                && !rest.contains('@') =>
        {
            Ok(url)
        }
        _ => Err(BadSource(source.to_string())),
    }
}

/// Nanoseconds since the Unix epoch (0 for a time before it).
pub fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// ureq's resolver, except that an address given as an IP literal (the
/// usual `127.0.0.1:4241`) is used as is, and a name (`localhost:4241`) is
/// resolved at most once per [`RESOLVED_FOR`]. ureq's own resolver, with a
/// timeout set, starts a thread for every request to resolve even a
/// literal: at 10 requests a second that was a tenth of hindsight's CPU.
#[derive(Debug, Default)]
struct LiteralFirst {
    resolver: ureq::unversioned::resolver::DefaultResolver,
    /// The last name resolved (host and port), when, and its addresses.
    last: std::sync::Mutex<Option<(String, std::time::Instant, ResolvedAddrs)>>,
}

type ResolvedAddrs = ureq::unversioned::resolver::ResolvedSocketAddrs;

/// How long a name's addresses are used before it is resolved again.
const RESOLVED_FOR: Duration = Duration::from_secs(10);

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedAddrs, ureq::Error> {
        let literal = uri.host().and_then(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .ok()
        });
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        if let (Some(ip), Some(port)) = (literal, port) {
            let mut addrs = self.empty();
            addrs.push(std::net::SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = format!("{}:{}", uri.host().unwrap_or(""), port.unwrap_or(0));
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((name, at, addrs)) = last.as_ref() {
            if *name == key && at.elapsed() < RESOLVED_FOR {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.resolver.resolve(uri, config, timeout)?;
        *last = Some((key, std::time::Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// An HTTP client for one agent.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    timeout: Duration,
}

impl Client {
    /// `timeout` bounds a whole request (connect, send, receive).
    pub fn new(url: String, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            LiteralFirst::default(),
        );
        Self {
            agent,
            url,
            timeout,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The snapshot's bytes, as served.
    ///
    /// The HTTP library times requests with the process's monotonic clock,
    /// which a tool such as libfaketime can step: a timeout that fires
    /// before half its time has passed on the kernel's clock is such a step,
    /// not a slow agent, and the request is made once more.
    pub fn fetch_bytes(&self) -> Result<Vec<u8>, FetchError> {
        let start = crate::ticker::mono_now();
        match self.fetch_once() {
            Err(FetchError::Request(ureq::Error::Timeout(_)))
                if crate::ticker::mono_now().saturating_sub(start) < self.timeout / 2 =>
            {
                self.fetch_once()
            }
            other => other,
        }
    }

    fn fetch_once(&self) -> Result<Vec<u8>, FetchError> {
        let mut response = self.agent.get(&self.url).call()?;
        Ok(response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()?)
    }

    /// The snapshot, decoded.
    pub fn fetch(&self) -> Result<Received, FetchError> {
        Ok(Received::from_msgpack(&self.fetch_bytes()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses() {
        let url = "http://127.0.0.1:4241/metrics/binary";
        for s in [
            "127.0.0.1:4241",
            "http://127.0.0.1:4241",
            "http://127.0.0.1:4241/",
            "http://127.0.0.1:4241/metrics/binary",
        ] {
            assert_eq!(snapshot_url(s).unwrap(), url, "{s}");
        }
        assert_eq!(
            snapshot_url("http://localhost:4241").unwrap(),
            "http://localhost:4241/metrics/binary"
        );
        assert_eq!(
            snapshot_url("[::1]:4241").unwrap(),
            "http://[::1]:4241/metrics/binary"
        );
        for bad in [
            "",
            "https://x:1",
            "http://x:1/other",
            "ftp://x",
            "not a url",
            "x y:1",
            ":4241",
        ] {
            assert!(snapshot_url(bad).is_err(), "{bad}");
        }
        assert_eq!(snapshot_url("HTTP://127.0.0.1:4241/").unwrap(), url);
    }

    /// A server on `addr` answering each connection's first request with
    /// `body`; its port.
    fn serve(addr: &str, body: &'static [u8]) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            }
        });
        port
    }

    /// Literal IPv4 and IPv6 addresses are used as they are, and a name
    /// still goes through the resolver.
    #[test]
    fn literal_addresses_and_names_both_reach_the_agent() {
        let v4 = serve("127.0.0.1:0", b"four");
        let client = Client::new(format!("http://127.0.0.1:{v4}/x"), Duration::from_secs(5));
        assert_eq!(client.fetch_bytes().unwrap(), b"four");
        // a name is resolved (each address tried in turn)
        let named = Client::new(format!("http://localhost:{v4}/x"), Duration::from_secs(5));
        assert_eq!(named.fetch_bytes().unwrap(), b"four");
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let port = serve("[::1]:0", b"six");
            let client = Client::new(format!("http://[::1]:{port}/x"), Duration::from_secs(5));
            assert_eq!(client.fetch_bytes().unwrap(), b"six");
        }
        // nothing listens on a closed port: an error, not a hang
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(
            format!("http://127.0.0.1:{closed}/x"),
            Duration::from_secs(5),
        );
        assert!(client.fetch_bytes().is_err());
    }
}
