//! Scrape of a Prometheus endpoint on the device (node_exporter or any
//! `/metrics`), so node data needs no extra glue.
//!
//! Every `interval_ms` the source GETs the URL (a minimal HTTP/1.1 client on
//! a tokio `TcpStream`, `Connection: close`, plain or chunked bodies, capped
//! at `max_body_bytes`), parses the text exposition format and emits one
//! event whose values are the chosen series, in config order. A series is a
//! metric name plus label matchers (`labels = { cpu = "0" }`); when several
//! samples match, their values are summed. Counters (`# TYPE x counter`, or
//! `rate = true`) become per-second rates between two scrapes, so the first
//! scrape only primes them; a counter that went down is taken as a reset.
//! A scrape missing a chosen series is counted as `missing_field` and skipped.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{BadInput, BadInputReporter, Envelope, EventSender, SourceInfo};
use sad_common::Event;

/// Errors of the Prometheus source and of one scrape.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// A config value is invalid.
    #[error("sources.{name}.{key}: {reason}")]
    Invalid {
        /// Source name.
        name: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint could not be reached or answered badly.
    #[error("scrape failed: {0}")]
    Http(String),
    /// The request did not finish in time.
    #[error("scrape timed out")]
    Timeout,
}

/// One chosen series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSelector {
    /// Metric name, e.g. `node_cpu_seconds_total`.
    pub metric: String,
    /// Label matchers (exact values) (default: none, every sample of the metric).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Turn into a per-second rate (default: when the metric's TYPE is counter).
    #[serde(default)]
    pub rate: Option<bool>,
    /// Feature name (default: the metric name).
    #[serde(default)]
    pub feature: Option<String>,
}

/// `type = "prometheus"`: scrape a `/metrics` URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSourceConfig {
    /// Source name (unique).
    pub name: String,
    /// `http://host:port/path` (default `http://127.0.0.1:9100/metrics`, node_exporter).
    #[serde(default = "default_url")]
    pub url: String,
    /// Scrape period in ms (default 15000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Request timeout in ms (default 5000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Largest response body in bytes (default 8 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Series key of the events (default: the source name).
    #[serde(default)]
    pub series: Option<String>,
    /// Model that scores these events (default: the only installed model, else streaming).
    #[serde(default)]
    pub model: Option<String>,
    /// The chosen series, in feature order (required).
    pub select: Vec<SeriesSelector>,
}

fn default_url() -> String {
    "http://127.0.0.1:9100/metrics".into()
}
fn default_interval() -> u64 {
    15_000
}
fn default_timeout() -> u64 {
    5_000
}
fn default_max_body() -> usize {
    8 * 1024 * 1024
}

/// `http://host:port/path` split into host, port (default 80) and path (default `/metrics`).
pub fn parse_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/metrics".to_string()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 80),
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port, path))
}

