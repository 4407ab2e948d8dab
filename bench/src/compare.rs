//! `flotilla-bench compare`: builds of Flotilla measured side by side on one sweep,
//! alternated.
//!
//! On a shared machine a run's figures move by a tenth or more from one minute to the next,
//! so two builds measured one after the other compare the minutes as much as the builds.
//! `compare` runs the same sweep once per variant in each round, the variants in a rotated
//! order, forward and backward by turns (A B, B A, A B, …), and prints, per cell, every run of every variant, its
//! median, and each variant's median against the first variant's — with whether the
//! variants' ranges overlap, in which case the difference is within what the machine did
//! between runs and should not be quoted as a gain or a loss.
//!
//! A variant is a `flotilla` binary and, optionally, its own server configuration file, so
//! that two builds, two settings of one build, or both can be compared. Every run writes its
//! usual JSON file (its `command` names the variant); the summary table, in the markdown of
//! docs/benchmarks.md, is printed and saved as `<start>-compare.md` beside them.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use crate::results::{Cell, RunFile};
use crate::run::{self, Plan, RunArgs};

/// Rounds at most: each one runs the whole sweep once per variant.
const ROUNDS_MAX: usize = 20;

/// `flotilla-bench compare` flags: the variants, the rounds, and the sweep (the flags of
/// `run`).
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// A build to measure, `LABEL=BINARY` or `LABEL=BINARY:CONFIG` (a server configuration
    /// file for this variant only); give two or more. The first is the one the others are
    /// compared with.
    #[arg(long = "variant", required = true)]
    pub variants: Vec<String>,
    /// Rounds: every variant runs the whole sweep once per round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The sweep, as for `run` (Flotilla only, on clusters the bench starts).
    #[command(flatten)]
    pub run: RunArgs,
}

/// One build (and configuration) under comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The name in the table.
    pub label: String,
    /// The `flotilla` binary its servers run.
    pub binary: PathBuf,
    /// Its server configuration file, if it has its own.
    pub config: Option<PathBuf>,
}

impl Variant {
    /// Parses `LABEL=BINARY` or `LABEL=BINARY:CONFIG`; the binary (and the configuration
    /// file) must exist.
    pub fn parse(spec: &str) -> Result<Variant, String> {
        let (label, rest) = spec
            .split_once('=')
            .ok_or_else(|| format!("--variant {spec:?}: expected LABEL=BINARY[:CONFIG]"))?;
        let label = label.trim();
        if label.is_empty() || label.contains('|') {
            return Err(format!(
                "--variant {spec:?}: the label must be non-empty and without '|'"
            ));
        }
        let (binary, config) = match rest.split_once(':') {
            Some((b, c)) => (PathBuf::from(b), Some(PathBuf::from(c))),
            None => (PathBuf::from(rest), None),
        };
        if !binary.is_file() {
            return Err(format!(
                "--variant {label}: no binary at {}",
                binary.display()
            ));
        }
        if let Some(c) = &config {
            if !c.is_file() {
                return Err(format!(
                    "--variant {label}: no configuration file at {}",
                    c.display()
                ));
            }
        }
        Ok(Variant {
            label: label.to_string(),
            binary,
            config,
        })
    }
}

/// A checked comparison: the variants and, for each, the plan of its runs.
#[derive(Debug)]
pub struct Comparison {
    /// The variants, in the order given.
    pub variants: Vec<Variant>,
    /// Each variant's plan (the same sweep, its binary and configuration).
    pub plans: Vec<Plan>,
    /// Rounds.
    pub rounds: usize,
    /// Where the summary is saved.
    pub results_dir: PathBuf,
}

