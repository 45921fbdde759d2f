//! CSV loaders for tabular sets, NAB series and SKAB files.
//!
//! Every loader reads the whole file, never panics on bad input and returns a
//! [`DataError`] that names the file, the 1-based line, the column (name and
//! 1-based index) and what was expected, for example
//! `cardio.csv line 17, column "x3" (4): expected a number, got "abc"`.
//! Values must be finite; labels must be `0` or `1` (`0.0`/`1.0` accepted).
//!
//! | loader | format |
//! |---|---|
//! | [`load_tabular`] | `,`-separated, header `x0..x{d-1},label` (any feature names, one `label` column) |
//! | [`load_nab_series`], [`load_nab_corpus`] | NAB: `timestamp,value`, windows from `labels/combined_windows.json` |
//! | [`load_skab`], [`load_skab_dir`] | SKAB: `;`-separated, `datetime;<features>;anomaly;changepoint` |
//! | [`load_numeric_csv`] | any delimiter, a header and only numeric columns |
//!
//! Timestamps `YYYY-MM-DD HH:MM:SS[.ffffff]` (a `T` separator is accepted) are
//! read as UTC; the corpora carry no zone, and only their order and equality
//! matter here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::ModelError;

/// Why a data file could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file or folder could not be read.
    #[error("{file}: {source}")]
    Io {
        /// Path of the file or folder.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file has no header line.
    #[error("{file}: empty file, expected a header line")]
    Empty {
        /// Path of the file.
        file: String,
    },
    /// The file has a header but no data rows.
    #[error("{file}: no data rows after the header")]
    NoRows {
        /// Path of the file.
        file: String,
    },
    /// A required column is missing from the header.
    #[error("{file} line {line}: missing column \"{column}\" in the header")]
    MissingColumn {
        /// Path of the file.
        file: String,
        /// Line of the header (1-based).
        line: u64,
        /// Name of the missing column.
        column: String,
    },
    /// A row has a different number of fields than the header.
    #[error("{file} line {line}: expected {expected} fields as in the header, got {got}")]
    FieldCount {
        /// Path of the file.
        file: String,
        /// Line of the row (1-based).
        line: u64,
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        got: usize,
    },
    /// A field could not be parsed or is out of range.
    #[error(
        "{file} line {line}, column \"{column}\" ({index}): expected {expected}, got \"{got}\""
    )]
    Field {
        /// Path of the file.
        file: String,
        /// Line of the row (1-based).
        line: u64,
        /// Name of the column from the header.
        column: String,
        /// Position of the column (1-based).
        index: usize,
        /// What the field should have been.
        expected: &'static str,
        /// The field as found (lossy UTF-8).
        got: String,
    },
    /// The file is well-formed CSV but inconsistent (a label window that
    /// matches no row, a label file that names a missing series, ...).
    #[error("{file}: {message}")]
    Invalid {
        /// Path of the file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl From<DataError> for ModelError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Io { file, source } => ModelError::Io {
                context: file,
                source,
            },
            other => ModelError::Data(other.to_string()),
        }
    }
}

/// Result type of the loaders.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// How far a multi-file load has come, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Files done so far, including `item`.
    pub done: usize,
    /// Files in total.
    pub total: usize,
    /// The file just finished (e.g. `realKnownCause/nyc_taxi.csv`).
    pub item: &'a str,
}

/// A labelled tabular set: row-major features and one label per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Tabular {
    /// Feature column names in file order (the `label` column removed).
    pub feature_names: Vec<String>,
    /// Features per row.
    pub n_features: usize,
    /// Row-major features, `labels.len() * n_features` values.
    pub x: Vec<f64>,
    /// `true` for an anomaly (label 1).
    pub labels: Vec<bool>,
}

impl Tabular {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// Features of row `i`, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[f64]> {
        self.x
            .get(i * self.n_features..(i + 1) * self.n_features)
            .filter(|_| i < self.labels.len())
    }
}

/// A numeric CSV: a header and only finite numbers below it.
#[derive(Debug, Clone, PartialEq)]
pub struct NumericCsv {
    /// Column names from the header.
    pub column_names: Vec<String>,
    /// Values per row (the number of columns).
    pub n_columns: usize,
    /// Row-major values.
    pub values: Vec<f64>,
}

impl NumericCsv {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.values.len().checked_div(self.n_columns).unwrap_or(0)
    }
}