impl PrometheusSourceConfig {
    /// Feature names of the events, in order.
    pub fn feature_names(&self) -> Vec<String> {
        self.select
            .iter()
            .map(|s| s.feature.clone().unwrap_or_else(|| s.metric.clone()))
            .collect()
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ScrapeError> {
        let invalid = |key, reason: String| ScrapeError::Invalid {
            name: self.name.clone(),
            key,
            reason,
        };
        if parse_http_url(&self.url).is_none() {
            return Err(invalid(
                "url",
                format!("{:?} is not http://host:port/path", self.url),
            ));
        }
        if self.interval_ms < 100 {
            return Err(invalid("interval_ms", "must be at least 100".into()));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "must be positive".into()));
        }
        if self.select.is_empty() {
            return Err(invalid("select", "needs at least one series".into()));
        }
        let names = self.feature_names();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(invalid(
                    "select",
                    format!("feature {n:?} appears twice; set feature = \"...\""),
                ));
            }
        }
        if let Some(s) = &self.series {
            sad_common::wire::validate_series("series", s)
                .map_err(|e| invalid("series", e.to_string()))?;
        }
        Ok(())
    }

    /// Scrapes every interval until shutdown or until the pipeline is gone.
    pub async fn run(
        self,
        tx: EventSender,
        reporter: BadInputReporter,
        shutdown: CancellationToken,
    ) -> Result<(), ScrapeError> {
        self.validate()?;
        let info = std::sync::Arc::new(SourceInfo {
            name: self.name.clone(),
            feature_names: self.feature_names(),
            model: self.model.clone(),
            featurize_window: None,
        });
        let mut state = ScrapeState::new(self.select.clone());
        let series = self.series.clone().unwrap_or_else(|| self.name.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(self.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let body = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = http_get(&self.url, Duration::from_millis(self.timeout_ms), self.max_body_bytes) => b,
            };
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(source = %self.name, url = %self.url, error = %e, "scrape failed");
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&body);
            match state.observe(&text, Instant::now()) {
                Ok(Some(values)) => {
                    let env = Envelope {
                        source: info.clone(),
                        event: Event {
                            series: series.clone(),
                            ts_ms: super::now_ms(),
                            values,
                            label: None,
                        },
                        mark: None,
                    };
                    if tx.send(env).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => {}
                Err(bad) => reporter.report(&self.name, &bad),
            }
        }
    }
}

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value (may be NaN or ±Inf as the format allows).
    pub value: f64,
}

/// Parses the text exposition format: samples and the `# TYPE` of each metric family.
///
/// Malformed lines are skipped; the function never fails or panics.
pub fn parse_exposition(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE")
                && let (Some(name), Some(ty)) = (parts.next(), parts.next())
            {
                types.insert(name.to_string(), ty.to_string());
            }
            continue;
        }
        if let Some(s) = parse_sample(line) {
            samples.push(s);
        }
    }
    (samples, types)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    end = Some(i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('=') {
                return None;
            }
            while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    '"' => break,
                    c => val.push(c),
                }
            }
            labels.insert(key, val);
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// What a scrape remembers between scrapes: the previous counter values for rates.
#[derive(Debug, Clone)]
pub struct ScrapeState {
    select: Vec<SeriesSelector>,
    prev: Vec<Option<(f64, Instant)>>,
}

impl ScrapeState {
    /// State for these selectors.
    pub fn new(select: Vec<SeriesSelector>) -> Self {
        let n = select.len();
        Self {
            select,
            prev: vec![None; n],
        }
    }

    /// Turns one scrape taken at `at` into the event values; `Ok(None)` while rates are priming.
    pub fn observe(&mut self, text: &str, at: Instant) -> Result<Option<Vec<f64>>, BadInput> {
        let (samples, types) = parse_exposition(text);
        let mut out = Vec::with_capacity(self.select.len());
        let mut priming = false;
        for (i, sel) in self.select.iter().enumerate() {
            let mut found = false;
            let mut sum = 0.0;
            for s in samples.iter().filter(|s| s.name == sel.metric) {
                if sel.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)) {
                    found = true;
                    sum += s.value;
                }
            }
            if !found {
                return Err(BadInput::MissingField(sel.metric.clone()));
            }
            if !sum.is_finite() {
                return Err(BadInput::NonFinite(sel.metric.clone()));
            }
            let is_rate = sel
                .rate
                .unwrap_or_else(|| types.get(&sel.metric).is_some_and(|t| t == "counter"));
            if is_rate {
                let prev = self.prev[i].replace((sum, at));
                match prev {
                    Some((pv, pt)) if at > pt => {
                        let dt = at.duration_since(pt).as_secs_f64();
                        let delta = if sum >= pv { sum - pv } else { sum };
                        out.push(delta / dt);
                    }
                    _ => priming = true,
                }
            } else {
                out.push(sum);
            }
        }
        Ok(if priming { None } else { Some(out) })
    }
}

