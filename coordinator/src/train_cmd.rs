//! `anomaly-coordinator train ...`: train, fine-tune and measure the neural
//! detectors, and rebuild `models/pretrained/`.
//!
//! - `fit`: train a dense AE, VAE or LSTM-AE on a numeric CSV and save the
//!   manifest, payload and `.tflite` files (progress bar with the loss);
//! - `finetune`: continue a saved model on new data (fewer epochs, lower
//!   learning rate), saving version + 1 with its parent in the manifest;
//! - `pretrained`: the one command that rebuilds `models/pretrained/` from
//!   the NAB series the repository carries;
//! - `eval-tabular`, `eval-skab`, `eval-nab`: the figures of `docs/QUALITY.md`;
//! - `submit`: send a training request to a running coordinator's API and
//!   follow its job with a progress bar until it is done (a small blocking
//!   HTTP/1.0 client over `std::net`, no client library).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use sad_models::data;
use sad_models::nn::experiments::{self, NnKind};
use sad_models::nn::fit::{FitOptions, fit};
use sad_models::nn::pretrained::{self, TrainingRecord};
use sad_models::nn::train::{EpochReport, TrainConfig};

/// Arguments of `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TrainCommand,
}

/// The `train` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Train a neural detector on a numeric CSV and save it.
    Fit(FitArgs),
    /// Continue training a saved neural model on new data (new version, parent recorded).
    Finetune(FinetuneArgs),
    /// Rebuild the pre-trained models (Isolation Forest, dense AE, LSTM-AE) from NAB.
    Pretrained(PretrainedArgs),
    /// ROC-AUC of the dense AE and VAE on tabular sets (fit on all rows, score all rows).
    EvalTabular(EvalTabularArgs),
    /// F1 of the LSTM-AE, dense AE and VAE with the SKAB protocol.
    EvalSkab(EvalSkabArgs),
    /// NAB v1 standard score of a univariate LSTM-AE.
    EvalNab(EvalNabArgs),
    /// Submit a training job to a running coordinator and follow it to the end.
    Submit(SubmitArgs),
}

/// Arguments of `train submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The coordinator's API (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    pub api: String,
    /// Bearer token of mutating endpoints.
    #[arg(long, env = "API_TOKEN")]
    pub token: Option<String>,
    /// Model kind: isolation_forest, autoencoder, lstm, vae, half_space_trees, ewma.
    #[arg(long, default_value = "isolation_forest")]
    pub model_type: String,
    /// Model name (default `{model_type}_{time}`).
    #[arg(long)]
    pub name: Option<String>,
    /// CSV path inside the coordinator's data directory.
    #[arg(long, conflicts_with_all = ["fleet_samples", "kafka_topic"])]
    pub csv: Option<String>,
    /// Train on the fleet's uploaded samples of this model.
    #[arg(long)]
    pub fleet_samples: Option<String>,
    /// Train on a range of this Kafka topic.
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// Kafka partitions (default all).
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// First Kafka offset per partition.
    #[arg(long)]
    pub start_offset: Option<i64>,
    /// Kafka offset to stop before.
    #[arg(long)]
    pub end_offset: Option<i64>,
    /// Most rows (fleet samples, Kafka).
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Training parameters as a JSON object (e.g. `{"epochs": 20, "window": 16}`).
    #[arg(long, default_value = "{}")]
    pub params: String,
    /// Calibrated threshold instead of the fitted one.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Skip the quality gate (recorded in the manifest).
    #[arg(long)]
    pub no_gate: bool,
    /// Seconds to wait for the job before giving up.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
}

impl SubmitArgs {
    /// The request body of `POST /api/v1/models/train`.
    pub fn body(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        let data = match (&self.csv, &self.fleet_samples, &self.kafka_topic) {
            (Some(p), None, None) => json!(p),
            (None, Some(m), None) => {
                json!({"source": "fleet_samples", "model": m, "max_rows": self.max_rows})
            }
            (None, None, Some(t)) => json!({
                "source": "kafka",
                "topic": t,
                "partitions": (!self.partitions.is_empty()).then_some(&self.partitions),
                "start_offset": self.start_offset,
                "end_offset": self.end_offset,
                "max_rows": self.max_rows,
            }),
            _ => bail!("give exactly one of --csv, --fleet-samples, --kafka-topic"),
        };
        let params: serde_json::Value =
            serde_json::from_str(&self.params).context("--params is not a JSON object")?;
        if !params.is_object() {
            bail!("--params must be a JSON object");
        }
        let mut body = json!({
            "model_type": self.model_type,
            "training_data": data,
            "parameters": params,
            "gate": !self.no_gate,
        });
        if let Some(n) = &self.name {
            body["model_id"] = json!(n);
        }
        if let Some(t) = self.threshold {
            body["threshold"] = json!(t);
        }
        Ok(body)
    }
}

