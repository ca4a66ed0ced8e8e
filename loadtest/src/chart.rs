//! An SVG chart of a run, per second: throughput above, p50 and p99 latency below.

use std::fmt::Write;
use std::time::Duration;

use crate::histogram::Histogram;

const WIDTH: f64 = 800.0;

/// A line: its values, colour and name.
type Line<'a> = (&'a [f64], &'a str, &'a str);
/// A panel: its title and lines.
type Panel<'a> = (&'a str, Vec<Line<'a>>);
const PANEL: f64 = 200.0;
const MARGIN: f64 = 50.0;

/// Per second of a run, (answers, p50 ms, p99 ms), from each answer's (end since the start,
/// latency).
pub fn per_second(answers: impl Iterator<Item = (Duration, Duration)>) -> Vec<(f64, f64, f64)> {
    let mut seconds: Vec<Histogram> = Vec::new();
    for (ended, latency) in answers {
        let second = ended.as_secs() as usize;
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Histogram::default);
        }
        seconds[second].record(latency);
    }
    seconds.iter().map(|h| (h.count() as f64, h.percentile_ms(0.5), h.percentile_ms(0.99))).collect()
}

/// `series`: per second, (acknowledged updates, p50 ms, p99 ms).
pub fn svg(series: &[(f64, f64, f64)]) -> String {
    let throughput: Vec<f64> = series.iter().map(|s| s.0).collect();
    let p50: Vec<f64> = series.iter().map(|s| s.1).collect();
    let p99: Vec<f64> = series.iter().map(|s| s.2).collect();
    panels(
        &[
            ("throughput (acknowledged updates/s)", vec![(&throughput[..], "#1f77b4", "updates/s")]),
            ("latency (ms)", vec![(&p50[..], "#2ca02c", "p50"), (&p99[..], "#d62728", "p99")]),
        ],
        "seconds since the start",
    )
}

/// A line per column of a CSV file (a header line, then numbers; the first column is the x
/// axis), each in its own panel: `loadtest chart --csv FILE --out FILE.svg` (loadtest/soak).
pub fn csv(text: &str) -> anyhow::Result<String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let rows: Vec<Vec<f64>> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;
    let columns: Vec<Vec<f64>> =
        (1..header.len()).map(|c| rows.iter().map(|r| r.get(c).copied().unwrap_or(0.0)).collect()).collect();
    const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let panels_of: Vec<Panel> = header[1..]
        .iter()
        .zip(&columns)
        .enumerate()
        .map(|(n, (name, values))| (*name, vec![(&values[..], COLOURS[n % COLOURS.len()], *name)]))
        .collect();
    Ok(panels(&panels_of, header.first().copied().unwrap_or("x")))
}

/// Panels one above the other, each a title and its lines (values, colour, name).
fn panels(panels: &[Panel], x_label: &str) -> String {
    let height = panels.len() as f64 * (PANEL + MARGIN) + MARGIN;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (n, (title, lines)) in panels.iter().enumerate() {
        panel(&mut out, MARGIN + n as f64 * (PANEL + MARGIN), title, lines);
    }
    let _ = write!(out, r#"<text x="{}" y="{}">{x_label}</text>"#, WIDTH / 2.0 - 60.0, height - 10.0);
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, top: f64, title: &str, lines: &[Line]) {
    let max = lines.iter().flat_map(|(values, _, _)| values.iter().copied()).fold(0.0f64, f64::max).max(1e-9);
    let points = lines.iter().map(|(values, _, _)| values.len()).max().unwrap_or(0).max(2);
    let (left, plot) = (MARGIN, WIDTH - 2.0 * MARGIN);
    let _ = write!(out, r#"<text x="{left}" y="{}" font-weight="bold">{title}</text>"#, top - 8.0);
    let _ = write!(
        out,
        r##"<rect x="{left}" y="{top}" width="{plot}" height="{PANEL}" fill="none" stroke="#999"/>"##
    );
    let _ = write!(out, r#"<text x="{}" y="{}" text-anchor="end">{max:.1}</text>"#, left - 4.0, top + 10.0);
    let _ = write!(out, r#"<text x="{}" y="{}" text-anchor="end">0</text>"#, left - 4.0, top + PANEL);
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
        left + plot,
        top + PANEL + 14.0,
        points - 1
    );
    for (n, (values, colour, name)) in lines.iter().enumerate() {
        let path: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = left + plot * i as f64 / (points - 1) as f64;
                let y = top + PANEL - PANEL * v / max;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            left + plot - 80.0 + 40.0 * n as f64,
            top + 14.0
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chart_is_an_svg_with_a_line_per_series() {
        let svg = super::svg(&[(10.0, 1.0, 5.0), (20.0, 2.0, 8.0), (15.0, 1.5, 6.0)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("p99") && svg.contains("updates/s"));
        let soak = super::csv("minutes,rss_mib,fds\n0,10,20\n1,11,20\n").unwrap();
        assert_eq!(soak.matches("<polyline").count(), 2);
        assert!(soak.contains("rss_mib") && soak.contains("minutes"));
        assert!(super::csv("minutes,x\n0,abc\n").is_err(), "a cell that is not a number is an error");
    }
}
