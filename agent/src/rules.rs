//! Alert rules: a pure, synchronous state machine per series that turns a
//! stream of calibrated scores into alerts.
//!
//! Per series the machine is in one of four phases:
//!
//! ```text
//!            score > enter                     count >= min_duration
//!   Idle ──────────────────▶ Pending(count) ──────────────────────▶ Open(episode, severity)
//!    ▲      score <= enter        │                                   │ score <= exit
//!    └────────────────────────────┘                                   ▼
//!    └──────────────── event time >= until ◀──────────────── Cooldown(until)
//! ```
//!
//! - **Threshold**: the enter threshold is the configured `threshold`
//!   (`THRESHOLD`) when set, else the model's; the exit threshold is
//!   `enter - hysteresis` (at least 0). An open episode stays open while the
//!   score is above the exit threshold, so scores oscillating between exit
//!   and enter never start a new episode.
//! - **Minimum duration**: `min_duration` consecutive events above the enter
//!   threshold open an episode (1 = the first one does).
//! - **Cooldown**: after an episode closes no event of that series opens a
//!   new one until `cooldown_ms` of event time have passed.
//! - **Severity bands** over the calibrated score: `critical` from
//!   `severity.critical`, `warning` from `severity.warning`, else `info`.
//! - **Episode id**: strictly increasing over the whole engine (hence per
//!   series), starting after a base the caller chooses (the agent uses its
//!   start time in milliseconds so ids keep growing across restarts).
//! - **Emission policy**: one alert when an episode opens, and one more each
//!   time the severity of the episode escalates (`info` → `warning` →
//!   `critical`). Closing an episode emits nothing; severity never goes down
//!   inside an episode.
//!
//! Time is the event's own timestamp, so replays behave like live data and
//! tests need no clock.

use std::collections::HashMap;

use sad_common::Severity;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An invalid rules configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RulesError {
    /// A number lies outside its allowed range.
    #[error("rules.{key} = {value} is invalid: {expected}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// Its value.
        value: f64,
        /// What is allowed.
        expected: &'static str,
    },
}

/// Score levels from which an alert is `warning` or `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityBands {
    /// Calibrated score from which an alert is `warning` (default 0.5).
    pub warning: f64,
    /// Calibrated score from which an alert is `critical` (default 0.8).
    pub critical: f64,
}

impl Default for SeverityBands {
    fn default() -> Self {
        Self {
            warning: 0.5,
            critical: 0.8,
        }
    }
}

impl SeverityBands {
    /// The severity of a score above the enter threshold.
    pub fn classify(&self, score: f64) -> Severity {
        if score >= self.critical {
            Severity::Critical
        } else if score >= self.warning {
            Severity::Warning
        } else {
            Severity::Info
        }
    }
}

/// Configuration of the alert rules (`[rules]` in the agent's TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Enter threshold in calibrated space; `None` = the model's threshold (default `None`; `THRESHOLD` sets it).
    pub threshold: Option<f64>,
    /// Exit threshold = enter − hysteresis, in `[0, 1)` (default 0.05).
    pub hysteresis: f64,
    /// Consecutive events above the enter threshold before an episode opens, ≥ 1 (default 1).
    pub min_duration: u32,
    /// Event time after an episode closes during which the series raises nothing, in ms (default 10 000).
    pub cooldown_ms: u64,
    /// Severity bands (default warning 0.5, critical 0.8).
    pub severity: SeverityBands,
    /// Features named in each alert's explanation, 0..=64 (default 3).
    pub top_k: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            hysteresis: 0.05,
            min_duration: 1,
            cooldown_ms: 10_000,
            severity: SeverityBands::default(),
            top_k: 3,
        }
    }
}

impl RulesConfig {
    /// Checks every value, naming the first invalid key.
    pub fn validate(&self) -> Result<(), RulesError> {
        let bad = |key, value, expected| {
            Err(RulesError::Invalid {
                key,
                value,
                expected,
            })
        };
        if let Some(t) = self.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return bad("threshold", t, "a number between 0 and 1");
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            return bad("hysteresis", self.hysteresis, "a number in [0, 1)");
        }
        if self.min_duration == 0 {
            return bad("min_duration", 0.0, "at least 1 event");
        }
        let s = self.severity;
        if !(0.0..=1.0).contains(&s.warning) {
            return bad("severity.warning", s.warning, "a number between 0 and 1");
        }
        if !(0.0..=1.0).contains(&s.critical) || s.critical < s.warning {
            return bad(
                "severity.critical",
                s.critical,
                "a number between severity.warning and 1",
            );
        }
        if self.top_k > sad_common::wire::limits::MAX_EXPLANATION {
            return bad("top_k", self.top_k as f64, "at most 64");
        }
        Ok(())
    }

    /// The enter threshold for a model whose own threshold is `model_threshold`.
    pub fn enter_threshold(&self, model_threshold: f64) -> f64 {
        self.threshold.unwrap_or(model_threshold)
    }
}

