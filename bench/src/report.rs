//! `flotilla-bench report`: the run files of `bench/results/` as markdown tables (spliced
//! into docs/benchmarks.md between two marker lines) and SVG plots: throughput against
//! regions, latency against offered load, throughput against value size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::results::{Cell, Measured, RunFile};
use crate::workload::Workload;

/// The line before the generated part of the markdown file.
pub const BEGIN_MARKER: &str = "<!-- flotilla-bench report: begin (generated; do not edit) -->";
/// The line after it.
pub const END_MARKER: &str = "<!-- flotilla-bench report: end -->";

/// Ops/s of `cell` over the same combination on `peer` in the same run.
pub fn peer_ratio(run: &RunFile, cell: &Cell, peer: &str) -> Option<f64> {
    let mine = cell.measured()?;
    let theirs = run
        .cells
        .iter()
        .filter(|c| c.system == peer)
        .filter(|c| {
            c.workload == cell.workload
                && c.value_size == cell.value_size
                && c.clients == cell.clients
                && c.pipeline == cell.pipeline
                && c.rate == cell.rate
        })
        .find_map(Cell::measured)?;
    (theirs.ops_per_sec > 0.0).then(|| mine.ops_per_sec / theirs.ops_per_sec)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "machine (servers + driver)" cores busy, as far as known.
fn cores_cell(m: &Measured) -> String {
    let machine = m.cpu_busy_cores.map_or("?".into(), |b| format!("{b:.2}"));
    match (m.server_cores, m.driver_cores) {
        (Some(s), Some(d)) => format!("{machine} ({s:.2} + {d:.2})"),
        (None, Some(d)) => format!("{machine} (bench {d:.2})"),
        _ => machine,
    }
}

/// The cells of a run as a markdown table; Flotilla rows carry their ratio to each peer
/// measured in the same run.
pub fn cells_table(run: &RunFile) -> String {
    let peers: Vec<&str> = ["etcd", "redis"]
        .into_iter()
        .filter(|p| {
            run.cells
                .iter()
                .any(|c| c.system == *p && c.measured().is_some())
        })
        .collect();
    let mut out = String::from(
        "| system | client | regions | workload | value B | conns × pipeline | offered ops/s | \
         ops/s | MB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | cores busy (servers + bench) |",
    );
    for p in &peers {
        let _ = write!(out, " vs {p} |");
    }
    out.push('\n');
    out.push_str("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for _ in &peers {
        out.push_str("---:|");
    }
    out.push('\n');
    for c in &run.cells {
        let head = format!(
            "| {} | {} | {} | {} | {} | {} × {} | {} |",
            c.system,
            c.client,
            c.regions.map_or("-".into(), |r| r.to_string()),
            c.workload,
            c.value_size,
            c.clients,
            c.pipeline,
            c.rate.map_or("closed".into(), |r| format!("{r:.0}")),
        );
        out.push_str(&head);
        match c.measured() {
            Some(m) => {
                let p = &m.latency;
                let _ = write!(
                    out,
                    " {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                    m.ops_per_sec,
                    m.mb_per_sec,
                    ms(p.p50_ms),
                    ms(p.p90_ms),
                    ms(p.p99_ms),
                    ms(p.p999_ms),
                    ms(p.max_ms),
                    m.errors,
                    cores_cell(m),
                );
                for peer in &peers {
                    let ratio = if c.system == "flotilla" {
                        peer_ratio(run, c, peer).map_or("-".into(), |r| format!("{r:.2}×"))
                    } else {
                        "-".into()
                    };
                    let _ = write!(out, " {ratio} |");
                }
            }
            None => {
                let why = match &c.outcome {
                    crate::results::Outcome::Skipped(w) => w.replace('|', "/"),
                    crate::results::Outcome::Measured(_) => String::new(),
                };
                let _ = write!(out, " skipped: {why} |{}", " |".repeat(8 + peers.len()));
            }
        }
        out.push('\n');
    }
    out
}

/// The markdown section of one run.
pub fn run_section(run: &RunFile) -> String {
    let m = &run.machine;
    let l = &run.limits;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#### {} — commit {}{}\n",
        run.started_at,
        &run.git_commit[..run.git_commit.len().min(10)],
        if run.git_dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "    {}\n", run.command);
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {:.1} GiB, load average {:.1} at the start; data on {} ({}). \
         Limits measured in the run: **{:.0} fdatasync/s**, **loopback TCP {:.0} MB/s**, {} \
         cores. Latency: {}; {} s measured after {} s of warm-up per cell.\n",
        m.cores,
        m.cpu_model,
        m.memory_bytes as f64 / (1u64 << 30) as f64,
        m.load_average_1m,
        m.disk.device,
        m.disk.fs_type,
        l.fdatasync_per_sec,
        l.loopback_mb_per_sec,
        l.cores,
        if run.config.rates.is_empty() {
            "closed loop, expected-interval corrected"
        } else {
            "open loop, from each request's intended send time"
        },
        run.config.seconds,
        run.config.warmup,
    );
    out.push_str(&cells_table(run));
    out
}