/// A minimal blocking HTTP/1.0 exchange: status and JSON body. HTTP/1.0 so
/// the server sends the body plain and closes (no chunked encoding to undo).
pub fn http_json(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let rest = base
        .strip_prefix("http://")
        .context("--api must start with http:// (no TLS client here)")?;
    let host = rest.trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(host).with_context(|| format!("connect to {host}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\nContent-Length: {}\r\n",
        payload.len()
    );
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed http response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed http status line")?;
    let json =
        serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_string()));
    Ok((status, json))
}

/// Submits the request and follows the job with a progress bar; returns the job's result.
pub fn submit(a: &SubmitArgs) -> Result<serde_json::Value> {
    let body = a.body()?;
    let (status, resp) = http_json(
        &a.api,
        "POST",
        "/api/v1/models/train",
        Some(&body),
        a.token.as_deref(),
    )?;
    if status != 202 {
        bail!(
            "the coordinator refused the request ({status}): {}",
            resp.get("detail").unwrap_or(&resp)
        );
    }
    let id = resp["job_id"].as_u64().context("no job_id in the answer")?;
    let pb = ProgressBar::new(1000);
    pb.set_style(
        ProgressStyle::with_template("job {prefix} [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(id.to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(a.timeout_s);
    loop {
        let (status, job) = http_json(&a.api, "GET", &format!("/api/v1/jobs/{id}"), None, None)?;
        if status != 200 {
            bail!("job {id}: {status} {}", job.get("detail").unwrap_or(&job));
        }
        pb.set_position((job["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        let mut msg = job["phase"].as_str().unwrap_or("queued").to_string();
        if let (Some(e), Some(n)) = (job["epoch"].as_u64(), job["epochs"].as_u64()) {
            msg.push_str(&format!(" epoch {e}/{n}"));
            if let Some(l) = job["loss"].as_f64() {
                msg.push_str(&format!(" loss {l:.5}"));
            }
            if let Some(v) = job["val_loss"].as_f64() {
                msg.push_str(&format!(" val {v:.5}"));
            }
        }
        pb.set_message(msg);
        match job["status"].as_str() {
            Some("succeeded") => {
                pb.finish();
                return Ok(job["result"].clone());
            }
            Some("failed") => {
                pb.abandon();
                bail!(
                    "job {id} failed: {}",
                    job["error"].as_str().unwrap_or("unknown error")
                );
            }
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            pb.abandon();
            bail!("job {id} not done after {} s", a.timeout_s);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Neural model kinds on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Dense autoencoder.
    Autoencoder,
    /// LSTM autoencoder over windows.
    Lstm,
    /// Dense variational autoencoder.
    Vae,
}

impl From<KindArg> for NnKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Autoencoder => NnKind::Dense,
            KindArg::Lstm => NnKind::Lstm,
            KindArg::Vae => NnKind::Vae,
        }
    }
}

/// Training hyper-parameters shared by `fit` and `finetune`.
#[derive(Debug, Clone, Args)]
pub struct HyperArgs {
    /// Maximum epochs.
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Epochs without validation improvement before stopping.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Expected share of anomalies in the training data (sets the threshold).
    #[arg(long, default_value_t = 0.01)]
    pub contamination: f64,
    /// N of the batch-N `.tflite` variant.
    #[arg(long, default_value_t = 64)]
    pub batch_n: usize,
}

impl HyperArgs {
    fn options(&self) -> FitOptions {
        FitOptions {
            train: TrainConfig {
                epochs: self.epochs,
                batch_size: self.batch_size,
                learning_rate: self.lr,
                patience: self.patience,
                seed: self.seed,
                ..TrainConfig::default()
            },
            batch: self.batch_n,
            contamination: self.contamination,
            window_stride: 1,
            max_samples: 0,
        }
    }
}

/// Arguments of `train fit`.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// Model kind.
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// Numeric CSV, one row per event (per time step for `lstm`); a column
    /// named `label` is left out.
    #[arg(long)]
    pub csv: PathBuf,
    /// Field delimiter of the CSV.
    #[arg(long, default_value_t = ',')]
    pub delimiter: char,
    /// Window length of the LSTM-AE.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Model name (letters, digits, `_`, `-`).
    #[arg(long)]
    pub name: String,
    /// Output folder.
    #[arg(long, default_value = "models/trained")]
    pub out: PathBuf,
    /// Hyper-parameters.
    #[command(flatten)]
    pub hyper: HyperArgs,
}

/// Arguments of `train finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Folder of the saved model.
    #[arg(long, default_value = "models/pretrained")]
    pub dir: PathBuf,
    /// Name of the saved model.
    #[arg(long)]
    pub name: String,
    /// Name of the new version (default: the same name).
    #[arg(long)]
    pub new_name: Option<String>,
    /// Numeric CSV of new data, same columns as the model's features.
    #[arg(long)]
    pub csv: PathBuf,
    /// Field delimiter of the CSV.
    #[arg(long, default_value_t = ',')]
    pub delimiter: char,
    /// Maximum epochs (fewer than a fresh training).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// AdamW learning rate (lower than a fresh training).
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Seed of shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Expected share of anomalies in the new data (sets the threshold).
    #[arg(long, default_value_t = 0.01)]
    pub contamination: f64,
}

/// Arguments of `train pretrained`.
#[derive(Debug, Args)]
pub struct PretrainedArgs {
    /// NAB folder with `data/` and `labels/` (the repository carries a few series).
    #[arg(long, default_value = "tests/data/nab")]
    pub nab: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "models/pretrained")]
    pub out: PathBuf,
}

