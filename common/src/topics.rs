//! The MQTT topic scheme, under a configurable prefix (default `sad/v1`).
//!
//! ```text
//! {p}/agents/{agent_id}/alerts    agent → coordinator, QoS 1, AlertBatch
//! {p}/agents/{agent_id}/acks      coordinator → agent, Ack
//! {p}/agents/{agent_id}/status    Heartbeat; the last will marks the agent offline
//! {p}/agents/{agent_id}/samples   Samples for retraining
//! {p}/agents/{agent_id}/quality   LabelCounts (labelled-event outcomes, for recall)
//! {p}/models/{fleet}/{model}      retained ModelBundle (fleet or canary group)
//! ```
//!
//! Coordinator replicas share intake through `$share/{group}/...` filters.
//! Ids follow [`crate::wire::validate_id`] (`[A-Za-z0-9_.-]`), so no id can
//! contain `/`, `+`, `#` or `:`.

use thiserror::Error;

use crate::wire::{WireError, validate_id};

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "sad/v1";

/// Longest accepted prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 256;

/// A topic or topic component that breaks the scheme.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TopicError {
    /// The prefix is empty, has empty levels, wildcards, a leading `$` or control characters.
    #[error("invalid topic prefix {prefix:?}: {reason}")]
    BadPrefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An id to be placed in a topic is not a valid id.
    #[error("invalid {what} for a topic: {source}")]
    BadId {
        /// Which id (agent id, fleet, model, share group).
        what: &'static str,
        /// The id rule it broke.
        #[source]
        source: WireError,
    },
    /// The topic does not start with this scheme's prefix.
    #[error("topic {topic:?} is not under prefix {prefix:?}")]
    WrongPrefix {
        /// The topic.
        topic: String,
        /// The expected prefix.
        prefix: String,
    },
    /// The topic is under the prefix but matches no known shape.
    #[error("unknown topic {0:?}")]
    Unknown(String),
}

/// What a topic addresses, as returned by [`Topics::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// `{p}/agents/{agent_id}/alerts`.
    Alerts {
        /// The publishing agent.
        agent_id: String,
    },
    /// `{p}/agents/{agent_id}/acks`.
    Acks {
        /// The acknowledged agent.
        agent_id: String,
    },
    /// `{p}/agents/{agent_id}/status`.
    Status {
        /// The reporting agent.
        agent_id: String,
    },
    /// `{p}/agents/{agent_id}/samples`.
    Samples {
        /// The sampling agent.
        agent_id: String,
    },
    /// `{p}/agents/{agent_id}/quality`.
    Quality {
        /// The reporting agent.
        agent_id: String,
    },
    /// `{p}/models/{fleet}/{model}`.
    Model {
        /// Fleet or canary group.
        fleet: String,
        /// Model name.
        model: String,
    },
}

/// Builds and parses topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

fn id(what: &'static str, value: &str) -> Result<(), TopicError> {
    validate_id(what, value).map_err(|source| TopicError::BadId { what, source })
}

impl Topics {
    /// A scheme under `prefix`: one or more `/`-separated non-empty levels without
    /// `+`, `#`, a leading `$`, control characters, or a leading/trailing `/`.
    pub fn new(prefix: &str) -> Result<Topics, TopicError> {
        let bad = |reason| {
            Err(TopicError::BadPrefix {
                prefix: prefix.to_string(),
                reason,
            })
        };
        if prefix.is_empty() {
            return bad("it is empty");
        }
        if prefix.len() > MAX_PREFIX_BYTES {
            return bad("it is longer than 256 bytes");
        }
        if prefix.contains(['+', '#']) {
            return bad("it contains a wildcard");
        }
        if prefix.starts_with('$') {
            return bad("topics starting with '$' are reserved by the broker");
        }
        if prefix.chars().any(char::is_control) {
            return bad("it contains a control character");
        }
        if prefix.split('/').any(str::is_empty) {
            return bad("it has an empty level");
        }
        Ok(Topics {
            prefix: prefix.to_string(),
        })
    }