impl Comparison {
    /// Checks the flags: two or more variants with distinct labels, 1 ..= 20 rounds, and a
    /// sweep of Flotilla alone on clusters the bench starts (the binary is what differs).
    pub fn new(args: &CompareArgs) -> Result<Comparison, String> {
        let variants: Vec<Variant> = args
            .variants
            .iter()
            .map(|s| Variant::parse(s))
            .collect::<Result<_, _>>()?;
        if variants.len() < 2 {
            return Err("compare needs two or more --variant".into());
        }
        for (i, v) in variants.iter().enumerate() {
            if variants[..i].iter().any(|w| w.label == v.label) {
                return Err(format!("--variant label {:?} given twice", v.label));
            }
        }
        if !(1..=ROUNDS_MAX).contains(&args.rounds) {
            return Err(format!("--rounds must be 1 ..= {ROUNDS_MAX}"));
        }
        let run = &args.run;
        if run.quick {
            return Err(
                "compare runs the sweep it is given; --quick would add etcd (give --regions \
                 64,1 instead)"
                    .into(),
            );
        }
        if !run.target.is_empty() || run.in_process {
            return Err(
                "compare starts each variant's servers itself: no --target or --in-process".into(),
            );
        }
        if run.system.iter().any(|s| s != "flotilla") {
            return Err("compare measures Flotilla builds: --system must be flotilla".into());
        }
        let plans = variants
            .iter()
            .map(|v| {
                let mut a = run.clone();
                a.flotilla = Some(v.binary.clone());
                if v.config.is_some() {
                    a.server_config = v.config.clone();
                }
                Plan::new(&a)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Comparison {
            variants,
            plans,
            rounds: args.rounds,
            results_dir: run.results_dir.clone(),
        })
    }
}

/// The order of the runs: `(round, variant)`, every variant once per round, forward in
/// even rounds and backward in odd ones (A B, B A, A B, …): a drift of the machine over the
/// runs then weighs on every variant alike, and no variant always runs first.
pub fn schedule(variants: usize, rounds: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(variants * rounds);
    for round in 0..rounds {
        for k in 0..variants {
            let v = if round % 2 == 0 { k } else { variants - 1 - k };
            out.push((round, v));
        }
    }
    out
}

/// What one run measured in one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Index of the variant.
    pub variant: usize,
    /// The cell, as [`cell_name`] writes it.
    pub cell: String,
    /// Acknowledged operations per second.
    pub ops_per_sec: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// CPU of the server processes per operation, in µs (the measure of a build's cost
    /// when the load is offered at a fixed rate, or does not use every core).
    pub server_us_per_op: Option<f64>,
}

/// A cell's name in the table: workload, regions, value size, connections × pipeline, and
/// the offered rate when open loop.
pub fn cell_name(c: &Cell) -> String {
    let mut s = format!(
        "{} regions={} v={} c={}x{}",
        c.workload,
        c.regions.map_or("-".into(), |r| r.to_string()),
        c.value_size,
        c.clients,
        c.pipeline
    );
    if let Some(rate) = c.rate {
        s.push_str(&format!(" rate={rate:.0}"));
    }
    s
}