/// Why the rules emitted an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitKind {
    /// The episode opened with this alert.
    Opened,
    /// The episode's severity rose.
    Escalated,
}

/// An alert decision: which episode, how severe, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emission {
    /// Episode the alert belongs to.
    pub episode_id: u64,
    /// Severity of the alert.
    pub severity: Severity,
    /// Opened or escalated.
    pub kind: EmitKind,
}

/// Where one series stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// No anomaly in progress.
    Idle,
    /// Above the enter threshold for `count` events, not long enough yet.
    Pending {
        /// Consecutive events above the enter threshold.
        count: u32,
    },
    /// An episode is open.
    Open {
        /// Its id.
        episode_id: u64,
        /// Highest severity alerted so far.
        severity: Severity,
    },
    /// An episode closed; nothing is raised before event time `until_ms`.
    Cooldown {
        /// End of the cooldown (event time, ms).
        until_ms: i64,
    },
}

/// The rules of all series, with the engine-wide episode counter.
#[derive(Debug, Clone)]
pub struct RulesEngine {
    cfg: RulesConfig,
    /// Per-model settings pushed by the coordinator; they replace `cfg` for that model.
    overrides: HashMap<String, RulesConfig>,
    next_episode: u64,
    series: HashMap<String, Phase>,
}

/// Per-model rule settings pushed by the coordinator (retained JSON on
/// `{prefix}/config/{fleet}/{model}`), shared between the uplink that
/// receives them and the pipeline that applies them at its next batch.
#[derive(Debug, Clone, Default)]
pub struct RulesUpdates {
    inner: std::sync::Arc<std::sync::Mutex<(u64, HashMap<String, RulesConfig>)>>,
}

impl RulesUpdates {
    /// Sets (or with `None` clears) the settings of `model`.
    pub fn set(&self, model: &str, cfg: Option<RulesConfig>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match cfg {
            Some(c) => g.1.insert(model.to_string(), c),
            None => g.1.remove(model),
        };
        g.0 += 1;
    }

