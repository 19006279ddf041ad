//! Results: per case and server, every run's figures; medians with their
//! spread, herald/peer ratios, the targets of BENCHMARKS.md; a table on
//! stdout and a JSON file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Opts;

/// Figures of one run: name → value.
pub(crate) type Figures = BTreeMap<&'static str, f64>;

#[derive(Debug, Serialize)]
struct Case {
    scenario: String,
    case: String,
    server: String,
    runs: Vec<Figures>,
}

#[derive(Debug, Serialize)]
struct Target {
    name: String,
    figure: Option<f64>,
    limit: String,
    met: Option<bool>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Report {
    machine: Value,
    cases: Vec<Case>,
    targets: Vec<Target>,
    failures: Vec<(String, String)>,
    notes: Vec<String>,
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    AtLeast(f64),
    AtMost(f64),
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Report {
    pub(crate) fn new(opts: &Opts) -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        let mem_kib: u64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let open_files = read("/proc/self/limits")
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
            .unwrap_or_default();
        let machine = json!({
            "date": command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            "cores": cores,
            "cpu": model,
            "memory_gib": (mem_kib as f64 / 1_048_576.0 * 10.0).round() / 10.0,
            "kernel": read("/proc/sys/kernel/osrelease").trim(),
            "open_files_per_process": open_files,
            "load_at_start": loadavg(),
            "pinned": if opts.pin { "server on CPU 0, generator on CPU 1 (taskset)" } else { "no" },
            "generator_shares_cores": true,
            "herald_commit": command("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]),
            "node": command("node", &["--version"]),
        });
        Self {
            machine,
            cases: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Record one run of `case` on `server`.
    pub(crate) fn add(&mut self, scenario: &str, case: &str, server: &str, figures: Figures) {
        eprintln!(
            "   {scenario} {case} {server}: {}",
            figures
                .iter()
                .map(|(k, v)| format!("{k}={}", fmt(*v)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        match self
            .cases
            .iter_mut()
            .find(|c| c.scenario == scenario && c.case == case && c.server == server)
        {
            Some(c) => c.runs.push(figures),
            None => self.cases.push(Case {
                scenario: scenario.into(),
                case: case.into(),
                server: server.into(),
                runs: vec![figures],
            }),
        }
    }

    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub(crate) fn failure(&mut self, scenario: &str, message: String) {
        self.failures.push((scenario.into(), message));
    }

    pub(crate) fn correct(&self) -> bool {
        self.failures.is_empty()
    }

    /// The median of `key` over the runs of `case` on `server`.
    pub(crate) fn median(
        &self,
        scenario: &str,
        case: &str,
        server: &str,
        key: &str,
    ) -> Option<f64> {
        let c = self
            .cases
            .iter()
            .find(|c| c.scenario == scenario && c.case == case && c.server == server)?;
        let values: Vec<f64> = c.runs.iter().filter_map(|r| r.get(key).copied()).collect();
        let m = median(&values);
        m.is_finite().then_some(m)
    }

    /// Compare a figure with its target (None: not measured in this run).
    pub(crate) fn target(&mut self, name: &str, figure: Option<f64>, limit: Limit) {
        let met = figure.map(|f| match limit {
            Limit::AtLeast(l) => f >= l,
            Limit::AtMost(l) => f <= l,
        });
        let limit = match limit {
            Limit::AtLeast(l) => format!(">= {}", fmt(l)),
            Limit::AtMost(l) => format!("<= {}", fmt(l)),
        };
        self.targets.push(Target {
            name: name.into(),
            figure,
            limit,
            met,
        });
    }

    /// herald's median of `key` over the peer's, in `case`.
    pub(crate) fn ratio(&self, scenario: &str, case: &str, key: &str) -> Option<f64> {
        let h = self.median(scenario, case, "herald", key)?;
        let p = self.median(scenario, case, "ws-peer", key)?;
        (p != 0.0).then(|| h / p)
    }

    pub(crate) fn finish(&mut self) {
        if let Some(m) = self.machine.as_object_mut() {
            m.insert("load_at_end".into(), Value::String(loadavg()));
        }
    }

    pub(crate) fn write_json(&self, opts: &Opts) -> Result<PathBuf> {
        let path = match &opts.json {
            Some(p) => p.clone(),
            None => {
                let dir =
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/herald-bench"));
                std::fs::create_dir_all(&dir)?;
                let stamp = command("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
                dir.join(format!("{}-{stamp}.json", opts.scenario.name()))
            }
        };
        let cases: Vec<Value> = self
            .cases
            .iter()
            .map(|c| {
                let keys: Vec<&str> = c.runs.iter().flat_map(|r| r.keys().copied()).collect();
                let mut summary = serde_json::Map::new();
                for k in keys {
                    let v: Vec<f64> = c.runs.iter().filter_map(|r| r.get(k).copied()).collect();
                    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    summary.insert(
                        k.into(),
                        json!({"median": median(&v), "min": min, "max": max}),
                    );
                }
                json!({
                    "scenario": c.scenario, "case": c.case, "server": c.server,
                    "runs": c.runs, "summary": summary,
                })
            })
            .collect();
        let out = json!({
            "generator": "herald-bench",
            "quick": opts.quick,
            "machine": self.machine,
            "cases": cases,
            "targets": self.targets,
            "failures": self.failures.iter().map(|(s, m)| json!({"scenario": s, "message": m})).collect::<Vec<_>>(),
            "notes": self.notes,
        });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
        Ok(path)
    }

    /// The table: per case, each figure as `median (min–max)` per server,
    /// and the herald/peer ratio when both ran.
    pub(crate) fn print(&self, opts: &Opts) {
        println!();
        println!("herald-bench  machine: {}", self.machine);
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for c in &self.cases {
            if !seen.contains(&(c.scenario.as_str(), c.case.as_str())) {
                seen.push((c.scenario.as_str(), c.case.as_str()));
            }
        }
        for (scenario, case) in seen {
            let servers: Vec<&Case> = self
                .cases
                .iter()
                .filter(|c| c.scenario == scenario && c.case == case)
                .collect();
            println!();
            println!("{scenario}  {case}  ({} run(s))", servers[0].runs.len());
            let mut header = format!("  {:<28}", "figure");
            for s in &servers {
                header.push_str(&format!(" {:>30}", s.server));
            }
            if servers.len() == 2 {
                header.push_str(&format!(" {:>12}", "herald/peer"));
            }
            println!("{header}");
            let mut keys: Vec<&str> = Vec::new();
            for s in &servers {
                for r in &s.runs {
                    for k in r.keys() {
                        if !keys.contains(k) {
                            keys.push(k);
                        }
                    }
                }
            }
            for k in keys {
                let mut line = format!("  {k:<28}");
                let mut medians = Vec::new();
                for s in &servers {
                    let v: Vec<f64> = s.runs.iter().filter_map(|r| r.get(k).copied()).collect();
                    let m = median(&v);
                    medians.push(m);
                    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let cell = if v.len() > 1 {
                        format!("{} ({}–{})", fmt(m), fmt(min), fmt(max))
                    } else if v.len() == 1 {
                        fmt(m)
                    } else {
                        "-".into()
                    };
                    line.push_str(&format!(" {cell:>30}"));
                }
                if medians.len() == 2 && medians[1] != 0.0 && medians.iter().all(|m| m.is_finite())
                {
                    line.push_str(&format!(" {:>12.2}", medians[0] / medians[1]));
                }
                println!("{line}");
            }
        }
        if !self.targets.is_empty() && !opts.quick {
            println!();
            println!("targets");
            for t in &self.targets {
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "not measured",
                };
                let figure = t.figure.map(fmt).unwrap_or_else(|| "-".into());
                println!("  {:<62} {:>12} {:>14}  {verdict}", t.name, figure, t.limit);
            }
        }
        for n in &self.notes {
            println!("note: {n}");
        }
        println!();
        if self.failures.is_empty() {
            println!("correctness: every client saw every expected notification once and in order");
        } else {
            for (s, m) in &self.failures {
                println!("FAILED {s}: {m}");
            }
        }
    }
}

/// A figure with 3 significant digits, k/M suffixes for large ones.
pub(crate) fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