/// One NAB series with its labelled anomaly windows.
#[derive(Debug, Clone, PartialEq)]
pub struct NabSeries {
    /// Path relative to NAB's `data/` folder, e.g. `realKnownCause/nyc_taxi.csv`.
    pub name: String,
    /// Unix seconds (timestamps read as UTC), one per row.
    pub timestamps: Vec<i64>,
    /// The `value` column.
    pub values: Vec<f64>,
    /// Labelled windows as inclusive row ranges `(first, last)`, in file order.
    pub windows: Vec<(usize, usize)>,
}

impl NabSeries {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.values.len()
    }

    /// Maps label windows given as timestamp strings to inclusive row ranges,
    /// as NAB does: each end must equal the timestamp of exactly one row.
    ///
    /// NAB (`CorpusLabel.getWindows`) rejects a label whose timestamp is not
    /// found exactly once in the file; the sweeper then enters a window at the
    /// row whose time equals its start and leaves it at the row of its end.
    /// Windows must be ordered and must not overlap (NAB's `validateLabels`).
    pub fn locate_windows(&self, windows: &[(String, String)]) -> Result<Vec<(usize, usize)>> {
        let invalid = |message: String| DataError::Invalid {
            file: self.name.clone(),
            message,
        };
        let mut out: Vec<(usize, usize)> = Vec::with_capacity(windows.len());
        for (start, end) in windows {
            let s = self.row_of(start).map_err(&invalid)?;
            let e = self.row_of(end).map_err(&invalid)?;
            if e < s {
                return Err(invalid(format!(
                    "label window [\"{start}\", \"{end}\"] ends before it starts"
                )));
            }
            if let Some(&(_, prev_end)) = out.last()
                && s < prev_end
            {
                return Err(invalid(format!(
                    "label window [\"{start}\", \"{end}\"] overlaps or precedes the previous window"
                )));
            }
            out.push((s, e));
        }
        Ok(out)
    }

    fn row_of(&self, stamp: &str) -> std::result::Result<usize, String> {
        let micros = parse_timestamp_micros(stamp).ok_or_else(|| {
            format!(
                "label timestamp \"{stamp}\" is not of the form \"YYYY-MM-DD HH:MM:SS[.ffffff]\""
            )
        })?;
        let mut found = None;
        let mut count = 0usize;
        for (i, &t) in self.timestamps.iter().enumerate() {
            if i128::from(t) * 1_000_000 == i128::from(micros) {
                count += 1;
                found.get_or_insert(i);
            }
        }
        match (found, count) {
            (Some(i), 1) => Ok(i),
            (None, _) => Err(format!(
                "label timestamp \"{stamp}\" does not match any row's timestamp"
            )),
            (Some(_), n) => Err(format!(
                "label timestamp \"{stamp}\" matches {n} rows, expected exactly one"
            )),
        }
    }
}

/// The NAB corpus: every series under `data/` with its windows.
#[derive(Debug, Clone, PartialEq)]
pub struct NabCorpus {
    /// Series sorted by name.
    pub series: Vec<NabSeries>,
}

impl NabCorpus {
    /// Rows over all series.
    pub fn n_rows(&self) -> usize {
        self.series.iter().map(NabSeries::n_rows).sum()
    }

    /// Labelled windows over all series.
    pub fn n_windows(&self) -> usize {
        self.series.iter().map(|s| s.windows.len()).sum()
    }

    /// The series with this name (e.g. `realKnownCause/nyc_taxi.csv`).
    pub fn get(&self, name: &str) -> Option<&NabSeries> {
        self.series.iter().find(|s| s.name == name)
    }
}

/// One SKAB recording: row-major sensor features and point labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabFile {
    /// Path relative to the SKAB folder, e.g. `valve1/3.csv` (or the file name
    /// when loaded on its own with [`load_skab`], as `<parent>/<file>`).
    pub name: String,
    /// Unix seconds of the `datetime` column (read as UTC).
    pub timestamps: Vec<i64>,
    /// Feature column names (all columns but `datetime`, `anomaly`, `changepoint`).
    pub feature_names: Vec<String>,
    /// Features per row.
    pub n_features: usize,
    /// Row-major features.
    pub x: Vec<f64>,
    /// `anomaly` column; all `false` when the file has no label columns.
    pub anomaly: Vec<bool>,
    /// `changepoint` column; all `false` when the file has no label columns.
    pub changepoint: Vec<bool>,
    /// Whether the file had `anomaly` and `changepoint` columns
    /// (`anomaly-free.csv` has neither).
    pub labelled: bool,
}

impl SkabFile {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.timestamps.len()
    }
}

