//! Figures, their verdicts, the table, the JSON file and the comparison with an earlier run.
//!
//! A figure is one line: Wharf's value, the baseline's value measured in the same run, how they
//! compare (a ratio, or for added latency a difference), the target, PASS/FAIL and how many
//! samples each side took. Figures are keyed (`P1.testfn.p50`) so that `--against` can match
//! them with an earlier run's.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What a value measures, and how it is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Ms,
    Us,
    StartsPerSec,
    ReqPerSec,
    MBps,
    MiB,
    PercentCore,
    Instances,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Us => "µs",
            Unit::StartsPerSec => "starts/s",
            Unit::ReqPerSec => "req/s",
            Unit::MBps => "MB/s",
            Unit::MiB => "MiB",
            Unit::PercentCore => "% core",
            Unit::Instances => "instances",
        }
    }

    /// The number alone, with as many decimals as the unit and magnitude deserve.
    pub fn number(self, v: f64) -> String {
        let decimals = match self {
            Unit::Ms | Unit::Us | Unit::MiB if v.abs() < 10.0 => 2,
            Unit::Ms | Unit::Us | Unit::MiB if v.abs() < 100.0 => 1,
            Unit::PercentCore => 2,
            _ => 0,
        };
        format!("{v:.decimals$}")
    }

    pub fn format(self, v: f64) -> String {
        format!("{} {}", self.number(v), self.label())
    }
}

/// How Wharf's value is set against the baseline's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// wharf / baseline.
    Ratio,
    /// wharf − baseline (added latency).
    Added,
    /// Nothing to compare with.
    None,
}

/// One condition of a target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "limit", rename_all = "snake_case")]
pub enum Bound {
    RatioAtMost(f64),
    RatioAtLeast(f64),
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
    AddedAtMost(f64),
}

