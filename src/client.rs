//! Reading an agent's snapshot over HTTP (exporter, recorder, hindsight).

use std::time::Duration;

use crate::snapshot::Received;

/// The URL of an agent's binary snapshot, from `host:port`,
/// `http://host:port` (a trailing `/` is fine) or the full
/// `http://host:port/metrics/binary`.
pub fn snapshot_url(source: &str) -> Result<String, String> {
    let trimmed = source.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/metrics/binary").unwrap_or(trimmed);
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if rest.is_empty() || rest.contains('/') || rest.contains("://") {
        return Err(format!(
            "{source:?} is not an agent address; expected host:port or http://host:port (e.g. \"127.0.0.1:4241\")"
        ));
    }
    Ok(format!("http://{rest}/metrics/binary"))
}

/// Nanoseconds since the Unix epoch (0 for a time before it).
pub fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An HTTP client for one agent.
pub struct Client {
    agent: ureq::Agent,
    url: String,
}

impl Client {
    /// `timeout` bounds a whole request (connect, send, receive).
    pub fn new(url: String, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        Self { agent, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The snapshot's bytes, as served.
    pub fn fetch_bytes(&self) -> Result<Vec<u8>, String> {
        let mut response = self
            .agent
            .get(&self.url)
            .call()
            .map_err(|e| e.to_string())?;
        response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())
    }

    /// The snapshot, decoded.
    pub fn fetch(&self) -> Result<Received, String> {
        let bytes = self.fetch_bytes()?;
        Received::from_msgpack(&bytes).map_err(|e| format!("not a Rezolus snapshot: {e}"))
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
        for bad in ["", "https://x:1", "http://x:1/other", "ftp://x"] {
            assert!(snapshot_url(bad).is_err(), "{bad}");
        }
    }
}