/// The SKAB files this project evaluates on.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabDataset {
    /// `valve1/*.csv`, sorted by their numeric file stem (0, 1, ..., 15).
    pub files: Vec<SkabFile>,
    /// `anomaly-free/anomaly-free.csv` when present: normal operation only,
    /// useful as extra training data, not part of the leaderboard's test.
    pub anomaly_free: Option<SkabFile>,
}

// ---------------------------------------------------------------------------
// Low-level CSV reading with precise error positions.

struct Csv {
    file: String,
    reader: csv::Reader<BufReader<File>>,
    header: Vec<String>,
    header_line: u64,
    record: csv::ByteRecord,
}

struct Row {
    line: u64,
}

impl Csv {
    fn open(path: &Path, delimiter: u8) -> Result<Self> {
        let file = path.display().to_string();
        let handle = File::open(path).map_err(|source| DataError::Io {
            file: file.clone(),
            source,
        })?;
        let reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(BufReader::new(handle));
        let mut csv = Csv {
            file,
            reader,
            header: Vec::new(),
            header_line: 1,
            record: csv::ByteRecord::new(),
        };
        let Some(row) = csv.next_row()? else {
            return Err(DataError::Empty { file: csv.file });
        };
        csv.header_line = row.line;
        csv.header = csv
            .record
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_string())
            .collect();
        Ok(csv)
    }

    /// Reads the next record into `self.record`; `None` at the end.
    fn next_row(&mut self) -> Result<Option<Row>> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => Ok(Some(Row {
                line: self.record.position().map_or(0, csv::Position::line),
            })),
            Err(e) => Err(self.csv_error(e)),
        }
    }

    fn csv_error(&self, e: csv::Error) -> DataError {
        let line = e.position().map(csv::Position::line);
        match e.into_kind() {
            csv::ErrorKind::Io(source) => DataError::Io {
                file: self.file.clone(),
                source,
            },
            kind => DataError::Invalid {
                file: self.file.clone(),
                message: match line {
                    Some(l) => format!("line {l}: malformed csv: {kind:?}"),
                    None => format!("malformed csv: {kind:?}"),
                },
            },
        }
    }

    fn column(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::MissingColumn {
                file: self.file.clone(),
                line: self.header_line,
                column: name.to_string(),
            })
    }

    fn check_width(&self, row: &Row) -> Result<()> {
        if self.record.len() != self.header.len() {
            return Err(DataError::FieldCount {
                file: self.file.clone(),
                line: row.line,
                expected: self.header.len(),
                got: self.record.len(),
            });
        }
        Ok(())
    }

    fn field_error(&self, row: &Row, col: usize, expected: &'static str) -> DataError {
        DataError::Field {
            file: self.file.clone(),
            line: row.line,
            column: self.header.get(col).cloned().unwrap_or_default(),
            index: col + 1,
            expected,
            got: String::from_utf8_lossy(self.record.get(col).unwrap_or_default()).into_owned(),
        }
    }

    fn text(&self, col: usize) -> &str {
        std::str::from_utf8(self.record.get(col).unwrap_or_default())
            .unwrap_or("\u{fffd}")
            .trim()
    }

    fn number(&self, row: &Row, col: usize) -> Result<f64> {
        let v: f64 = self
            .text(col)
            .parse()
            .map_err(|_| self.field_error(row, col, "a number"))?;
        if !v.is_finite() {
            return Err(self.field_error(row, col, "a finite number"));
        }
        Ok(v)
    }

    fn label(&self, row: &Row, col: usize) -> Result<bool> {
        match self.text(col).parse::<f64>() {
            Ok(0.0) => Ok(false),
            Ok(1.0) => Ok(true),
            _ => Err(self.field_error(row, col, "a label 0 or 1")),
        }
    }

    fn timestamp(&self, row: &Row, col: usize) -> Result<i64> {
        parse_timestamp_micros(self.text(col))
            .filter(|m| m % 1_000_000 == 0)
            .map(|m| m / 1_000_000)
            .ok_or_else(|| self.field_error(row, col, "a timestamp \"YYYY-MM-DD HH:MM:SS\""))
    }
}

// ---------------------------------------------------------------------------
// Timestamps.

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0i64, |acc, &b| {
        acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
    })
}

/// Parses `YYYY-MM-DD HH:MM:SS[.f{1,9}]` (or with `T`) as UTC microseconds
/// since the Unix epoch; `None` when malformed or out of range.
pub fn parse_timestamp_micros(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let micros = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            let mut v = digits(frac)?;
            // Scale to 9 digits (nanoseconds), then down to microseconds.
            for _ in frac.len()..9 {
                v *= 10;
            }
            v / 1000
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs * 1_000_000 + micros)
}

