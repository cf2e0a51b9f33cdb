//! The results: one `Row` per figure, its median, min and max, the table
//! printed at the end, and the JSON document (with a description of the
//! machine) written beside it.

use std::path::Path;

use serde_json::json;
use upload_receiver::domain::unix_now;

/// One row of the results table.
pub struct Row {
    pub case: String,
    pub metric: &'static str,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub baseline: Option<(&'static str, Vec<f64>)>,
    pub target: Option<String>,
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

pub fn print_table(rows: &[Row]) {
    println!(
        "\n{:<34} {:<30} {:>10} {:>10} {:>10} {:>10}  {:<24} {:>10} {:>7}  target",
        "case", "metric", "median", "min", "max", "unit", "baseline", "median", "ratio"
    );
    for row in rows {
        let (name, baseline_median, ratio) = match &row.baseline {
            Some((name, samples)) => {
                let b = median(samples);
                (*name, format!("{b:.1}"), format!("{:.2}", median(&row.samples) / b))
            }
            None => ("-", "-".into(), "-".into()),
        };
        println!(
            "{:<34} {:<30} {:>10.1} {:>10.1} {:>10.1} {:>10}  {:<24} {:>10} {:>7}  {}",
            row.case,
            row.metric,
            median(&row.samples),
            min(&row.samples),
            max(&row.samples),
            row.unit,
            name,
            baseline_median,
            ratio,
            row.target.as_deref().unwrap_or("-")
        );
    }
}

pub fn write_json(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "case": r.case,
                "metric": r.metric,
                "unit": r.unit,
                "samples": r.samples,
                "median": median(&r.samples),
                "min": min(&r.samples),
                "max": max(&r.samples),
                "baseline": r.baseline.as_ref().map(|(name, s)| json!({
                    "name": name, "samples": s, "median": median(s), "min": min(s), "max": max(s),
                    "ratio_of_medians": median(&r.samples) / median(s),
                    "ratio_min": min(&r.samples) / max(s),
                    "ratio_max": max(&r.samples) / min(s),
                })),
                "target": r.target,
            })
        })
        .collect();
    let document = json!({
        "machine": machine(),
        "unix_time": unix_now(),
        "rows": rows,
    });
    std::fs::write(path, serde_json::to_string_pretty(&document)?)?;
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
    })
}
