//! `anomaly-coordinator demo`: the README's first command.
//!
//! Starts the coordinator on its embedded defaults (embedded MQTT broker,
//! sled store, no Kafka unless `KAFKA_BROKERS` is set) and a small fleet of
//! in-process agents, one per labelled NAB series bundled in `tests/data/nab`.
//! Each agent replays its series from a CSV file through the real agent
//! (file source, series features, an Isolation Forest trained on the series'
//! first 15 % and installed locally, alert rules, sled outbox, MQTT uplink),
//! compressed into the demo's duration. The coordinator stores and acks the
//! alerts; the demo prints them as they arrive and ends with precision
//! (alerts inside a labelled window) and recall (windows with an alert) per
//! series. The REST API and `/metrics` answer while it runs.
//!
//! `demo --offline` skips the broker and agents and scores the series
//! in-process with Isolation Forest and Half-Space Trees side by side.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use sad_agent::config::AgentConfig;
use sad_agent::model_manager::ModelManager;
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::data::NabSeries;

use crate::app::serve;
use crate::config::CoordinatorConfig;
use crate::store::{AlertQuery, StoredAlert};

use sad_models::Detector;
use sad_models::data;
use sad_models::features::{SERIES_FEATURE_NAMES, SeriesFeaturizer};
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};
use sad_models::streaming::{HalfSpaceTrees, HstParams};

use sad_models::eval::nab::probationary_length;

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// NAB-layout folder to replay (defaults to the copy bundled with the repository).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Alerts printed per series (all are counted).
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Share of training rows the calibration places above the threshold.
    #[arg(long, default_value_t = 0.01)]
    pub contamination: f64,
    /// Seconds the fleet replays its series in.
    #[arg(long, default_value_t = 40)]
    pub duration: u64,
    /// REST API address.
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub api: SocketAddr,
    /// Prometheus `/metrics` address.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub metrics: SocketAddr,
    /// Keep the coordinator's and agents' state here (default: a temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Score in-process without broker and agents (the quick comparison).
    #[arg(long)]
    pub offline: bool,
}

/// Where the bundled NAB copy lives in a checkout.
pub fn bundled_nab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/nab")
}

/// Precision and recall of one detector on one series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeriesOutcome {
    /// Alerts raised after the training period.
    pub alerts: usize,
    /// Alerts that fell inside a labelled window.
    pub alerts_in_windows: usize,
    /// Labelled windows.
    pub windows: usize,
    /// Windows with at least one alert.
    pub windows_hit: usize,
}

impl SeriesOutcome {
    /// Share of alerts inside labelled windows (1 when there are no alerts).
    pub fn precision(&self) -> f64 {
        if self.alerts == 0 {
            1.0
        } else {
            self.alerts_in_windows as f64 / self.alerts as f64
        }
    }

    /// Share of windows with an alert (1 when there are no windows).
    pub fn recall(&self) -> f64 {
        if self.windows == 0 {
            1.0
        } else {
            self.windows_hit as f64 / self.windows as f64
        }
    }
}

/// Counts alerts against windows, ignoring rows before `start`.
pub fn outcome(flags: &[bool], windows: &[(usize, usize)], start: usize) -> SeriesOutcome {
    let mut o = SeriesOutcome {
        windows: windows.len(),
        ..Default::default()
    };
    let mut hit = vec![false; windows.len()];
    for (i, _) in flags.iter().enumerate().skip(start).filter(|(_, f)| **f) {
        o.alerts += 1;
        if let Some(w) = windows.iter().position(|&(a, b)| (a..=b).contains(&i)) {
            o.alerts_in_windows += 1;
            hit[w] = true;
        }
    }
    o.windows_hit = hit.iter().filter(|h| **h).count();
    o
}

/// Runs the demo and prints what it sees.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.offline {
        return run_offline(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run_fleet(args)).map(|_| ())
}

/// Feature window of the agents' series featuriser (as in `eval nab`).
const WINDOW: usize = 12;

/// One demo agent: the series it replays and where its files live.
struct DemoAgent<'a> {
    id: String,
    model: String,
    series: &'a NabSeries,
    dir: PathBuf,
}