// ---------------------------------------------------------------------------
// Loaders.

/// Loads a labelled tabular CSV: `,`-separated, a header with any feature
/// names and one `label` column (0 = normal, 1 = anomaly).
pub fn load_tabular(path: impl AsRef<Path>) -> Result<Tabular> {
    let mut csv = Csv::open(path.as_ref(), b',')?;
    let label_col = csv.column("label")?;
    let feature_cols: Vec<usize> = (0..csv.header.len()).filter(|&c| c != label_col).collect();
    if feature_cols.is_empty() {
        return Err(DataError::Invalid {
            file: csv.file,
            message: "no feature columns besides \"label\"".into(),
        });
    }
    let feature_names = feature_cols
        .iter()
        .map(|&c| csv.header[c].clone())
        .collect();
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    while let Some(row) = csv.next_row()? {
        csv.check_width(&row)?;
        for &c in &feature_cols {
            x.push(csv.number(&row, c)?);
        }
        labels.push(csv.label(&row, label_col)?);
    }
    if labels.is_empty() {
        return Err(DataError::NoRows { file: csv.file });
    }
    Ok(Tabular {
        feature_names,
        n_features: feature_cols.len(),
        x,
        labels,
    })
}

/// Loads a CSV whose columns are all numeric (finite) under a header.
pub fn load_numeric_csv(path: impl AsRef<Path>, delimiter: u8) -> Result<NumericCsv> {
    let mut csv = Csv::open(path.as_ref(), delimiter)?;
    let n_columns = csv.header.len();
    let mut values = Vec::new();
    while let Some(row) = csv.next_row()? {
        csv.check_width(&row)?;
        for c in 0..n_columns {
            values.push(csv.number(&row, c)?);
        }
    }
    if values.is_empty() {
        return Err(DataError::NoRows { file: csv.file });
    }
    Ok(NumericCsv {
        column_names: csv.header,
        n_columns,
        values,
    })
}

/// The name NAB uses for a series file: `<parent folder>/<file name>`.
fn nab_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match path.parent().and_then(Path::file_name) {
        Some(parent) => format!("{}/{file}", parent.to_string_lossy()),
        None => file,
    }
}

/// Loads one NAB series (`timestamp,value`) without windows; its name is
/// `<category>/<file>` taken from the path. See [`load_nab_corpus`] for labels.
pub fn load_nab_series(path: impl AsRef<Path>) -> Result<NabSeries> {
    let path = path.as_ref();
    let mut csv = Csv::open(path, b',')?;
    let t_col = csv.column("timestamp")?;
    let v_col = csv.column("value")?;
    let (mut timestamps, mut values) = (Vec::new(), Vec::new());
    while let Some(row) = csv.next_row()? {
        csv.check_width(&row)?;
        timestamps.push(csv.timestamp(&row, t_col)?);
        values.push(csv.number(&row, v_col)?);
    }
    if values.is_empty() {
        return Err(DataError::NoRows { file: csv.file });
    }
    Ok(NabSeries {
        name: nab_name(path),
        timestamps,
        values,
        windows: Vec::new(),
    })
}

/// NAB label windows by series name, as timestamp strings `(start, end)`.
pub type NabWindowLabels = BTreeMap<String, Vec<(String, String)>>;

/// Reads NAB's `combined_windows.json`: `{"<category>/<file>.csv": [[start, end], ...]}`.
pub fn load_nab_windows(path: impl AsRef<Path>) -> Result<NabWindowLabels> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        file: file.clone(),
        source,
    })?;
    let raw: BTreeMap<String, Vec<[String; 2]>> =
        serde_json::from_str(&text).map_err(|e| DataError::Invalid {
            file: file.clone(),
            message: format!(
                "expected {{\"<category>/<file>.csv\": [[\"start\", \"end\"], ...]}}: {e}"
            ),
        })?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|[s, e]| (s, e)).collect()))
        .collect())
}

/// Loads the NAB corpus from a folder with `data/<category>/*.csv` and
/// `labels/combined_windows.json`. Every series must have a labels entry and
/// every labels entry a series, as NAB requires.
pub fn load_nab_corpus(nab_dir: impl AsRef<Path>) -> Result<NabCorpus> {
    load_nab_corpus_with_progress(nab_dir, &mut |_| {})
}