impl Bound {
    fn describe(self, unit: Unit) -> String {
        let n = |v: f64| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                unit.number(v)
            }
        };
        match self {
            Bound::RatioAtMost(r) => format!("≤{r}x"),
            Bound::RatioAtLeast(r) => format!("≥{r}x"),
            Bound::AtMost(v) => format!("≤{} {}", n(v), unit.label()),
            Bound::AtLeast(v) => format!("≥{} {}", n(v), unit.label()),
            Bound::Below(v) => format!("<{} {}", n(v), unit.label()),
            Bound::AddedAtMost(v) => format!("≤+{} {}", n(v), unit.label()),
        }
    }

    /// Whether the bound holds; `None` when what it needs was not measured.
    fn holds(self, wharf: Option<f64>, compared: Option<f64>) -> Option<bool> {
        Some(match self {
            Bound::RatioAtMost(r) | Bound::AddedAtMost(r) => compared? <= r,
            Bound::RatioAtLeast(r) => compared? >= r,
            Bound::AtMost(v) => wharf? <= v,
            Bound::AtLeast(v) => wharf? >= v,
            Bound::Below(v) => wharf? < v,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Measured, no target.
    Info,
    /// Cannot be measured yet (the reason is in the note).
    NotAvailable,
    /// The measurement failed (the error is in the note).
    Error,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
            Verdict::NotAvailable => "n/a",
            Verdict::Error => "ERROR",
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable across runs, for `--against`: `P1.testfn.p50`.
    pub key: String,
    /// The figure of PERFORMANCE.md: `P1`.
    pub id: String,
    pub name: String,
    pub unit: Unit,
    pub wharf: Option<f64>,
    pub baseline: Option<f64>,
    /// What the baseline is (`crun run -d`, `direct`, …).
    pub baseline_is: Option<String>,
    pub compare: Compare,
    pub bounds: Vec<Bound>,
    pub verdict: Verdict,
    /// `wharf+baseline` sample counts, e.g. `100+100`.
    pub samples: String,
    pub note: Option<String>,
}

impl Figure {
    pub fn new(key: &str, id: &str, name: &str, unit: Unit) -> Figure {
        Figure {
            key: key.into(),
            id: id.into(),
            name: name.into(),
            unit,
            wharf: None,
            baseline: None,
            baseline_is: None,
            compare: Compare::None,
            bounds: Vec::new(),
            verdict: Verdict::Info,
            samples: String::new(),
            note: None,
        }
    }

    /// A figure that cannot be measured yet, and why.
    pub fn not_available(key: &str, id: &str, name: &str, reason: &str) -> Figure {
        let mut f = Figure::new(key, id, name, Unit::Ms);
        f.verdict = Verdict::NotAvailable;
        f.note = Some(reason.into());
        f
    }

    /// A figure whose measurement failed.
    pub fn error(key: &str, id: &str, name: &str, error: &anyhow::Error) -> Figure {
        let mut f = Figure::new(key, id, name, Unit::Ms);
        f.verdict = Verdict::Error;
        f.note = Some(format!("{error:#}"));
        f
    }

    pub fn wharf(mut self, v: f64) -> Figure {
        self.wharf = Some(v);
        self
    }

    pub fn baseline(mut self, what: &str, v: Option<f64>) -> Figure {
        self.baseline = v;
        self.baseline_is = Some(what.into());
        self
    }

    pub fn ratio(mut self) -> Figure {
        self.compare = Compare::Ratio;
        self
    }

    pub fn added(mut self) -> Figure {
        self.compare = Compare::Added;
        self
    }

    pub fn bounds(mut self, bounds: &[Bound]) -> Figure {
        self.bounds = bounds.to_vec();
        self
    }

    pub fn samples(mut self, wharf: usize, baseline: Option<usize>) -> Figure {
        self.samples = match baseline {
            Some(b) => format!("{wharf}+{b}"),
            None => wharf.to_string(),
        };
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        let note = note.into();
        self.note = Some(match self.note.take() {
            Some(old) => format!("{old}; {note}"),
            None => note,
        });
        self
    }

    /// Sets the verdict from the bounds (info without bounds); errors (e.g. failed requests)
    /// make it a failure.
    pub fn judged(mut self, errors: usize) -> Figure {
        self.verdict = if self.wharf.is_none() {
            Verdict::Error
        } else if errors > 0 {
            self = self.note(format!("{errors} failed requests"));
            Verdict::Fail
        } else if self.bounds.is_empty() {
            Verdict::Info
        } else {
            let compared = self.compared();
            let holds: Option<Vec<bool>> = self
                .bounds
                .iter()
                .map(|b| b.holds(self.wharf, compared))
                .collect();
            match holds {
                Some(h) if h.iter().all(|&x| x) => Verdict::Pass,
                Some(_) => Verdict::Fail,
                None => Verdict::Error,
            }
        };
        self
    }

    /// wharf / baseline or wharf − baseline.
    pub fn compared(&self) -> Option<f64> {
        let (w, b) = (self.wharf?, self.baseline?);
        match self.compare {
            Compare::Ratio if b != 0.0 => Some(w / b),
            Compare::Ratio | Compare::None => None,
            Compare::Added => Some(w - b),
        }
    }

    fn compared_text(&self) -> String {
        match (self.compare, self.compared()) {
            (Compare::Ratio, Some(r)) => format!("{r:.2}x"),
            (Compare::Added, Some(d)) => {
                let sign = if d >= 0.0 { "+" } else { "-" };
                format!("{sign}{}", self.unit.format(d.abs()))
            }
            _ => "-".into(),
        }
    }

    fn target_text(&self) -> String {
        if self.bounds.is_empty() {
            return "-".into();
        }
        self.bounds
            .iter()
            .map(|b| b.describe(self.unit))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn value_text(&self, v: Option<f64>) -> String {
        v.map_or_else(|| "-".into(), |v| self.unit.format(v))
    }
}

/// The results of one run, as written by `--out`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub format: u32,
    /// RFC 3339, UTC.
    pub date: String,
    pub host: HostInfo,
    pub args: Vec<String>,
    pub duration_s: f64,
    pub figures: Vec<Figure>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpus: usize,
    pub kernel: String,
    pub memory_mib: u64,
    /// The OCI runtime Wharf chose, as it said at start-up.
    pub runtime: String,
}

pub const FORMAT: u32 = 1;

/// The earlier run's value of a figure and the relative change of Wharf's value, in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    pub before: f64,
    pub percent: Option<f64>,
}

/// Matches `figure` with the figure of the same key in `before`.
pub fn change(figure: &Figure, before: &Run) -> Option<Change> {
    let old = before.figures.iter().find(|f| f.key == figure.key)?;
    let (now, was) = (figure.wharf?, old.wharf?);
    Some(Change {
        before: was,
        percent: (was != 0.0).then(|| (now - was) / was.abs() * 100.0),
    })
}

/// The table: one aligned line per figure, then the notes.
pub fn table(figures: &[Figure], against: Option<&Run>) -> String {
    let mut header = vec![
        "figure", "wharf", "baseline", "ratio", "target", "result", "samples",
    ];
    if against.is_some() {
        header.extend(["before", "change"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for f in figures {
        let mut row = vec![
            format!("{} {}", f.id, f.name),
            f.value_text(f.wharf),
            f.value_text(f.baseline),
            f.compared_text(),
            f.target_text(),
            f.verdict.label().into(),
            if f.samples.is_empty() {
                "-".into()
            } else {
                f.samples.clone()
            },
        ];
        if let Some(before) = against {
            match change(f, before) {
                Some(c) => {
                    // The earlier ratio too: across runs on a noisy machine, ratios compare.
                    let old = before.figures.iter().find(|o| o.key == f.key);
                    match old.map(|o| o.compared_text()).filter(|r| r != "-") {
                        Some(r) => row.push(format!("{} ({r})", f.unit.format(c.before))),
                        None => row.push(f.unit.format(c.before)),
                    }
                    row.push(c.percent.map_or("-".into(), |p| format!("{p:+.1}%")));
                }
                None => row.extend(["-".into(), "-".into()]),
            }
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Names and results left-aligned, numbers right-aligned.
            if c == 0 || c == 4 || c == 5 {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
            line.push_str("  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let notes: Vec<&Figure> = figures.iter().filter(|f| f.note.is_some()).collect();
    if !notes.is_empty() || figures.iter().any(|f| f.baseline_is.is_some()) {
        let _ = writeln!(out);
    }
    let mut last_baseline: Option<&str> = None;
    for f in figures {
        let mut parts = Vec::new();
        // A baseline is described once for the lines that share it.
        if let Some(b) = &f.baseline_is
            && last_baseline != Some(b.as_str())
        {
            parts.push(format!("baseline: {b}"));
        }
        last_baseline = f.baseline_is.as_deref();
        if let Some(n) = &f.note {
            parts.push(n.clone());
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "{} {}: {}", f.id, f.name, parts.join("; "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p1(wharf: f64, baseline: f64) -> Figure {
        Figure::new("P1.testfn.p50", "P1", "cold start p50", Unit::Ms)
            .wharf(wharf)
            .baseline("crun run -d", Some(baseline))
            .ratio()
            .bounds(&[Bound::RatioAtMost(1.3), Bound::AtMost(15.0)])
            .samples(100, Some(100))
            .judged(0)
    }

    #[test]
    fn verdicts_follow_every_bound() {
        assert_eq!(p1(12.0, 10.0).verdict, Verdict::Pass);
        // Ratio 1.5 fails although the absolute value passes.
        assert_eq!(p1(12.0, 8.0).verdict, Verdict::Fail);
        // Absolute value fails although the ratio passes.
        assert_eq!(p1(20.0, 19.0).verdict, Verdict::Fail);
        let added = Figure::new("P4.closed.p50", "P4", "added p50", Unit::Us)
            .wharf(80.0)
            .baseline("direct", Some(40.0))
            .added()
            .bounds(&[Bound::AddedAtMost(50.0)])
            .judged(0);
        assert_eq!(added.compared(), Some(40.0));
        assert_eq!(added.verdict, Verdict::Pass);
        let errors = p1(12.0, 10.0).judged(3);
        assert_eq!(errors.verdict, Verdict::Fail);
        assert!(errors.note.unwrap().contains("3 failed requests"));
        let info = Figure::new("x", "P1", "node", Unit::Ms)
            .wharf(1.0)
            .judged(0);
        assert_eq!(info.verdict, Verdict::Info);
        // A ratio bound without a baseline cannot be judged.
        let no_base = Figure::new("x", "P5", "thr", Unit::ReqPerSec)
            .wharf(1.0)
            .ratio()
            .bounds(&[Bound::RatioAtLeast(0.5)])
            .judged(0);
        assert_eq!(no_base.verdict, Verdict::Error);
    }

    #[test]
    fn units_and_targets_print_readably() {
        assert_eq!(Unit::Ms.format(12.345), "12.3 ms");
        assert_eq!(Unit::Ms.format(1.2345), "1.23 ms");
        assert_eq!(Unit::Us.format(250.0), "250 µs");
        assert_eq!(Unit::MBps.format(412.7), "413 MB/s");
        let f = p1(12.0, 10.0);
        assert_eq!(f.target_text(), "≤1.3x, ≤15 ms");
        assert_eq!(f.compared_text(), "1.20x");
        let added = Figure::new("k", "P4", "n", Unit::Us)
            .wharf(30.0)
            .baseline("direct", Some(40.0))
            .added();
        assert_eq!(added.compared_text(), "-10.0 µs");
    }

    #[test]
    fn table_is_aligned_and_has_notes() {
        let mut p99 = p1(30.0, 20.0);
        p99.name = "cold start p99".into();
        let figures = vec![
            p1(12.0, 10.0),
            p99,
            Figure::not_available("P7", "P7", "thaw", "needs the freezer"),
        ];
        let t = table(&figures, None);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("figure"));
        // The result column starts at the same character in every row.
        let col = |l: &str| l.chars().collect::<String>().find("result").unwrap();
        let at = col(lines[0]);
        let pass_at = lines[1].find("PASS").unwrap();
        assert_eq!(
            lines[1][..pass_at].chars().count(),
            lines[0][..at].chars().count()
        );
        assert!(t.contains("P7 thaw: needs the freezer"));
        assert!(t.contains("P1 cold start p50: baseline: crun run -d"));
        // The second line shares the baseline: it is described once.
        assert!(!t.contains("P1 cold start p99:"), "{t}");
    }

    #[test]
    fn comparison_matches_by_key() {
        let before = Run {
            format: FORMAT,
            date: "2026-01-01T00:00:00Z".into(),
            host: HostInfo::default(),
            args: vec![],
            duration_s: 1.0,
            figures: vec![p1(10.0, 10.0)],
        };
        let now = p1(12.0, 10.0);
        let c = change(&now, &before).unwrap();
        assert_eq!(c.before, 10.0);
        assert!((c.percent.unwrap() - 20.0).abs() < 1e-9);
        let other = Figure::new("P9", "P9", "zstd", Unit::MBps).wharf(1.0);
        assert_eq!(change(&other, &before), None);
        // The JSON round-trips, and the table shows the earlier value beside the new one.
        let json = serde_json::to_string(&before).unwrap();
        let back: Run = serde_json::from_str(&json).unwrap();
        assert_eq!(back.figures, before.figures);
        let t = table(&[now], Some(&back));
        assert!(t.contains("10.0 ms (1.00x)") && t.contains("+20.0%"), "{t}");
    }
}