/// Arguments of `train eval-tabular`.
#[derive(Debug, Args)]
pub struct EvalTabularArgs {
    /// Folder of `x0..,label` CSVs, or one CSV.
    #[arg(long, default_value = "../shared/data/tabular")]
    pub path: PathBuf,
    /// Maximum epochs per model.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `train eval-skab`.
#[derive(Debug, Args)]
pub struct EvalSkabArgs {
    /// SKAB folder with `valve1/` and `anomaly-free/`.
    #[arg(long, default_value = "../shared/data/skab")]
    pub path: PathBuf,
    /// LSTM window length.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Maximum epochs per file.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Share of training rows above the threshold.
    #[arg(long, default_value_t = 0.01)]
    pub contamination: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `train eval-nab`.
#[derive(Debug, Args)]
pub struct EvalNabArgs {
    /// NAB folder with `data/` and `labels/`.
    #[arg(long, default_value = "../shared/data/nab")]
    pub path: PathBuf,
    /// LSTM window length.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Maximum epochs per series.
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    /// Report raw per-step scores instead of only their rising edges.
    #[arg(long)]
    pub no_edges: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn epoch_bar(epochs: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(epochs as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} epochs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}

fn report(pb: &ProgressBar, r: &EpochReport) {
    pb.set_position(r.epoch as u64);
    pb.set_message(match r.val_loss {
        Some(v) => format!("loss {:.5} val {:.5}", r.train_loss, v),
        None => format!("loss {:.5}", r.train_loss),
    });
}

/// Reads a numeric CSV without its `label` column: names and row-major values.
fn read_rows(path: &PathBuf, delimiter: char) -> Result<(Vec<String>, Vec<f64>)> {
    let csv = data::load_numeric_csv(path, delimiter as u8)
        .with_context(|| format!("read {}", path.display()))?;
    let keep: Vec<usize> = (0..csv.n_columns)
        .filter(|&i| !csv.column_names[i].eq_ignore_ascii_case("label"))
        .collect();
    if keep.is_empty() {
        bail!("{} has no feature columns", path.display());
    }
    let rows = csv
        .values
        .chunks_exact(csv.n_columns)
        .flat_map(|r| keep.iter().map(move |&i| r[i]))
        .collect();
    let names = keep.iter().map(|&i| csv.column_names[i].clone()).collect();
    Ok((names, rows))
}

/// Runs a `train` subcommand.
pub fn run(args: &TrainArgs) -> Result<()> {
    match &args.command {
        TrainCommand::Fit(a) => {
            let (names, rows) = read_rows(&a.csv, a.delimiter)?;
            let arch = NnKind::from(a.kind).arch(names.len(), a.window);
            let pb = epoch_bar(a.hyper.epochs, &a.name);
            let fitted = fit(&arch, &rows, &a.hyper.options(), &mut |r| report(&pb, r))?;
            pb.finish();
            let metrics = fitted.outcome.metrics();
            let rec = TrainingRecord {
                name: a.name.clone(),
                version: 1,
                parent_version: None,
                feature_names: names.clone(),
                data: a.csv.display().to_string(),
                rows: (rows.len() / names.len()) as u64,
                metrics,
                notes: Some(format!("{arch:?}")),
            };
            let (m, p, extra) = pretrained::nn_files(&fitted, &rec)?;
            pretrained::save(&a.out, &m, &p, &extra)?;
            println!(
                "saved {} v{} to {} (export max abs diff {:.2e})",
                m.name,
                m.version,
                a.out.display(),
                fitted.exported.max_abs_diff
            );
        }
        TrainCommand::Finetune(a) => {
            let (_, rows) = read_rows(&a.csv, a.delimiter)?;
            let new_name = a.new_name.clone().unwrap_or_else(|| a.name.clone());
            let hyper = HyperArgs {
                epochs: a.epochs,
                lr: a.lr,
                batch_size: 64,
                patience: 3,
                seed: a.seed,
                contamination: a.contamination,
                batch_n: 64,
            };
            let pb = epoch_bar(a.epochs, &new_name);
            let m = pretrained::finetune_saved(
                &a.dir,
                &a.name,
                &new_name,
                &rows,
                &a.csv.display().to_string(),
                &hyper.options(),
                &mut |r| report(&pb, r),
            )?;
            pb.finish();
            println!(
                "saved {} v{} (parent v{:?}) to {}",
                m.name,
                m.version,
                m.parent_version,
                a.dir.display()
            );
        }
        TrainCommand::Pretrained(a) => {
            let pb = epoch_bar(60, "pretrained");
            let ms = pretrained::build_pretrained(&a.nab, &a.out, &mut |name, r| {
                pb.set_prefix(name.to_string());
                pb.set_length(r.epochs as u64);
                report(&pb, r);
            })?;
            pb.finish_and_clear();
            for m in ms {
                println!(
                    "{} ({}) v{}: threshold {}, metrics {:?}",
                    m.name, m.kind, m.version, m.threshold, m.training.metrics
                );
            }
        }
        TrainCommand::EvalTabular(a) => {
            let files: Vec<PathBuf> = if a.path.is_dir() {
                let mut v: Vec<PathBuf> = std::fs::read_dir(&a.path)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                    .collect();
                v.sort();
                v
            } else {
                vec![a.path.clone()]
            };
            println!("| set | dense AE ROC-AUC | VAE ROC-AUC |");
            println!("|---|---|---|");
            for f in files {
                let ae = experiments::tabular_auc(&f, NnKind::Dense, a.epochs, a.seed)?;
                let vae = experiments::tabular_auc(&f, NnKind::Vae, a.epochs, a.seed)?;
                let name = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                println!("| {name} | {ae:.3} | {vae:.3} |");
            }
        }
        TrainCommand::EvalSkab(a) => {
            let d = data::load_skab_dir(&a.path)?;
            println!("| detector | F1 | FAR | MAR |");
            println!("|---|---|---|---|");
            for (name, kind, window) in [
                (format!("LSTM-AE (T={})", a.window), NnKind::Lstm, a.window),
                ("dense AE".to_string(), NnKind::Dense, 1),
                ("VAE".to_string(), NnKind::Vae, 1),
            ] {
                let c = experiments::skab_counts(
                    &d.files,
                    kind,
                    window,
                    a.epochs,
                    a.contamination,
                    a.seed,
                )?;
                println!(
                    "| {name} | {:.3} | {:.3} | {:.3} |",
                    c.f1(),
                    c.false_alarm_rate(),
                    c.missed_alarm_rate()
                );
            }
        }
        TrainCommand::Submit(a) => {
            let r = submit(a)?;
            let gate = &r["gate"];
            println!(
                "saved {} v{} ({}): {}",
                r["model_id"].as_str().unwrap_or("?"),
                r["version"],
                if r["publishable"].as_bool() == Some(true) {
                    "publishable"
                } else {
                    "not publishable"
                },
                gate["note"].as_str().unwrap_or("")
            );
        }
        TrainCommand::EvalNab(a) => {
            let r = experiments::nab_lstm(&a.path, a.window, a.epochs, a.seed, !a.no_edges)?;
            println!(
                "LSTM-AE (T={}) NAB standard score {:.1} at threshold {:.3}",
                a.window, r.normalized_score, r.threshold
            );
        }
    }
    Ok(())
}