/// [`load_nab_corpus`], calling `progress` after each series.
pub fn load_nab_corpus_with_progress(
    nab_dir: impl AsRef<Path>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<NabCorpus> {
    let dir = nab_dir.as_ref();
    let labels_path = dir.join("labels").join("combined_windows.json");
    let mut labels = load_nab_windows(&labels_path)?;
    let data_dir = dir.join("data");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for category in sorted_entries(&data_dir)? {
        if !category.is_dir() {
            continue;
        }
        for path in sorted_entries(&category)? {
            if path.is_file() && path.extension().is_some_and(|e| e == "csv") {
                files.push((nab_name(&path), path));
            }
        }
    }
    if files.is_empty() {
        return Err(DataError::Invalid {
            file: data_dir.display().to_string(),
            message: "no <category>/*.csv series found".into(),
        });
    }
    files.sort();
    let labels_file = labels_path.display().to_string();
    let total = files.len();
    let mut series = Vec::with_capacity(total);
    for (done, (name, path)) in files.into_iter().enumerate() {
        let Some(windows) = labels.remove(&name) else {
            return Err(DataError::Invalid {
                file: labels_file,
                message: format!("no entry for series \"{name}\""),
            });
        };
        let mut s = load_nab_series(&path)?;
        s.name = name;
        s.windows = s.locate_windows(&windows).map_err(|e| match e {
            DataError::Invalid { file, message } => DataError::Invalid {
                file: labels_file.clone(),
                message: format!("{file}: {message}"),
            },
            other => other,
        })?;
        progress(Progress {
            done: done + 1,
            total,
            item: &s.name,
        });
        series.push(s);
    }
    if let Some(name) = labels.keys().next() {
        return Err(DataError::Invalid {
            file: labels_file,
            message: format!("labels name series \"{name}\", which is not under data/"),
        });
    }
    Ok(NabCorpus { series })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| DataError::Io {
        file: dir.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        out.push(entry.map_err(io)?.path());
    }
    out.sort();
    Ok(out)
}

/// Loads one SKAB file: `;`-separated, `datetime;<features>;anomaly;changepoint`.
/// A file with neither `anomaly` nor `changepoint` (the anomaly-free
/// recording) loads with all labels `false` and `labelled == false`; a file
/// with only one of them is an error.
pub fn load_skab(path: impl AsRef<Path>) -> Result<SkabFile> {
    let path = path.as_ref();
    let mut csv = Csv::open(path, b';')?;
    let t_col = csv.column("datetime")?;
    let has_anomaly = csv.header.iter().any(|h| h == "anomaly");
    let has_changepoint = csv.header.iter().any(|h| h == "changepoint");
    let labelled = has_anomaly || has_changepoint;
    let (a_col, c_col) = if labelled {
        (
            Some(csv.column("anomaly")?),
            Some(csv.column("changepoint")?),
        )
    } else {
        (None, None)
    };
    let feature_cols: Vec<usize> = (0..csv.header.len())
        .filter(|&c| c != t_col && Some(c) != a_col && Some(c) != c_col)
        .collect();
    if feature_cols.is_empty() {
        return Err(DataError::Invalid {
            file: csv.file,
            message: "no feature columns".into(),
        });
    }
    let feature_names = feature_cols
        .iter()
        .map(|&c| csv.header[c].clone())
        .collect();
    let (mut timestamps, mut x, mut anomaly, mut changepoint) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Some(row) = csv.next_row()? {
        csv.check_width(&row)?;
        timestamps.push(csv.timestamp(&row, t_col)?);
        for &c in &feature_cols {
            x.push(csv.number(&row, c)?);
        }
        anomaly.push(match a_col {
            Some(c) => csv.label(&row, c)?,
            None => false,
        });
        changepoint.push(match c_col {
            Some(c) => csv.label(&row, c)?,
            None => false,
        });
    }
    if timestamps.is_empty() {
        return Err(DataError::NoRows { file: csv.file });
    }
    Ok(SkabFile {
        name: nab_name(path),
        timestamps,
        feature_names,
        n_features: feature_cols.len(),
        x,
        anomaly,
        changepoint,
        labelled,
    })
}

/// Loads `valve1/*.csv` (sorted by numeric stem) and, when present,
/// `anomaly-free/anomaly-free.csv` from a SKAB folder. All files must have
/// the same feature columns.
pub fn load_skab_dir(dir: impl AsRef<Path>) -> Result<SkabDataset> {
    let dir = dir.as_ref();
    let valve = dir.join("valve1");
    let mut paths: Vec<PathBuf> = sorted_entries(&valve)?
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "csv"))
        .collect();
    if paths.is_empty() {
        return Err(DataError::Invalid {
            file: valve.display().to_string(),
            message: "no *.csv files".into(),
        });
    }
    paths.sort_by_key(|p| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
        let num = stem.as_deref().and_then(|s| s.parse::<u64>().ok());
        (num.is_none(), num, stem)
    });
    let mut files = Vec::with_capacity(paths.len());
    for p in &paths {
        let f = load_skab(p)?;
        if !f.labelled {
            return Err(DataError::MissingColumn {
                file: p.display().to_string(),
                line: 1,
                column: "anomaly".into(),
            });
        }
        files.push(f);
    }
    let free_path = dir.join("anomaly-free").join("anomaly-free.csv");
    let anomaly_free = if free_path.exists() {
        Some(load_skab(&free_path)?)
    } else {
        None
    };
    let first = &files[0].feature_names;
    for f in files.iter().chain(anomaly_free.as_ref()) {
        if &f.feature_names != first {
            return Err(DataError::Invalid {
                file: dir.join(&f.name).display().to_string(),
                message: format!(
                    "feature columns {:?} differ from {:?} in {}",
                    f.feature_names, first, files[0].name
                ),
            });
        }
    }
    Ok(SkabDataset {
        files,
        anomaly_free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn tabular_loads_features_row_major_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.csv", "a,b,label\n1,2,0\n3.5,-4e1,1\n");
        let t = load_tabular(&p).unwrap();
        assert_eq!(t.feature_names, vec!["a", "b"]);
        assert_eq!(t.n_features, 2);
        assert_eq!(t.x, vec![1.0, 2.0, 3.5, -40.0]);
        assert_eq!(t.labels, vec![false, true]);
        assert_eq!(t.row(1), Some(&[3.5, -40.0][..]));
        assert_eq!(t.row(2), None);
    }

    #[test]
    fn tabular_accepts_label_column_anywhere_and_float_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "t.csv", "label,x0\n1.0,5\n0.0,6\n");
        let t = load_tabular(&p).unwrap();
        assert_eq!(t.feature_names, vec!["x0"]);
        assert_eq!(t.x, vec![5.0, 6.0]);
        assert_eq!(t.labels, vec![true, false]);
    }

    #[test]
    fn tabular_bad_number_names_file_line_column_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "cardio.csv",
            "x0,x1,x2,x3,label\n1,2,3,4,0\n1,2,3,abc,0\n",
        );
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("cardio.csv line 3, column \"x3\" (4): expected a number, got \"abc\""),
            "{msg}"
        );
    }

    #[test]
    fn tabular_wrong_field_count_names_the_line_and_both_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.csv", "x0,x1,label\n1,2,0\n1,2\n");
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("c.csv line 3: expected 3 fields as in the header, got 2"),
            "{msg}"
        );
    }

    #[test]
    fn tabular_without_label_column_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.csv", "x0,x1,y\n1,2,0\n");
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("c.csv line 1: missing column \"label\" in the header"),
            "{msg}"
        );
    }

    #[test]
    fn tabular_label_other_than_zero_or_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.csv", "x0,label\n1,0\n2,1\n3,2\n");
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("c.csv line 4, column \"label\" (2): expected a label 0 or 1, got \"2\""),
            "{msg}"
        );
    }

    #[test]
    fn tabular_non_finite_value_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.csv", "x0,x1,label\n1,NaN,0\n");
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("c.csv line 2, column \"x1\" (2): expected a finite number, got \"NaN\""),
            "{msg}"
        );
        let p = write(dir.path(), "d.csv", "x0,label\ninf,0\n");
        assert!(err_text(load_tabular(&p)).contains("expected a finite number, got \"inf\""));
    }

    #[test]
    fn empty_file_and_header_only_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "e.csv", "");
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("e.csv: empty file, expected a header line"),
            "{msg}"
        );
        let p = write(dir.path(), "h.csv", "x0,label\n");
        let msg = err_text(load_tabular(&p));
        assert!(
            msg.ends_with("h.csv: no data rows after the header"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let msg = err_text(load_tabular("/nonexistent/dir/x.csv"));
        assert!(msg.starts_with("/nonexistent/dir/x.csv: "), "{msg}");
    }

    #[test]
    fn data_errors_convert_into_model_errors_with_the_same_message() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.csv", "x0,label\nq,0\n");
        let e: ModelError = load_tabular(&p).unwrap_err().into();
        assert!(matches!(e, ModelError::Data(_)));
        assert!(e.to_string().contains("c.csv line 2, column \"x0\" (1)"));
    }

    #[test]
    fn numeric_csv_reads_any_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "n.csv", "a;b\n1;2\n3;4\n5;6\n");
        let n = load_numeric_csv(&p, b';').unwrap();
        assert_eq!(n.column_names, vec!["a", "b"]);
        assert_eq!(n.n_rows(), 3);
        assert_eq!(n.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let p = write(dir.path(), "m.csv", "a;b\n1;2\n3;x\n");
        let msg = err_text(load_numeric_csv(&p, b';'));
        assert!(
            msg.ends_with("m.csv line 3, column \"b\" (2): expected a number, got \"x\""),
            "{msg}"
        );
    }

    #[test]
    fn timestamps_parse_as_utc_seconds_with_optional_fraction() {
        assert_eq!(parse_timestamp_micros("1970-01-01 00:00:00"), Some(0));
        // 2014-07-01 is 16252 days after the epoch: 16252 * 86400 = 1_404_172_800.
        assert_eq!(
            parse_timestamp_micros("2014-07-01 00:30:00.000000"),
            Some((1_404_172_800 + 1800) * 1_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("2000-02-29T12:00:00.5"),
            Some((951_782_400 + 43_200) * 1_000_000 + 500_000)
        );
        assert_eq!(parse_timestamp_micros("2001-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp_micros("2001-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp_micros("2001-01-01 24:00:00"), None);
        assert_eq!(parse_timestamp_micros("2001-01-01"), None);
        assert_eq!(parse_timestamp_micros("2001-01-01 00:00:00x"), None);
    }

    #[test]
    fn nab_series_loads_and_bad_timestamp_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "realX/s.csv",
            "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,2.5\n",
        );
        let s = load_nab_series(&p).unwrap();
        assert_eq!(s.name, "realX/s.csv");
        assert_eq!(s.values, vec![1.0, 2.5]);
        assert_eq!(s.timestamps[1] - s.timestamps[0], 300);
        let p = write(
            dir.path(),
            "realX/t.csv",
            "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 25:00:00,2\n",
        );
        let msg = err_text(load_nab_series(&p));
        assert!(
            msg.ends_with(
                "t.csv line 3, column \"timestamp\" (1): expected a timestamp \"YYYY-MM-DD HH:MM:SS\", got \"2014-01-01 25:00:00\""
            ),
            "{msg}"
        );
        let p = write(dir.path(), "realX/u.csv", "time,value\n");
        assert!(err_text(load_nab_series(&p)).contains("missing column \"timestamp\""));
    }

    fn nab_fixture(dir: &Path, labels: &str) {
        let mut a = String::from("timestamp,value\n");
        for i in 0..10 {
            a.push_str(&format!("2014-01-01 00:0{i}:00,{i}\n"));
        }
        write(dir, "data/catA/a.csv", &a);
        write(
            dir,
            "data/catB/b.csv",
            "timestamp,value\n2014-01-01 00:00:00,1\n",
        );
        write(dir, "labels/combined_windows.json", labels);
    }

    #[test]
    fn nab_corpus_maps_window_timestamps_to_inclusive_rows_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        nab_fixture(
            dir.path(),
            r#"{"catA/a.csv": [["2014-01-01 00:02:00.000000", "2014-01-01 00:04:00.000000"],
                              ["2014-01-01 00:07:00.000000", "2014-01-01 00:09:00.000000"]],
                "catB/b.csv": []}"#,
        );
        let mut seen = Vec::new();
        let c = load_nab_corpus_with_progress(dir.path(), &mut |p| {
            seen.push((p.done, p.total, p.item.to_string()));
        })
        .unwrap();
        assert_eq!(c.series.len(), 2);
        assert_eq!(c.n_rows(), 11);
        assert_eq!(c.n_windows(), 2);
        assert_eq!(c.get("catA/a.csv").unwrap().windows, vec![(2, 4), (7, 9)]);
        assert!(c.get("catB/b.csv").unwrap().windows.is_empty());
        assert_eq!(
            seen,
            vec![
                (1, 2, "catA/a.csv".to_string()),
                (2, 2, "catB/b.csv".to_string())
            ]
        );
    }

    #[test]
    fn nab_window_timestamp_not_in_the_series_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        nab_fixture(
            dir.path(),
            r#"{"catA/a.csv": [["2014-01-01 00:02:30.000000", "2014-01-01 00:04:00.000000"]], "catB/b.csv": []}"#,
        );
        let msg = err_text(load_nab_corpus(dir.path()));
        assert!(msg.contains("combined_windows.json: catA/a.csv: label timestamp \"2014-01-01 00:02:30.000000\" does not match any row"), "{msg}");
    }

    #[test]
    fn nab_overlapping_or_reversed_windows_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        nab_fixture(
            dir.path(),
            r#"{"catA/a.csv": [["2014-01-01 00:04:00", "2014-01-01 00:02:00"]], "catB/b.csv": []}"#,
        );
        assert!(err_text(load_nab_corpus(dir.path())).contains("ends before it starts"));
        nab_fixture(
            dir.path(),
            r#"{"catA/a.csv": [["2014-01-01 00:02:00", "2014-01-01 00:05:00"], ["2014-01-01 00:04:00", "2014-01-01 00:06:00"]], "catB/b.csv": []}"#,
        );
        assert!(err_text(load_nab_corpus(dir.path())).contains("overlaps"));
    }

    #[test]
    fn nab_series_without_labels_entry_and_labels_without_series_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        nab_fixture(dir.path(), r#"{"catA/a.csv": []}"#);
        assert!(
            err_text(load_nab_corpus(dir.path())).contains("no entry for series \"catB/b.csv\"")
        );
        nab_fixture(
            dir.path(),
            r#"{"catA/a.csv": [], "catB/b.csv": [], "catC/c.csv": []}"#,
        );
        assert!(
            err_text(load_nab_corpus(dir.path()))
                .contains("\"catC/c.csv\", which is not under data/")
        );
        nab_fixture(dir.path(), r#"{"catA/a.csv": [["2014-01-01 00:02:00"]]}"#);
        assert!(err_text(load_nab_corpus(dir.path())).contains("combined_windows.json: expected"));
    }

    const SKAB_HEADER: &str = "datetime;A;B;anomaly;changepoint\n";

    #[test]
    fn skab_file_loads_features_and_both_label_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "valve1/0.csv",
            &format!(
                "{SKAB_HEADER}2020-03-09 10:34:33;0.5;1;0.0;0.0\n2020-03-09 10:34:34;0.6;2;1.0;1.0\n"
            ),
        );
        let f = load_skab(&p).unwrap();
        assert_eq!(f.name, "valve1/0.csv");
        assert_eq!(f.feature_names, vec!["A", "B"]);
        assert_eq!(f.x, vec![0.5, 1.0, 0.6, 2.0]);
        assert_eq!(f.anomaly, vec![false, true]);
        assert_eq!(f.changepoint, vec![false, true]);
        assert_eq!(f.timestamps[1] - f.timestamps[0], 1);
        assert!(f.labelled);
    }

    #[test]
    fn skab_file_with_one_label_column_only_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.csv",
            "datetime;A;anomaly\n2020-03-09 10:34:33;1;0\n",
        );
        let msg = err_text(load_skab(&p));
        assert!(
            msg.ends_with("x.csv line 1: missing column \"changepoint\" in the header"),
            "{msg}"
        );
        let p = write(
            dir.path(),
            "y.csv",
            "datetime;A;anomaly;changepoint\n2020-03-09 10:34:33;1;0;0.5\n",
        );
        let msg = err_text(load_skab(&p));
        assert!(
            msg.ends_with(
                "y.csv line 2, column \"changepoint\" (4): expected a label 0 or 1, got \"0.5\""
            ),
            "{msg}"
        );
    }

    #[test]
    fn skab_dir_sorts_numerically_and_loads_the_anomaly_free_file() {
        let dir = tempfile::tempdir().unwrap();
        for i in [10, 2, 1] {
            write(
                dir.path(),
                &format!("valve1/{i}.csv"),
                &format!("{SKAB_HEADER}2020-03-09 10:34:33;{i};1;0;0\n"),
            );
        }
        write(
            dir.path(),
            "anomaly-free/anomaly-free.csv",
            "datetime;A;B\n2020-02-08 13:30:47;1;2\n",
        );
        let d = load_skab_dir(dir.path()).unwrap();
        let names: Vec<&str> = d.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["valve1/1.csv", "valve1/2.csv", "valve1/10.csv"]);
        let free = d.anomaly_free.unwrap();
        assert!(!free.labelled);
        assert_eq!(free.anomaly, vec![false]);
    }

    #[test]
    fn skab_dir_with_mismatched_feature_columns_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "valve1/0.csv",
            &format!("{SKAB_HEADER}2020-03-09 10:34:33;1;1;0;0\n"),
        );
        write(
            dir.path(),
            "valve1/1.csv",
            "datetime;A;C;anomaly;changepoint\n2020-03-09 10:34:33;1;1;0;0\n",
        );
        assert!(err_text(load_skab_dir(dir.path())).contains("feature columns"));
    }
}