impl DemoAgent<'_> {
    /// The series key the agent reports: the NAB file's stem.
    fn series_key(&self) -> String {
        let name = self
            .series
            .name
            .rsplit('/')
            .next()
            .unwrap_or(&self.series.name);
        name.trim_end_matches(".csv").to_string()
    }

    /// Writes the replay CSV, trains and installs the model, returns the agent's config.
    fn prepare(&self, mqtt_url: &str, speed: f64, contamination: f64) -> Result<AgentConfig> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let mut csv = String::from("ts,series,value,label\n");
        for (i, (&t, &v)) in self
            .series
            .timestamps
            .iter()
            .zip(&self.series.values)
            .enumerate()
        {
            let label = self
                .series
                .windows
                .iter()
                .any(|&(a, b)| (a..=b).contains(&i));
            let _ = writeln!(
                csv,
                "{},{},{v},{}",
                t * 1000,
                self.series_key(),
                u8::from(label)
            );
        }
        let csv_path = self.dir.join("replay.csv");
        std::fs::write(&csv_path, csv).with_context(|| format!("write {}", csv_path.display()))?;

        let n = self.series.values.len();
        let train = probationary_length(n).max(2);
        let d = SERIES_FEATURE_NAMES.len();
        let feats = SeriesFeaturizer::featurize(WINDOW, &self.series.values[..train]);
        let forest = IsolationForestParams {
            max_samples: MaxSamples::Count(256),
            contamination: Contamination::Fraction(contamination),
            ..IsolationForestParams::default()
        }
        .fit(&feats, d)?;
        let (manifest, payload) = iforest_bundle(
            ManifestSpec {
                name: self.model.clone(),
                version: 1,
                parent_version: None,
                feature_names: SERIES_FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
                window: 1,
                scaler: None,
                training_data: format!(
                    "NAB {} rows 0..{train} (probationary period)",
                    self.series.name
                ),
                training_rows: train as u64,
                metrics: Default::default(),
                created_ms: sad_agent::heartbeat::now_ms(),
            },
            &forest,
        );
        let models_dir = self.dir.join("models");
        ModelManager::open(&models_dir, None, None)?.install_local(manifest, payload)?;

        let toml = format!(
            r#"
agent_id = "{id}"
data_dir = "{dir}"
log_level = "warn"
[uplink]
url = "{mqtt_url}"
[model]
path = "{models}"
[rules]
cooldown_ms = 3600000
[http]
enabled = false
[[sources]]
type = "file"
name = "replay"
path = "{csv}"
speed = {speed}
model = "{model}"
[sources.mapping]
fields = ["value"]
series = {{ field = "series" }}
timestamp_field = "ts"
label_field = "label"
featurize_window = {WINDOW}
"#,
            id = self.id,
            dir = self.dir.display(),
            models = models_dir.display(),
            csv = csv_path.display(),
            model = self.model,
        );
        let cfg: AgentConfig = sad_common::config::parse_toml(self.dir.join("agent.toml"), &toml)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs the fleet demo; returns each agent's id and outcome.
