//! The report of a run: counts, availability over time (an SVG plot with the fault episodes
//! shaded), and the summary text.

use std::fmt::Write as _;

use crate::history::{Outcome, Record};

/// Width of one availability bucket.
pub const BUCKET_MS: u64 = 500;

/// Operations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Answered.
    pub ok: usize,
    /// Certainly not applied (or a read that failed).
    pub fail: usize,
    /// Outcome unknown.
    pub unknown: usize,
}

impl Counts {
    /// Counts `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Counts {
        let mut c = Counts::default();
        for r in records {
            match r.outcome {
                Outcome::Ok { .. } => c.ok += 1,
                Outcome::Fail { .. } => c.fail += 1,
                Outcome::Unknown { .. } => c.unknown += 1,
            }
        }
        c
    }

    /// All operations.
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.unknown
    }
}

/// Per bucket of [`BUCKET_MS`] (by completion time): operations completed and those `ok`.
pub fn availability(records: &[Record]) -> Vec<(usize, usize)> {
    let last = records.iter().map(|r| r.complete_us).max().unwrap_or(0);
    let mut buckets = vec![(0usize, 0usize); (last / 1000 / BUCKET_MS) as usize + 1];
    for r in records {
        let b = &mut buckets[(r.complete_us / 1000 / BUCKET_MS) as usize];
        b.0 += 1;
        if matches!(r.outcome, Outcome::Ok { .. }) {
            b.1 += 1;
        }
    }
    buckets
}

/// An SVG plot: the share of operations that succeeded per bucket (line) and the number
/// of operations completed (bars), with fault episodes `(start s, end s, label)` shaded.
pub fn availability_svg(buckets: &[(usize, usize)], episodes: &[(f64, f64, String)]) -> String {
    let (w, h, left, bottom, top) = (1000.0f64, 320.0f64, 50.0f64, 40.0f64, 20.0f64);
    let plot_w = w - left - 20.0;
    let plot_h = h - bottom - top;
    let seconds = (buckets.len() as f64 * BUCKET_MS as f64 / 1000.0).max(1.0);
    let x = |s: f64| left + s / seconds * plot_w;
    let y = |frac: f64| top + (1.0 - frac) * plot_h;
    let max_ops = buckets.iter().map(|b| b.0).max().unwrap_or(1).max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (start, end, label) in episodes {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="#f4c7c3"><title>{}</title></rect>"##,
            x(*start),
            (x(*end) - x(*start)).max(1.0),
            xml(label)
        );
    }
    let bw = plot_w / buckets.len().max(1) as f64;
    for (i, (n, _)) in buckets.iter().enumerate() {
        let bh = *n as f64 / max_ops * plot_h * 0.5;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#c6dbef"/>"##,
            left + i as f64 * bw,
            top + plot_h - bh,
            bw.max(1.0)
        );
    }
    let mut path = String::new();
    for (i, (n, ok)) in buckets.iter().enumerate() {
        let frac = if *n == 0 { 0.0 } else { *ok as f64 / *n as f64 };
        let px = left + (i as f64 + 0.5) * bw;
        let _ = write!(
            path,
            "{}{px:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            y(frac)
        );
    }
    let _ = writeln!(
        s,
        r##"<path d="{path}" fill="none" stroke="#08519c" stroke-width="1.5"/>"##
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h
    );
    for frac in [0.0, 0.5, 1.0] {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            left - 4.0,
            y(frac) + 4.0,
            frac * 100.0
        );
    }
    let step = (seconds / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= seconds {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}s</text>"#,
            x(t),
            top + plot_h + 14.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{}">line: share of operations ok per {BUCKET_MS} ms; bars: operations completed (max {max_ops}); shaded: fault episodes</text>"#,
        h - 8.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OpKind;

    fn rec(complete_ms: u64, outcome: Outcome) -> Record {
        Record {
            id: 0,
            client: "c".into(),
            key: "k".into(),
            kind: OpKind::Get,
            invoke_us: 0,
            complete_us: complete_ms * 1000,
            outcome,
        }
    }

    #[test]
    fn buckets_count_ok_and_total() {
        let rs = vec![
            rec(10, Outcome::ok(None)),
            rec(20, Outcome::Fail { error: "x".into() }),
            rec(700, Outcome::Unknown { error: "y".into() }),
        ];
        assert_eq!(availability(&rs), vec![(2, 1), (1, 0)]);
        assert_eq!(
            Counts::of(&rs),
            Counts {
                ok: 1,
                fail: 1,
                unknown: 1
            }
        );
        let svg = availability_svg(&availability(&rs), &[(0.1, 0.4, "kill <n1>".into())]);
        assert!(svg.starts_with("<svg") && svg.contains("kill &lt;n1&gt;"));
    }
}