    /// Bumped on every change.
    pub fn version(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The version and a copy of every model's settings.
    pub fn snapshot(&self) -> (u64, HashMap<String, RulesConfig>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl RulesEngine {
    /// An engine whose first episode id is `episode_base + 1`.
    pub fn new(cfg: RulesConfig, episode_base: u64) -> Self {
        Self {
            cfg,
            overrides: HashMap::new(),
            next_episode: episode_base,
            series: HashMap::new(),
        }
    }

    /// Replaces the per-model settings (from [`RulesUpdates::snapshot`]).
    pub fn set_overrides(&mut self, overrides: HashMap<String, RulesConfig>) {
        self.overrides = overrides;
    }

    /// The settings that apply to `model`.
    pub fn config_for(&self, model: &str) -> &RulesConfig {
        self.overrides.get(model).unwrap_or(&self.cfg)
    }

    /// [`RulesEngine::observe`] with `model`'s settings when the coordinator
    /// pushed some; the series' episode state is kept across a change.
    pub fn observe_model(
        &mut self,
        model: &str,
        series: &str,
        ts_ms: i64,
        score: f64,
        model_threshold: f64,
    ) -> Option<Emission> {
        match self.overrides.get_mut(model) {
            Some(o) => {
                std::mem::swap(&mut self.cfg, o);
                let r = self.observe(series, ts_ms, score, model_threshold);
                if let Some(o) = self.overrides.get_mut(model) {
                    std::mem::swap(&mut self.cfg, o);
                }
                r
            }
            None => self.observe(series, ts_ms, score, model_threshold),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    /// The phase of a series (`Idle` if never seen).
    pub fn phase(&self, series: &str) -> Phase {
        self.series.get(series).copied().unwrap_or(Phase::Idle)
    }

    /// Number of series with state.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Feeds one calibrated score of `series` at event time `ts_ms`, judged
    /// against `model_threshold` unless the config overrides it.
    pub fn observe(
        &mut self,
        series: &str,
        ts_ms: i64,
        score: f64,
        model_threshold: f64,
    ) -> Option<Emission> {
        let enter = self.cfg.enter_threshold(model_threshold);
        let exit = (enter - self.cfg.hysteresis).max(0.0);
        let phase = match self.series.get_mut(series) {
            Some(p) => p,
            None => {
                // Only series that leave Idle need state.
                if !is_above(score, enter) {
                    return None;
                }
                self.series.entry(series.to_string()).or_insert(Phase::Idle)
            }
        };
        let (next, emit) = step(
            &self.cfg,
            &mut self.next_episode,
            *phase,
            ts_ms,
            score,
            enter,
            exit,
        );
        *phase = next;
        if next == Phase::Idle {
            self.series.remove(series);
        }
        emit
    }
}

/// One transition of one series (the whole state machine).
fn step(
    cfg: &RulesConfig,
    next_episode: &mut u64,
    phase: Phase,
    ts_ms: i64,
    score: f64,
    enter: f64,
    exit: f64,
) -> (Phase, Option<Emission>) {
    // NaN never enters (the pipeline rejects it earlier anyway).
    let above_enter = score > enter;
    let open = |next_episode: &mut u64| {
        *next_episode += 1;
        let severity = cfg.severity.classify(score);
        (
            Phase::Open {
                episode_id: *next_episode,
                severity,
            },
            Some(Emission {
                episode_id: *next_episode,
                severity,
                kind: EmitKind::Opened,
            }),
        )
    };
    match phase {
        Phase::Cooldown { until_ms } if ts_ms < until_ms => (phase, None),
        Phase::Idle | Phase::Cooldown { .. } => {
            if !above_enter {
                (Phase::Idle, None)
            } else if cfg.min_duration <= 1 {
                open(next_episode)
            } else {
                (Phase::Pending { count: 1 }, None)
            }
        }
        Phase::Pending { count } => {
            if !above_enter {
                (Phase::Idle, None)
            } else if count + 1 >= cfg.min_duration {
                open(next_episode)
            } else {
                (Phase::Pending { count: count + 1 }, None)
            }
        }
        Phase::Open {
            episode_id,
            severity,
        } => {
            if !is_above(score, exit) {
                let until_ms =
                    ts_ms.saturating_add(i64::try_from(cfg.cooldown_ms).unwrap_or(i64::MAX));
                if cfg.cooldown_ms == 0 {
                    (Phase::Idle, None)
                } else {
                    (Phase::Cooldown { until_ms }, None)
                }
            } else {
                let now = cfg.severity.classify(score);
                if now > severity {
                    (
                        Phase::Open {
                            episode_id,
                            severity: now,
                        },
                        Some(Emission {
                            episode_id,
                            severity: now,
                            kind: EmitKind::Escalated,
                        }),
                    )
                } else {
                    (phase, None)
                }
            }
        }
    }
}

/// `score > bound`, false for NaN (so a NaN score never opens or holds an episode).
fn is_above(score: f64, bound: f64) -> bool {
    score.partial_cmp(&bound) == Some(std::cmp::Ordering::Greater)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_pushed_for_a_model_apply_to_that_model_only() {
        let mut e = RulesEngine::new(
            RulesConfig {
                cooldown_ms: 0,
                ..RulesConfig::default()
            },
            0,
        );
        let strict = RulesConfig {
            threshold: Some(0.95),
            cooldown_ms: 0,
            ..RulesConfig::default()
        };
        e.set_overrides([("strict".to_string(), strict)].into_iter().collect());
        assert!(
            e.observe_model("strict", "s1", 1, 0.9, 0.5).is_none(),
            "0.9 is below the pushed 0.95"
        );
        assert!(
            e.observe_model("other", "s2", 1, 0.9, 0.5).is_some(),
            "other models keep the local rules"
        );
        assert_eq!(e.config_for("strict").threshold, Some(0.95));
        assert_eq!(e.config_for("other").threshold, None);
        // the engine's own settings are intact after an override was used
        assert_eq!(e.config().threshold, None);
    }

    #[test]
    fn rules_updates_version_every_change() {
        let u = RulesUpdates::default();
        assert_eq!(u.version(), 0);
        u.set("m", Some(RulesConfig::default()));
        u.set("m", None);
        let (v, map) = u.snapshot();
        assert_eq!((v, map.len()), (2, 0));
    }
    use proptest::prelude::*;

    fn cfg(min_duration: u32, cooldown_ms: u64) -> RulesConfig {
        RulesConfig {
            threshold: Some(0.5),
            hysteresis: 0.1,
            min_duration,
            cooldown_ms,
            severity: SeverityBands {
                warning: 0.7,
                critical: 0.9,
            },
            top_k: 3,
        }
    }

    #[test]
    fn an_episode_opens_once_and_escalates_once_per_band() {
        let mut e = RulesEngine::new(cfg(1, 0), 0);
        let out: Vec<_> = [0.2, 0.6, 0.65, 0.75, 0.72, 0.95, 0.99, 0.3]
            .iter()
            .enumerate()
            .filter_map(|(i, &s)| e.observe("a", i as i64, s, 0.5))
            .collect();
        assert_eq!(
            out,
            vec![
                Emission {
                    episode_id: 1,
                    severity: Severity::Info,
                    kind: EmitKind::Opened
                },
                Emission {
                    episode_id: 1,
                    severity: Severity::Warning,
                    kind: EmitKind::Escalated
                },
                Emission {
                    episode_id: 1,
                    severity: Severity::Critical,
                    kind: EmitKind::Escalated
                },
            ]
        );
        assert_eq!(e.phase("a"), Phase::Idle);
        assert_eq!(e.series_count(), 0);
    }

    #[test]
    fn min_duration_needs_consecutive_events_above_enter() {
        let mut e = RulesEngine::new(cfg(3, 0), 0);
        assert_eq!(e.observe("a", 0, 0.6, 0.5), None);
        assert_eq!(e.observe("a", 1, 0.6, 0.5), None);
        assert_eq!(e.observe("a", 2, 0.4, 0.5), None); // reset
        assert_eq!(e.observe("a", 3, 0.6, 0.5), None);
        assert_eq!(e.observe("a", 4, 0.6, 0.5), None);
        let em = e.observe("a", 5, 0.6, 0.5).unwrap();
        assert_eq!(em.kind, EmitKind::Opened);
    }

    #[test]
    fn cooldown_suppresses_new_episodes_until_it_ends() {
        let mut e = RulesEngine::new(cfg(1, 100), 0);
        assert!(e.observe("a", 0, 0.6, 0.5).is_some());
        assert_eq!(e.observe("a", 10, 0.1, 0.5), None); // closes, cooldown until 110
        assert_eq!(e.observe("a", 50, 0.99, 0.5), None);
        assert_eq!(e.phase("a"), Phase::Cooldown { until_ms: 110 });
        let em = e.observe("a", 110, 0.99, 0.5).unwrap();
        assert_eq!(em.episode_id, 2);
    }

    #[test]
    fn the_config_threshold_overrides_the_models() {
        let mut c = cfg(1, 0);
        c.threshold = None;
        let mut e = RulesEngine::new(c.clone(), 0);
        assert_eq!(e.observe("a", 0, 0.6, 0.65), None);
        c.threshold = Some(0.55);
        let mut e = RulesEngine::new(c, 0);
        assert!(e.observe("a", 0, 0.6, 0.65).is_some());
    }

    #[test]
    fn series_are_independent_and_episode_ids_start_after_the_base() {
        let mut e = RulesEngine::new(cfg(1, 0), 1000);
        assert_eq!(e.observe("a", 0, 0.6, 0.5).unwrap().episode_id, 1001);
        assert_eq!(e.observe("b", 0, 0.6, 0.5).unwrap().episode_id, 1002);
        assert_eq!(e.observe("a", 1, 0.6, 0.5), None);
    }

    #[test]
    fn invalid_values_are_named() {
        let mut c = RulesConfig::default();
        c.severity.critical = 0.2;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("severity.critical")
        );
        let c = RulesConfig {
            min_duration: 0,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("min_duration")
        );
        let c = RulesConfig {
            threshold: Some(1.5),
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("rules.threshold")
        );
        assert!(RulesConfig::default().validate().is_ok());
    }

    fn arb_cfg() -> impl Strategy<Value = RulesConfig> {
        (
            0.05f64..0.95,
            0.0f64..0.3,
            1u32..4,
            0u64..50,
            0.0f64..1.0,
            0.0f64..1.0,
        )
            .prop_map(|(t, h, d, c, w, k)| RulesConfig {
                threshold: Some(t),
                hysteresis: h,
                min_duration: d,
                cooldown_ms: c,
                severity: SeverityBands {
                    warning: w.min(k),
                    critical: w.max(k),
                },
                top_k: 3,
            })
    }

    /// (series index, time step, score) triples.
    fn arb_stream() -> impl Strategy<Value = Vec<(u8, u8, f64)>> {
        prop::collection::vec((0u8..3, 0u8..20, 0.0f64..1.0), 0..300)
    }

    proptest! {
        #[test]
        fn alerts_follow_the_episode_invariants(c in arb_cfg(), stream in arb_stream()) {
            let mut e = RulesEngine::new(c.clone(), 7);
            let mut ts = [0i64; 3];
            let mut last_episode = 7u64;
            // per series: (episode id, last severity) of the open episode, cooldown end
            let mut open: [Option<(u64, Severity)>; 3] = [None; 3];
            let mut cooldown_until = [i64::MIN; 3];
            for (s, dt, score) in stream {
                let i = s as usize;
                ts[i] += i64::from(dt);
                let name = format!("s{i}");
                let before = e.phase(&name);
                let em = e.observe(&name, ts[i], score, 0.5);
                let after = e.phase(&name);
                if let Phase::Cooldown { until_ms } = after {
                    cooldown_until[i] = until_ms;
                }
                if let Some(em) = em {
                    // no alert during cooldown
                    let was_cooling = matches!(before, Phase::Cooldown { .. });
                    prop_assert!(ts[i] >= cooldown_until[i] || !was_cooling);
                    // every alert belongs to the episode open afterwards
                    prop_assert_eq!(after, Phase::Open { episode_id: em.episode_id, severity: em.severity });
                    match em.kind {
                        EmitKind::Opened => {
                            prop_assert!(em.episode_id > last_episode);
                            last_episode = em.episode_id;
                        }
                        EmitKind::Escalated => {
                            let (id, sev) = open[i].unwrap();
                            prop_assert_eq!(id, em.episode_id);
                            prop_assert!(em.severity > sev);
                        }
                    }
                    open[i] = Some((em.episode_id, em.severity));
                    prop_assert!(score > c.threshold.unwrap() - c.hysteresis);
                }
                if !matches!(after, Phase::Open { .. }) {
                    open[i] = None;
                }
            }
        }

        #[test]
        fn scores_between_exit_and_enter_never_open_a_new_episode(
            c in arb_cfg(),
            scores in prop::collection::vec(0.0f64..1.0, 1..200),
        ) {
            prop_assume!(c.hysteresis > 0.01);
            let enter = c.threshold.unwrap();
            let exit = (enter - c.hysteresis).max(0.0);
            let mut e = RulesEngine::new(RulesConfig { min_duration: 1, ..c.clone() }, 0);
            let first = e.observe("a", 0, (enter + 0.01).min(1.0), 0.5);
            prop_assume!(first.is_some() && enter + 0.01 <= 1.0);
            for (t, s) in scores.iter().enumerate() {
                // squeeze into (exit, enter]
                let s = exit + (enter - exit) * (0.001 + 0.998 * s);
                if let Some(em) = e.observe("a", t as i64 + 1, s, 0.5) {
                    prop_assert_eq!(em.episode_id, 1);
                    prop_assert_eq!(em.kind, EmitKind::Escalated);
                }
            }
            let still_open = matches!(e.phase("a"), Phase::Open { episode_id: 1, .. });
            prop_assert!(still_open);
        }

        #[test]
        fn severity_never_decreases_inside_an_episode(
            c in arb_cfg(),
            scores in prop::collection::vec(0.0f64..1.0, 1..200),
        ) {
            let mut e = RulesEngine::new(c, 0);
            let mut last: Option<(u64, Severity)> = None;
            for (t, s) in scores.into_iter().enumerate() {
                if let Some(em) = e.observe("a", t as i64, s, 0.5) {
                    if let Some((id, sev)) = last && id == em.episode_id {
                        prop_assert!(em.severity > sev);
                    }
                    last = Some((em.episode_id, em.severity));
                }
            }
        }
    }
}
