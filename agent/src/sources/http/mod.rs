//! HTTP push: `POST /ingest` with JSON lines (one JSON object or array per
//! line; CSV lines are accepted too), served by [`crate::http`].
//!
//! Each good line becomes an event sent into the pipeline's channel; the
//! request waits while the channel is full (backpressure), so an accepted
//! line is never dropped. Bad lines are counted by reason and reported in
//! the response's `rejected` count; the rest of the body is still processed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    BadInput, BadInputReporter, Envelope, EventSender, Mapping, MappingConfig, MappingError,
    SourceInfo,
};

/// Default body limit of `POST /ingest` (4 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Errors of the HTTP source.
#[derive(Debug, Error)]
pub enum HttpSourceError {
    /// The mapping is invalid.
    #[error("sources.{name}: {source}")]
    Mapping {
        /// Source name.
        name: String,
        /// What is wrong.
        source: MappingError,
    },
    /// The pipeline is gone (the agent is shutting down).
    #[error("the pipeline is closed")]
    Closed,
}

/// `type = "http"`: events pushed to `POST /ingest` on the agent's HTTP port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Source name (unique; at most one http source).
    pub name: String,
    /// Largest request body, in bytes; larger bodies get 413 (default 4 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Model that scores these events (default: the only installed model, else streaming).
    #[serde(default)]
    pub model: Option<String>,
    /// Field mapping.
    pub mapping: MappingConfig,
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

impl HttpSourceConfig {
    /// Checks the config and builds the ingest handler state.
    pub fn build(
        &self,
        tx: EventSender,
        reporter: BadInputReporter,
    ) -> Result<HttpIngest, HttpSourceError> {
        let mapping =
            self.mapping
                .build(&self.name)
                .map_err(|source| HttpSourceError::Mapping {
                    name: self.name.clone(),
                    source,
                })?;
        Ok(HttpIngest {
            info: Arc::new(SourceInfo {
                name: self.name.clone(),
                feature_names: mapping.fields().to_vec(),
                model: self.model.clone(),
                featurize_window: self.mapping.featurize_window,
            }),
            mapping: Arc::new(mapping),
            max_body_bytes: self.max_body_bytes,
            tx,
            reporter,
        })
    }
}

/// Counts of one `POST /ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IngestReport {
    /// Lines turned into events.
    pub accepted: u64,
    /// Lines skipped as bad input.
    pub rejected: u64,
}

/// The state behind `POST /ingest`.
#[derive(Clone)]
pub struct HttpIngest {
    info: Arc<SourceInfo>,
    mapping: Arc<Mapping>,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    tx: EventSender,
    reporter: BadInputReporter,
}

impl HttpIngest {
    /// Parses every line of `body` and sends the good ones to the pipeline.
    pub async fn ingest(&self, body: &[u8]) -> Result<IngestReport, HttpSourceError> {
        let mut report = IngestReport::default();
        let now = super::now_ms();
        for line in body.split(|b| *b == b'\n') {
            if line.trim_ascii().is_empty() {
                continue;
            }
            match self.mapping.parse_payload(line, None, now) {
                Ok(event) => {
                    let env = Envelope {
                        source: self.info.clone(),
                        event,
                        mark: None,
                    };
                    self.tx
                        .send(env)
                        .await
                        .map_err(|_| HttpSourceError::Closed)?;
                    report.accepted += 1;
                }
                Err(bad) => {
                    self.reporter.report(&self.info.name, &bad);
                    report.rejected += 1;
                }
            }
        }
        Ok(report)
    }

    /// Counts a body that was refused as a whole (too large).
    pub fn reject_oversize(&self, len: usize) {
        self.reporter.report(
            &self.info.name,
            &BadInput::Oversize {
                len,
                cap: self.max_body_bytes,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn good_lines_are_sent_and_bad_lines_are_counted() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let cfg = HttpSourceConfig {
            name: "push".into(),
            max_body_bytes: 1024,
            model: None,
            mapping: MappingConfig::new(&["x"]),
        };
        let ingest = cfg.build(tx, BadInputReporter::detached()).unwrap();
        let r = ingest
            .ingest(b"{\"x\": 1}\n{\"x\": \"no\"}\n\n{\"y\": 2}\n{\"x\": 3}")
            .await
            .unwrap();
        assert_eq!(
            r,
            IngestReport {
                accepted: 2,
                rejected: 2
            }
        );
        assert_eq!(rx.recv().await.unwrap().event.values, vec![1.0]);
        assert_eq!(rx.recv().await.unwrap().event.values, vec![3.0]);
    }
}