/// The whole generated part: every run, oldest first, then the plots.
pub fn markdown(runs: &[RunFile], plots: &[(String, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generated by `flotilla-bench report` from {} run file(s) in bench/results/.\n",
        runs.len()
    );
    for r in runs {
        out.push_str(&run_section(r));
        out.push('\n');
    }
    for (title, path) in plots {
        let _ = writeln!(out, "![{title}]({path})\n");
    }
    out
}

/// Replaces the text between the markers of `doc` with `generated` (appending a marked
/// section if the markers are missing).
pub fn splice(doc: &str, generated: &str) -> String {
    let block = format!(
        "{BEGIN_MARKER}\n{}{END_MARKER}\n",
        ensure_newline(generated)
    );
    match (doc.find(BEGIN_MARKER), doc.find(END_MARKER)) {
        (Some(b), Some(e)) if b < e => {
            let after = &doc[e + END_MARKER.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &doc[..b])
        }
        _ => format!("{}\n{block}", ensure_newline(doc)),
    }
}

fn ensure_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// One line of a plot: a name and its points.
pub type Series = (String, Vec<(f64, f64)>);

/// Median of the values of each x.
fn medians(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut by_x: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (x, y) in points {
        by_x.entry(x.to_bits()).or_default().push(y);
    }
    let mut out: Vec<(f64, f64)> = by_x
        .into_iter()
        .map(|(x, mut ys)| {
            ys.sort_by(f64::total_cmp);
            let n = ys.len();
            let med = if n % 2 == 1 {
                ys[n / 2]
            } else {
                (ys[n / 2 - 1] + ys[n / 2]) / 2.0
            };
            (f64::from_bits(x), med)
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn measured(runs: &[RunFile]) -> impl Iterator<Item = (&Cell, &Measured)> {
    runs.iter()
        .flat_map(|r| r.cells.iter())
        .filter_map(|c| c.measured().map(|m| (c, m)))
}

/// Closed-loop write throughput of Flotilla against regions, one line per (client, value,
/// conns × pipeline), median over runs.
pub fn throughput_vs_regions(runs: &[RunFile]) -> Vec<Series> {
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (c, m) in measured(runs) {
        if c.system != "flotilla" || c.workload != Workload::Write || c.rate.is_some() {
            continue;
        }
        let Some(r) = c.regions else { continue };
        let name = format!(
            "{} {} B, {}×{}",
            c.client, c.value_size, c.clients, c.pipeline
        );
        groups
            .entry(name)
            .or_default()
            .push((r as f64, m.ops_per_sec));
    }
    groups.into_iter().map(|(n, p)| (n, medians(p))).collect()
}

/// p99 latency against offered load (open-loop cells), one line per system and workload.
pub fn latency_vs_load(runs: &[RunFile]) -> Vec<Series> {
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (c, m) in measured(runs) {
        let Some(rate) = c.rate else { continue };
        let name = format!(
            "{}{} {} p99",
            c.system,
            c.regions.map(|r| format!(" {r}r")).unwrap_or_default(),
            c.workload
        );
        groups
            .entry(name)
            .or_default()
            .push((rate, m.latency.p99_ms));
    }
    groups.into_iter().map(|(n, p)| (n, medians(p))).collect()
}

/// Closed-loop write throughput against value size, one line per system (and regions).
pub fn throughput_vs_value_size(runs: &[RunFile]) -> Vec<Series> {
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (c, m) in measured(runs) {
        if c.workload != Workload::Write || c.rate.is_some() {
            continue;
        }
        let name = format!(
            "{}{}",
            c.system,
            c.regions
                .map(|r| format!(" {r} regions"))
                .unwrap_or_default()
        );
        groups
            .entry(name)
            .or_default()
            .push((c.value_size as f64, m.ops_per_sec));
    }
    groups.into_iter().map(|(n, p)| (n, medians(p))).collect()
}

/// One plot of the report: file name, title, axis labels, lines, whether x is log-2.
type PlotSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Vec<Series>,
    bool,
);

/// Draws `series` as lines with points into an SVG file (log-2 x axis when `log_x`).
/// Answers false (and draws nothing) when no series has two points: a line needs two.
pub fn plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> Result<bool, String> {
    if !series.iter().any(|(_, p)| p.len() >= 2) {
        return Ok(false);
    }
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y_max = ys.fold(0.0f64, f64::max) * 1.1 + 1e-9;
    let tx = |x: f64| if log_x { x.max(1e-9).log2() } else { x };
    let (lo, hi) = (tx(x_min), tx(x_max));
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| {
            if log_x {
                format!("{:.0}", 2f64.powf(*v))
            } else {
                format!("{v:.0}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (tx(x), y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

/// Reads the run files of `results`, draws the plots into `plots_dir`, and splices the
/// tables into `doc` (paths in the markdown relative to the doc's directory).
pub fn write_report(results: &Path, doc: &Path, plots_dir: &Path) -> Result<String, String> {
    let runs = RunFile::load_dir(results)?;
    std::fs::create_dir_all(plots_dir).map_err(|e| format!("{}: {e}", plots_dir.display()))?;
    let doc_dir = doc.parent().unwrap_or(Path::new("."));
    let mut drawn = Vec::new();
    let plots: [PlotSpec; 3] = [
        (
            "throughput_vs_regions.svg",
            "Flotilla writes/s vs regions (3 replicas, fsync on)",
            "regions",
            "acknowledged writes/s",
            throughput_vs_regions(&runs),
            true,
        ),
        (
            "latency_vs_load.svg",
            "p99 latency vs offered load (open loop)",
            "offered ops/s",
            "p99 ms",
            latency_vs_load(&runs),
            false,
        ),
        (
            "throughput_vs_value_size.svg",
            "writes/s vs value size",
            "value bytes",
            "acknowledged writes/s",
            throughput_vs_value_size(&runs),
            true,
        ),
    ];
    for (file, title, xl, yl, series, log_x) in plots {
        let path = plots_dir.join(file);
        if plot(&path, title, xl, yl, &series, log_x)? {
            let rel = pathdiff(&path, doc_dir);
            drawn.push((title.to_string(), rel));
        }
    }
    let generated = markdown(&runs, &drawn);
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    std::fs::write(doc, splice(&old, &generated)).map_err(|e| format!("{}: {e}", doc.display()))?;
    Ok(format!(
        "{} run file(s) → {} ({} plot(s) in {})",
        runs.len(),
        doc.display(),
        drawn.len(),
        plots_dir.display()
    ))
}

/// `path` relative to `base` when it lies under it, else as given.
fn pathdiff(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests_support::sample_run;

    #[test]
    fn the_table_has_one_row_per_cell_and_peer_ratios() {
        let run = sample_run();
        let t = cells_table(&run);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + run.cells.len(), "{t}");
        assert!(lines[0].ends_with("vs etcd |"), "{}", lines[0]);
        // flotilla 64 regions: 120 000 ops/s against etcd's 20 000.
        assert!(
            lines[2].contains("| flotilla | resp | 64 | write | 16 | 64 × 16 | closed | 120000 |"),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with(" 6.00× |"), "{}", lines[2]);
        assert!(
            lines[5].contains("skipped: redis-server is not installed"),
            "{}",
            lines[5]
        );
        // Every row has as many cells as the header.
        let cols = |l: &str| l.matches('|').count();
        for l in &lines {
            assert_eq!(cols(l), cols(lines[0]), "{l}");
        }
    }

    #[test]
    fn splicing_replaces_only_the_marked_part() {
        let doc = "# Title\n\nHand-written.\n";
        let once = splice(doc, "table 1\n");
        assert!(once.starts_with(doc));
        assert!(once.contains(&format!("{BEGIN_MARKER}\ntable 1\n{END_MARKER}\n")));
        let twice = splice(&format!("{once}\nAfter.\n"), "table 2");
        assert!(twice.contains("table 2\n") && !twice.contains("table 1"));
        assert!(
            twice.starts_with(doc) && twice.ends_with("\nAfter.\n"),
            "{twice}"
        );
    }

    #[test]
    fn series_take_medians_per_x() {
        let mut a = sample_run();
        let mut b = sample_run();
        let mut c = sample_run();
        for (run, ops) in [(&mut a, 100.0), (&mut b, 300.0), (&mut c, 200.0)] {
            if let crate::results::Outcome::Measured(m) = &mut run.cells[0].outcome {
                m.ops_per_sec = ops;
            }
        }
        let s = throughput_vs_regions(&[a, b, c]);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].1, vec![(1.0, 50_000.0), (64.0, 200.0)]);
        assert_eq!(medians(vec![(1.0, 1.0), (1.0, 3.0)]), vec![(1.0, 2.0)]);
    }

    #[test]
    fn plots_are_svg_files_and_need_two_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        let one: Vec<Series> = vec![("a".into(), vec![(1.0, 2.0)])];
        assert!(!plot(&path, "t", "x", "y", &one, true).unwrap());
        assert!(!path.exists());
        let two: Vec<Series> = vec![("flotilla resp".into(), vec![(1.0, 2.0), (64.0, 9.0)])];
        assert!(plot(&path, "writes", "regions", "ops/s", &two, true).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("flotilla resp"),
            "{svg}"
        );
    }

    #[test]
    fn the_report_reads_run_files_and_writes_the_doc() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        sample_run().save(&results, "run").unwrap();
        let doc = dir.path().join("docs").join("benchmarks.md");
        std::fs::create_dir_all(doc.parent().unwrap()).unwrap();
        std::fs::write(&doc, "# Benchmarks\n").unwrap();
        let msg = write_report(&results, &doc, &dir.path().join("docs/bench")).unwrap();
        assert!(msg.starts_with("1 run file(s)"), "{msg}");
        let text = std::fs::read_to_string(&doc).unwrap();
        assert!(text.starts_with("# Benchmarks\n"));
        assert!(text.contains("fdatasync/s"), "{text}");
        assert!(text.contains("![Flotilla writes/s vs regions (3 replicas, fsync on)](bench/throughput_vs_regions.svg)"), "{text}");
        std::fs::write(results.join("junk.json"), "{}").unwrap();
        assert!(write_report(&results, &doc, &dir.path().join("p"))
            .unwrap_err()
            .contains("junk.json"));
    }
}