pub async fn run_fleet(args: &DemoArgs) -> Result<Vec<(String, SeriesOutcome)>> {
    let dir = args.data.clone().unwrap_or_else(bundled_nab_dir);
    let corpus = data::load_nab_corpus(&dir)
        .with_context(|| format!("load the demo data from {}", dir.display()))?;
    let tmp = tempfile::tempdir().context("create a temporary folder")?;
    let work = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());

    let mut cfg = CoordinatorConfig::load(None)?;
    cfg.api_listen = args.api;
    cfg.prometheus_listen = args.metrics;
    cfg.data_dir = work.join("coordinator");
    cfg.env.model_path = work.join("coordinator/models");
    if cfg.env.mqtt_url.is_none() {
        cfg.broker_listen = "127.0.0.1:0".parse()?;
    }
    let stop = CancellationToken::new();
    let running = serve(cfg, stop.clone())
        .await
        .context("start the coordinator")?;

    let replay_ms = (args.duration.max(5) * 1000) as f64 * 0.8;
    let agents: Vec<DemoAgent> = corpus
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| DemoAgent {
            id: format!("demo-agent-{}", i + 1),
            model: format!("nab{}", i + 1),
            series: s,
            dir: work.join(format!("agents/{}", i + 1)),
        })
        .collect();
    let mut handles = Vec::new();
    for a in &agents {
        let span_ms = (a.series.timestamps.last().copied().unwrap_or(0)
            - a.series.timestamps.first().copied().unwrap_or(0)) as f64
            * 1000.0;
        let speed = (span_ms / replay_ms).max(1.0);
        let cfg = a.prepare(&running.mqtt_url, speed, args.contamination)?;
        handles.push(sad_agent::app::start(cfg, stop.clone()).await?);
    }

    let api = running.api_addr;
    println!(
        "demo: coordinator on embedded defaults with {} agents",
        agents.len()
    );
    println!(
        "  REST API     http://{api}/api/v1/health   (alerts: /api/v1/alerts, agents: /api/v1/agents)"
    );
    println!("  Prometheus   http://{}/metrics", running.metrics_addr);
    println!("  MQTT broker  {}", running.mqtt_url);
    println!(
        "  try: curl -s -XPOST {api}/api/v1/detect -H 'content-type: application/json' -d '{{\"data\": [1.2, 3.4, 5.6, 7.8], \"model_type\": \"isolation_forest\", \"threshold\": 0.1}}'"
    );
    for a in &agents {
        println!(
            "  {} replays {} ({} points, {} labelled windows)",
            a.id,
            a.series.name,
            a.series.values.len(),
            a.series.windows.len()
        );
    }
    println!(
        "\nalerts as the coordinator stores them (first {} per agent shown):",
        args.show
    );

    let deadline = Instant::now() + Duration::from_secs(args.duration.max(5));
    let mut seen: HashSet<String> = HashSet::new();
    let mut shown: std::collections::HashMap<String, usize> = Default::default();
    loop {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = ctrl_c => break,
        }
        let store = running.store.clone();
        let batch = tokio::task::spawn_blocking(move || {
            store.query(&AlertQuery {
                limit: Some(crate::store::MAX_QUERY_LIMIT),
                ..AlertQuery::default()
            })
        })
        .await??;
        for s in batch.iter().rev() {
            let id = s.alert.alert_id();
            if !seen.insert(id.clone()) {
                continue;
            }
            let n = shown.entry(s.alert.agent_id.clone()).or_default();
            if *n < args.show {
                *n += 1;
                print_alert(s);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }

    let store = running.store.clone();
    let all = tokio::task::spawn_blocking(move || {
        store.query(&AlertQuery {
            limit: Some(crate::store::MAX_QUERY_LIMIT),
            ..AlertQuery::default()
        })
    })
    .await??;
    println!("\n| agent | series | alerts stored | precision | recall |\n|---|---|---|---|---|");
    let mut outcomes = Vec::new();
    for a in &agents {
        let o = fleet_outcome(a.series, &a.id, &all);
        outcomes.push((a.id.clone(), o));
        println!(
            "| {} | {} | {} | {:.2} | {:.2} ({}/{}) |",
            a.id,
            a.series.name,
            o.alerts,
            o.precision(),
            o.recall(),
            o.windows_hit,
            o.windows
        );
    }
    println!(
        "\nprecision = alerts inside labelled windows / alerts; recall = windows with an alert / windows"
    );
    println!(
        "{} agents online, {} alerts stored",
        running.fleet.online(),
        running.store.len()
    );
    stop.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h.done).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
    drop(tmp);
    Ok(outcomes)
}

fn print_alert(s: &StoredAlert) {
    let a = &s.alert;
    let why: Vec<String> = a
        .explanation
        .iter()
        .map(|c| format!("{}={:.2}", c.feature, c.weight))
        .collect();
    println!(
        "  {} {:<8} {} score {:.3} value {:>9.3} top [{}]{}",
        a.alert_id(),
        a.severity.as_str(),
        a.series,
        a.score,
        a.values.first().copied().unwrap_or(f64::NAN),
        why.join(", "),
        if a.label == Some(true) {
            "  (inside a labelled window)"
        } else {
            ""
        }
    );
}

/// Precision and recall of one agent's stored alerts against its series' windows.
fn fleet_outcome(series: &NabSeries, agent: &str, alerts: &[StoredAlert]) -> SeriesOutcome {
    let train = probationary_length(series.values.len());
    let start_ms = series.timestamps.get(train).copied().unwrap_or(i64::MAX) * 1000;
    let mut flags = vec![false; series.values.len()];
    for s in alerts
        .iter()
        .filter(|s| s.alert.agent_id == agent && s.alert.ts_ms >= start_ms)
    {
        if let Ok(i) = series.timestamps.binary_search(&(s.alert.ts_ms / 1000)) {
            flags[i] = true;
        }
    }
    outcome(&flags, &series.windows, train)
}