/// GET `url` with a minimal HTTP/1.1 client; returns the body of a 2xx answer.
pub async fn http_get(
    url: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<Vec<u8>, ScrapeError> {
    let (host, port, path) =
        parse_http_url(url).ok_or_else(|| ScrapeError::Http(format!("bad url {url:?}")))?;
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/plain\r\nUser-Agent: anomaly-agent\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let mut buf = Vec::new();
        let mut limited = stream.take(max_body as u64 + 64 * 1024);
        limited
            .read_to_end(&mut buf)
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        parse_response(&buf, max_body)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ScrapeError::Timeout)?
}

/// Parses a whole HTTP/1.1 response: status, headers, plain or chunked body.
pub fn parse_response(buf: &[u8], max_body: usize) -> Result<Vec<u8>, ScrapeError> {
    let err = |m: &str| ScrapeError::Http(m.to_string());
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| err("incomplete response head"))?;
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| err("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err("bad status line"))?;
    if !(200..300).contains(&code) {
        return Err(ScrapeError::Http(format!("status {code}")));
    }
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let body = &buf[head_end + 4..];
    let out = if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| err("truncated chunk"))?;
            let size_txt =
                std::str::from_utf8(&rest[..line_end]).map_err(|_| err("bad chunk size"))?;
            let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| err("bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size || out.len() + size > max_body {
                return Err(err("truncated or oversize chunked body"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        out
    } else {
        let body = match length {
            Some(n) if n <= body.len() => &body[..n],
            Some(_) => return Err(err("truncated body")),
            None => body,
        };
        body.to_vec()
    };
    if out.len() > max_body {
        return Err(err("body exceeds max_body_bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 100
node_cpu_seconds_total{cpu="0",mode="user"} 10
node_cpu_seconds_total{cpu="1",mode="user"} 5
# TYPE node_load1 gauge
node_load1 0.5
weird{a="x\"y\\z",b="2"} 3 1700000000000
"#;

    fn sel(metric: &str, labels: &[(&str, &str)]) -> SeriesSelector {
        SeriesSelector {
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rate: None,
            feature: None,
        }
    }

    #[test]
    fn the_exposition_format_is_parsed_with_types_and_escaped_labels() {
        let (samples, types) = parse_exposition(FIXTURE);
        assert_eq!(samples.len(), 5);
        assert_eq!(types["node_cpu_seconds_total"], "counter");
        let w = samples.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(w.labels["a"], "x\"y\\z");
        assert_eq!(w.value, 3.0);
    }

    #[test]
    fn counters_become_rates_and_gauges_pass_through() {
        let mut st = ScrapeState::new(vec![
            sel("node_cpu_seconds_total", &[("mode", "user")]),
            sel("node_load1", &[]),
        ]);
        let t0 = Instant::now();
        assert_eq!(st.observe(FIXTURE, t0).unwrap(), None);
        let next = FIXTURE.replace("} 10\n", "} 40\n");
        let v = st
            .observe(&next, t0 + Duration::from_secs(2))
            .unwrap()
            .unwrap();
        assert_eq!(v, vec![15.0, 0.5]); // (45 - 15) / 2 s
    }

    #[test]
    fn a_missing_series_is_bad_input() {
        let mut st = ScrapeState::new(vec![sel("node_load5", &[])]);
        assert_eq!(
            st.observe(FIXTURE, Instant::now()).unwrap_err().reason(),
            "missing_field"
        );
    }

    #[test]
    fn chunked_and_plain_responses_are_decoded() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain, 100).unwrap(), b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, 100).unwrap(), b"hello");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n", 100).is_err());
        assert!(parse_response(plain, 3).is_err());
    }

    #[test]
    fn urls_are_split() {
        assert_eq!(
            parse_http_url("http://h:9100/metrics"),
            Some(("h".into(), 9100, "/metrics".into()))
        );
        assert_eq!(
            parse_http_url("http://h"),
            Some(("h".into(), 80, "/metrics".into()))
        );
        assert_eq!(parse_http_url("https://h"), None);
    }
}