/// The measured cells of a run as samples of `variant`.
pub fn samples_of(run: &RunFile, variant: usize) -> Vec<Sample> {
    run.cells
        .iter()
        .filter_map(|c| {
            c.measured().map(|m| Sample {
                variant,
                cell: cell_name(c),
                ops_per_sec: m.ops_per_sec,
                p99_ms: m.latency.p99_ms,
                server_us_per_op: m
                    .server_cores
                    .filter(|_| m.ops_per_sec > 0.0)
                    .map(|cores| cores / m.ops_per_sec * 1e6),
            })
        })
        .collect()
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn kilo(ops: f64) -> String {
    format!("{:.1}", ops / 1000.0)
}

/// The summary: one row per cell (in the order first measured), one column per variant
/// with its runs in run order, the median in bold, the median p99 and the median server CPU
/// per operation (when the runs measured it), then each later
/// variant's median over the first's, marked "ranges overlap" when neither variant's runs
/// all lie above the other's.
pub fn summarize(labels: &[String], samples: &[Sample]) -> String {
    let mut cells: Vec<&str> = Vec::new();
    let mut by: HashMap<(&str, usize), Vec<&Sample>> = HashMap::new();
    for s in samples {
        if !cells.contains(&s.cell.as_str()) {
            cells.push(&s.cell);
        }
        by.entry((&s.cell, s.variant)).or_default().push(s);
    }
    let mut out = String::from("| cell |");
    for l in labels {
        out.push_str(&format!(" {l} |"));
    }
    for l in &labels[1..] {
        out.push_str(&format!(" {l} / {} |", labels[0]));
    }
    out.push_str("\n|---|");
    for _ in 0..(2 * labels.len() - 1) {
        out.push_str("---|");
    }
    out.push('\n');
    for cell in cells {
        out.push_str(&format!("| {cell} |"));
        let stats: Vec<Option<(f64, f64, f64)>> = (0..labels.len())
            .map(|v| {
                let runs = by.get(&(cell, v))?;
                let ops: Vec<f64> = runs.iter().map(|s| s.ops_per_sec).collect();
                let lo = ops.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ops.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                Some((median(&ops)?, lo, hi))
            })
            .collect();
        for (v, stat) in stats.iter().enumerate() {
            match (by.get(&(cell, v)), stat) {
                (Some(runs), Some((med, _, _))) => {
                    let list: Vec<String> = runs.iter().map(|s| kilo(s.ops_per_sec)).collect();
                    let p99: Vec<f64> = runs.iter().map(|s| s.p99_ms).collect();
                    let cpu: Vec<f64> = runs.iter().filter_map(|s| s.server_us_per_op).collect();
                    out.push_str(&format!(
                        " {} K (**{} K**), p99 {:.1} ms{} |",
                        list.join(" / "),
                        kilo(*med),
                        median(&p99).unwrap_or(0.0),
                        median(&cpu).map_or(String::new(), |us| format!(", {us:.1} µs CPU/op"))
                    ));
                }
                _ => out.push_str(" - |"),
            }
        }
        for v in 1..labels.len() {
            match (stats[0], stats[v]) {
                (Some((m0, lo0, hi0)), Some((m, lo, hi))) if m0 > 0.0 => {
                    let apart = lo > hi0 || hi < lo0;
                    out.push_str(&format!(
                        " {:.2}{} |",
                        m / m0,
                        if apart { "" } else { ", ranges overlap" }
                    ));
                }
                _ => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    out
}

/// Runs the comparison; answers the summary table and the path it was saved to.
pub async fn compare(cmp: &Comparison, command: &str) -> Result<(String, PathBuf), String> {
    let order = schedule(cmp.variants.len(), cmp.rounds);
    let mut samples = Vec::new();
    let mut first_start = None;
    for (i, &(round, v)) in order.iter().enumerate() {
        let variant = &cmp.variants[v];
        println!(
            "compare: run {}/{} (round {}, variant {}: {})",
            i + 1,
            order.len(),
            round + 1,
            variant.label,
            variant.binary.display()
        );
        let (result, path) = run::run(
            &cmp.plans[v],
            format!("{command} [variant {}, round {}]", variant.label, round + 1),
        )
        .await
        .map_err(|e| format!("variant {}, round {}: {e}", variant.label, round + 1))?;
        first_start.get_or_insert_with(|| result.started_at.clone());
        let got = samples_of(&result, v);
        for s in &got {
            println!(
                "  {}: {:.0} ops/s, p99 {:.1} ms, {} µs of server CPU per op ({})",
                s.cell,
                s.ops_per_sec,
                s.p99_ms,
                s.server_us_per_op
                    .map_or("?".into(), |us| format!("{us:.1}")),
                path.display()
            );
        }
        samples.extend(got);
    }
    let labels: Vec<String> = cmp.variants.iter().map(|v| v.label.clone()).collect();
    let mut text = String::from("variants:\n");
    for v in &cmp.variants {
        text.push_str(&format!(
            "- {}: {}{}\n",
            v.label,
            v.binary.display(),
            v.config.as_ref().map_or(String::new(), |c| format!(
                ", configuration {}",
                c.display()
            ))
        ));
    }
    text.push_str(&format!(
        "\n{} rounds, run order {}\n\n",
        cmp.rounds,
        order
            .iter()
            .map(|&(_, v)| labels[v].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    text.push_str(&summarize(&labels, &samples));
    let stamp: String = first_start
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    std::fs::create_dir_all(&cmp.results_dir)
        .map_err(|e| format!("{}: {e}", cmp.results_dir.display()))?;
    let path = cmp.results_dir.join(format!("{stamp}-compare.md"));
    std::fs::write(&path, format!("    {command}\n\n{text}"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((text, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        compare: CompareArgs,
    }

    /// A file that exists, to stand for a binary.
    fn exe() -> String {
        std::env::current_exe().unwrap().display().to_string()
    }

    fn comparison(args: &[&str]) -> Result<Comparison, String> {
        let cli = Cli::try_parse_from(std::iter::once("compare").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Comparison::new(&cli.compare)
    }

    #[test]
    fn variants_parse_with_and_without_a_configuration() {
        let bin = exe();
        let v = Variant::parse(&format!("old={bin}")).unwrap();
        assert_eq!((v.label.as_str(), v.config), ("old", None));
        let v = Variant::parse(&format!("new={bin}:{bin}")).unwrap();
        assert_eq!(v.config, Some(PathBuf::from(&bin)));
        assert_eq!(v.binary, PathBuf::from(&bin));
        for bad in [
            bin.clone(),
            format!("={bin}"),
            format!("a|b={bin}"),
            "x=/no/such/flotilla".into(),
            format!("x={bin}:/no/such/config.toml"),
        ] {
            assert!(Variant::parse(&bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_flags_are_checked() {
        let bin = exe();
        let a = format!("a={bin}");
        let b = format!("b={bin}");
        let ok = comparison(&["--variant", &a, "--variant", &b, "--regions", "64,1"]).unwrap();
        assert_eq!(ok.plans.len(), 2);
        assert_eq!(ok.rounds, 3);
        assert!(ok
            .plans
            .iter()
            .all(|p| p.flotilla.as_os_str() == bin.as_str()));
        assert_eq!(ok.plans[0].config.regions, vec![64, 1]);
        let refused = [
            vec!["--variant", &a],
            vec!["--variant", &a, "--variant", &a],
            vec!["--variant", &a, "--variant", &b, "--rounds", "0"],
            vec!["--variant", &a, "--variant", &b, "--quick"],
            vec!["--variant", &a, "--variant", &b, "--in-process"],
            vec!["--variant", &a, "--variant", &b, "--target", "127.0.0.1:1"],
            vec![
                "--variant",
                &a,
                "--variant",
                &b,
                "--system",
                "flotilla,etcd",
            ],
        ];
        for args in refused {
            assert!(comparison(&args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn a_variant_configuration_replaces_the_common_one() {
        let dir = tempfile::tempdir().unwrap();
        let common = dir.path().join("common.toml");
        let own = dir.path().join("own.toml");
        std::fs::write(&common, "# common\n").unwrap();
        std::fs::write(&own, "# own\n").unwrap();
        let bin = exe();
        let a = format!("a={bin}");
        let b = format!("b={bin}:{}", own.display());
        let c = comparison(&[
            "--variant",
            &a,
            "--variant",
            &b,
            "--server-config",
            common.to_str().unwrap(),
        ])
        .unwrap();
        let text = |i: usize| {
            c.plans[i]
                .config
                .server_config
                .as_ref()
                .unwrap()
                .text
                .clone()
        };
        assert_eq!(text(0), "# common\n");
        assert_eq!(text(1), "# own\n");
    }

    #[test]
    fn the_schedule_alternates_and_runs_every_variant_once_a_round() {
        assert_eq!(
            schedule(2, 4),
            vec![
                (0, 0),
                (0, 1),
                (1, 1),
                (1, 0),
                (2, 0),
                (2, 1),
                (3, 1),
                (3, 0)
            ]
        );
        assert_eq!(
            schedule(3, 2),
            vec![(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
        );
        for n in 1..=4 {
            for rounds in 1..=6 {
                let s = schedule(n, rounds);
                assert_eq!(s.len(), n * rounds);
                for r in 0..rounds {
                    let mut vs: Vec<usize> = s.iter().filter(|x| x.0 == r).map(|x| x.1).collect();
                    vs.sort_unstable();
                    assert_eq!(vs, (0..n).collect::<Vec<_>>(), "round {r} of {n}");
                }
                if n > 1 && rounds > 1 {
                    // Not always the same variant first.
                    let firsts: std::collections::HashSet<usize> =
                        (0..rounds).map(|r| s[r * n].1).collect();
                    assert!(firsts.len() > 1, "{n} variants, {rounds} rounds: {s:?}");
                }
            }
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn sample(variant: usize, cell: &str, ops: f64) -> Sample {
        Sample {
            variant,
            cell: cell.into(),
            ops_per_sec: ops,
            p99_ms: ops / 1000.0,
            server_us_per_op: (variant != 2).then(|| 2.0e6 / ops),
        }
    }

    #[test]
    fn the_summary_gives_runs_medians_and_ratios() {
        let labels = vec!["old".to_string(), "new".to_string()];
        let samples = vec![
            sample(0, "write regions=64", 20_000.0),
            sample(0, "write regions=1", 30_000.0),
            sample(1, "write regions=64", 25_000.0),
            sample(1, "write regions=1", 29_000.0),
            sample(0, "write regions=64", 21_000.0),
            sample(0, "write regions=1", 35_000.0),
            sample(1, "write regions=64", 24_000.0),
            sample(1, "write regions=1", 31_000.0),
            sample(0, "write regions=64", 22_000.0),
            sample(1, "write regions=64", 26_000.0),
        ];
        let t = summarize(&labels, &samples);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| cell | old | new | new / old |");
        assert_eq!(lines[1], "|---|---|---|---|");
        // Ranges 20–22 K and 24–26 K are apart: the ratio stands alone.
        assert_eq!(
            lines[2],
            "| write regions=64 | 20.0 / 21.0 / 22.0 K (**21.0 K**), p99 21.0 ms, 95.2 µs CPU/op | \
             25.0 / 24.0 / 26.0 K (**25.0 K**), p99 25.0 ms, 80.0 µs CPU/op | 1.19 |"
        );
        // 30–35 K and 29–31 K overlap.
        assert_eq!(
            lines[3],
            "| write regions=1 | 30.0 / 35.0 K (**32.5 K**), p99 32.5 ms, 61.9 µs CPU/op | \
             29.0 / 31.0 K (**30.0 K**), p99 30.0 ms, 66.7 µs CPU/op | 0.92, ranges overlap |"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn a_cell_a_variant_did_not_measure_shows_a_dash() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let t = summarize(&labels, &[sample(0, "x", 1000.0), sample(2, "x", 3000.0)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| cell | a | b | c | b / a | c / a |");
        assert_eq!(
            lines[2],
            "| x | 1.0 K (**1.0 K**), p99 1.0 ms, 2000.0 µs CPU/op | - | 3.0 K (**3.0 K**), p99 3.0 ms | - | 3.00 |"
        );
    }
}