/// The in-process comparison of `demo --offline`.
fn run_offline(args: &DemoArgs) -> Result<()> {
    let dir = args.data.clone().unwrap_or_else(bundled_nab_dir);
    let corpus = data::load_nab_corpus(&dir)
        .with_context(|| format!("load the demo data from {}", dir.display()))?;
    println!(
        "demo: replaying {} labelled series from {}\n",
        corpus.series.len(),
        dir.display()
    );
    let d = SERIES_FEATURE_NAMES.len();
    let mut summary = Vec::new();
    for s in &corpus.series {
        let train = probationary_length(s.values.len()).max(2);
        let feats = SeriesFeaturizer::featurize(12, &s.values);
        let forest = IsolationForestParams {
            max_samples: MaxSamples::Count(256),
            contamination: Contamination::Fraction(args.contamination),
            ..IsolationForestParams::default()
        }
        .fit(&feats[..train * d], d)?;
        let mut hst = HalfSpaceTrees::new(HstParams::default(), d)?;
        println!(
            "== {} ({} points, {} labelled windows)",
            s.name,
            s.values.len(),
            s.windows.len()
        );
        let mut if_flags = Vec::with_capacity(s.values.len());
        let mut hst_flags = Vec::with_capacity(s.values.len());
        let mut shown = 0;
        for (i, row) in feats.chunks_exact(d).enumerate() {
            let sc = forest.score(row)?;
            hst_flags.push(hst.update_and_score(row)?.is_anomaly);
            if_flags.push(sc.is_anomaly);
            if sc.is_anomaly && i >= train && shown < args.show {
                shown += 1;
                let why: Vec<String> = forest
                    .explain(row, 2)?
                    .iter()
                    .map(|c| format!("{}={:.2}", SERIES_FEATURE_NAMES[c.feature], c.weight))
                    .collect();
                let in_window = s.windows.iter().any(|&(a, b)| (a..=b).contains(&i));
                println!(
                    "  alert row {i:>5} value {:>10.3} score {:.3} top [{}]{}",
                    s.values[i],
                    sc.score,
                    why.join(", "),
                    if in_window {
                        "  (inside a labelled window)"
                    } else {
                        ""
                    }
                );
            }
        }
        let o_if = outcome(&if_flags, &s.windows, train);
        let o_hst = outcome(&hst_flags, &s.windows, train);
        summary.push((s.name.clone(), o_if, o_hst));
    }
    println!("\n| series | detector | alerts | precision | recall |\n|---|---|---|---|---|");
    for (name, o_if, o_hst) in &summary {
        for (det, o) in [("isolation_forest", o_if), ("half_space_trees", o_hst)] {
            println!(
                "| {name} | {det} | {} | {:.2} | {:.2} ({}/{}) |",
                o.alerts,
                o.precision(),
                o.recall(),
                o.windows_hit,
                o.windows
            );
        }
    }
    println!(
        "\nprecision = alerts inside labelled windows / alerts; recall = windows with an alert / windows"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fleet_demo_delivers_alerts_from_every_agent_to_the_coordinator() {
        let args = DemoArgs {
            data: None,
            show: 1,
            contamination: 0.01,
            duration: 8,
            api: "127.0.0.1:0".parse().unwrap(),
            metrics: "127.0.0.1:0".parse().unwrap(),
            data_dir: None,
            offline: false,
        };
        let outcomes = run_fleet(&args).await.unwrap();
        assert_eq!(outcomes.len(), 4);
        for (agent, o) in &outcomes {
            assert!(o.alerts > 0, "{agent} delivered no alert: {o:?}");
            assert!(o.windows > 0, "{agent} has no labelled window: {o:?}");
        }
        let hit: usize = outcomes.iter().map(|(_, o)| o.windows_hit).sum();
        assert!(hit >= 5, "the fleet found {hit} of 9 labelled windows");
    }

    #[test]
    fn outcome_counts_alerts_in_and_out_of_windows_after_training() {
        let mut flags = vec![false; 20];
        for i in [1, 6, 7, 15] {
            flags[i] = true;
        }
        let o = outcome(&flags, &[(5, 8), (12, 13)], 3);
        assert_eq!(
            o,
            SeriesOutcome {
                alerts: 3,
                alerts_in_windows: 2,
                windows: 2,
                windows_hit: 1
            }
        );
        assert!((o.precision() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(o.recall(), 0.5);
    }
}