    /// The prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn agent_topic(&self, agent_id: &str, leaf: &str) -> Result<String, TopicError> {
        id("agent id", agent_id)?;
        Ok(format!("{}/agents/{agent_id}/{leaf}", self.prefix))
    }

    /// `{p}/agents/{agent_id}/alerts`: the agent publishes alert batches here.
    pub fn alerts(&self, agent_id: &str) -> Result<String, TopicError> {
        self.agent_topic(agent_id, "alerts")
    }

    /// `{p}/agents/{agent_id}/acks`: the coordinator publishes acks here.
    pub fn acks(&self, agent_id: &str) -> Result<String, TopicError> {
        self.agent_topic(agent_id, "acks")
    }

    /// `{p}/agents/{agent_id}/status`: heartbeats and the last will.
    pub fn status(&self, agent_id: &str) -> Result<String, TopicError> {
        self.agent_topic(agent_id, "status")
    }

    /// `{p}/agents/{agent_id}/samples`: reservoir samples for retraining.
    pub fn samples(&self, agent_id: &str) -> Result<String, TopicError> {
        self.agent_topic(agent_id, "samples")
    }

    /// `{p}/agents/{agent_id}/quality`: labelled-event counters, for recall.
    pub fn quality(&self, agent_id: &str) -> Result<String, TopicError> {
        self.agent_topic(agent_id, "quality")
    }

    /// `{p}/agents/+/quality`: labelled-event counters of every agent.
    pub fn all_quality(&self) -> String {
        format!("{}/agents/+/quality", self.prefix)
    }

    /// `{p}/models/{fleet_or_group}/{model}`: the retained bundle of one model.
    pub fn model(&self, fleet_or_group: &str, model: &str) -> Result<String, TopicError> {
        id("fleet", fleet_or_group)?;
        id("model", model)?;
        Ok(format!("{}/models/{fleet_or_group}/{model}", self.prefix))
    }

    /// `{p}/models/{fleet_or_group}/+`: every model of a fleet or group (agents subscribe).
    pub fn model_filter(&self, fleet_or_group: &str) -> Result<String, TopicError> {
        id("fleet", fleet_or_group)?;
        Ok(format!("{}/models/{fleet_or_group}/+", self.prefix))
    }

    /// `{p}/agents/+/alerts`: alerts of every agent (single coordinator).
    pub fn all_alerts(&self) -> String {
        format!("{}/agents/+/alerts", self.prefix)
    }

    /// `{p}/agents/+/status`: heartbeats of every agent (single coordinator).
    pub fn all_status(&self) -> String {
        format!("{}/agents/+/status", self.prefix)
    }

    /// `{p}/agents/+/samples`: samples of every agent (single coordinator).
    pub fn all_samples(&self) -> String {
        format!("{}/agents/+/samples", self.prefix)
    }

    fn shared(&self, share_group: &str, leaf: &str) -> Result<String, TopicError> {
        id("share group", share_group)?;
        Ok(format!(
            "$share/{share_group}/{}/agents/+/{leaf}",
            self.prefix
        ))
    }

    /// `$share/{share_group}/{p}/agents/+/alerts`: alert intake shared by coordinator replicas.
    pub fn shared_alerts(&self, share_group: &str) -> Result<String, TopicError> {
        self.shared(share_group, "alerts")
    }

    /// `$share/{share_group}/{p}/agents/+/status`: heartbeats shared by coordinator replicas.
    pub fn shared_status(&self, share_group: &str) -> Result<String, TopicError> {
        self.shared(share_group, "status")
    }

    /// `$share/{share_group}/{p}/agents/+/samples`: samples shared by coordinator replicas.
    pub fn shared_samples(&self, share_group: &str) -> Result<String, TopicError> {
        self.shared(share_group, "samples")
    }

    /// Classifies a concrete topic (no wildcards) of this scheme and checks its ids.
    pub fn parse(&self, topic: &str) -> Result<TopicKind, TopicError> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::WrongPrefix {
                topic: topic.to_string(),
                prefix: self.prefix.clone(),
            })?;
        let levels: Vec<&str> = rest.split('/').collect();
        let unknown = || TopicError::Unknown(topic.to_string());
        match levels.as_slice() {
            ["agents", agent, leaf] => {
                let agent_id = agent.to_string();
                let kind = match *leaf {
                    "alerts" => TopicKind::Alerts { agent_id },
                    "acks" => TopicKind::Acks { agent_id },
                    "status" => TopicKind::Status { agent_id },
                    "samples" => TopicKind::Samples { agent_id },
                    "quality" => TopicKind::Quality { agent_id },
                    _ => return Err(unknown()),
                };
                id("agent id", agent)?;
                Ok(kind)
            }
            ["models", fleet, model] => {
                id("fleet", fleet)?;
                id("model", model)?;
                Ok(TopicKind::Model {
                    fleet: fleet.to_string(),
                    model: model.to_string(),
                })
            }
            _ => Err(unknown()),
        }
    }

    /// The concrete topic for a [`TopicKind`]; the inverse of [`Topics::parse`].
    pub fn topic(&self, kind: &TopicKind) -> Result<String, TopicError> {
        match kind {
            TopicKind::Alerts { agent_id } => self.alerts(agent_id),
            TopicKind::Acks { agent_id } => self.acks(agent_id),
            TopicKind::Status { agent_id } => self.status(agent_id),
            TopicKind::Samples { agent_id } => self.samples(agent_id),
            TopicKind::Quality { agent_id } => self.quality(agent_id),
            TopicKind::Model { fleet, model } => self.model(fleet, model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_scheme_builds_the_documented_topics() {
        let t = Topics::default();
        assert_eq!(t.prefix(), "sad/v1");
        assert_eq!(t.alerts("edge-01").unwrap(), "sad/v1/agents/edge-01/alerts");
        assert_eq!(t.acks("edge-01").unwrap(), "sad/v1/agents/edge-01/acks");
        assert_eq!(t.status("edge-01").unwrap(), "sad/v1/agents/edge-01/status");
        assert_eq!(
            t.samples("edge-01").unwrap(),
            "sad/v1/agents/edge-01/samples"
        );
        assert_eq!(
            t.model("fleet-a", "iforest").unwrap(),
            "sad/v1/models/fleet-a/iforest"
        );
        assert_eq!(t.model_filter("canary").unwrap(), "sad/v1/models/canary/+");
        assert_eq!(t.all_alerts(), "sad/v1/agents/+/alerts");
        assert_eq!(
            t.shared_alerts("coord").unwrap(),
            "$share/coord/sad/v1/agents/+/alerts"
        );
        assert_eq!(
            t.shared_status("coord").unwrap(),
            "$share/coord/sad/v1/agents/+/status"
        );
        assert_eq!(
            t.shared_samples("coord").unwrap(),
            "$share/coord/sad/v1/agents/+/samples"
        );
    }

    #[test]
    fn a_custom_prefix_is_used_and_parsed() {
        let t = Topics::new("plant-3/sad").unwrap();
        let topic = t.status("m1").unwrap();
        assert_eq!(topic, "plant-3/sad/agents/m1/status");
        assert_eq!(
            t.parse(&topic).unwrap(),
            TopicKind::Status {
                agent_id: "m1".into()
            }
        );
        assert!(matches!(
            Topics::default().parse(&topic),
            Err(TopicError::WrongPrefix { .. })
        ));
    }

    #[test]
    fn invalid_prefixes_are_rejected() {
        for bad in [
            "", "/sad", "sad/", "sad//v1", "sad/+", "sad/#", "$SYS", "sad\n", "sad/v1\0",
        ] {
            assert!(Topics::new(bad).is_err(), "{bad:?} accepted");
        }
        let e = Topics::new("sad/#").unwrap_err().to_string();
        assert!(e.contains("wildcard"), "{e}");
    }

    #[test]
    fn hostile_ids_are_rejected_when_building() {
        let t = Topics::default();
        for bad in ["", "a/b", "+", "#", "a:b", "../x", "a b", "a\u{0}"] {
            assert!(t.alerts(bad).is_err(), "{bad:?} accepted as agent");
            assert!(t.model("fleet", bad).is_err(), "{bad:?} accepted as model");
            assert!(t.model(bad, "m").is_err(), "{bad:?} accepted as fleet");
            assert!(t.model_filter(bad).is_err(), "{bad:?} accepted as fleet");
            assert!(t.shared_alerts(bad).is_err(), "{bad:?} accepted as group");
        }
        let e = t.acks("a+b").unwrap_err().to_string();
        assert!(e.contains("agent id") && e.contains("'+'"), "{e}");
    }

    #[test]
    fn unknown_and_malformed_topics_are_rejected_when_parsing() {
        let t = Topics::default();
        for bad in [
            "sad/v1",
            "sad/v1/",
            "sad/v1/agents",
            "sad/v1/agents/a",
            "sad/v1/agents/a/other",
            "sad/v1/agents//alerts",
            "sad/v1/agents/a:b/alerts",
            "sad/v1/agents/+/alerts",
            "sad/v1/agents/a/alerts/extra",
            "sad/v1/models/f",
            "sad/v1/models/f/+",
            "sad/v1/models/f/m/x",
            "sad/v1x/agents/a/alerts",
            "$share/g/sad/v1/agents/a/alerts",
        ] {
            assert!(t.parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn built_topics_parse_back(
            agent in "[A-Za-z0-9_.-]{1,40}",
            fleet in "[A-Za-z0-9_.-]{1,40}",
            model in "[A-Za-z0-9_.-]{1,40}",
            prefix in "[a-z0-9]{1,8}(/[a-z0-9_-]{1,8}){0,3}",
        ) {
            let t = Topics::new(&prefix).unwrap();
            let kinds = [
                TopicKind::Alerts { agent_id: agent.clone() },
                TopicKind::Acks { agent_id: agent.clone() },
                TopicKind::Status { agent_id: agent.clone() },
                TopicKind::Samples { agent_id: agent.clone() },
                TopicKind::Quality { agent_id: agent.clone() },
                TopicKind::Model { fleet, model },
            ];
            for kind in kinds {
                let topic = t.topic(&kind).unwrap();
                prop_assert_eq!(t.parse(&topic).unwrap(), kind);
            }
        }

        #[test]
        fn parsing_arbitrary_topics_never_panics(topic in "\\PC{0,80}") {
            let _ = Topics::default().parse(&topic);
        }
    }
}
