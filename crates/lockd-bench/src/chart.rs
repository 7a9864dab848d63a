//! The `--sweep` chart: throughput and p99 latency against concurrency,
//! one line per system, as SVG (plotters' SVG backend).

use std::path::Path;

use plotters::prelude::*;

/// One measured point.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Concurrent clients.
    pub concurrency: u32,
    /// Throughput.
    pub ops_per_s: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// One line (a system).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Its points, by concurrency.
    pub samples: Vec<Sample>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Writes a two-panel SVG (throughput | p99) to `path`.
pub fn write_svg(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    draw(path, title, series).map_err(|e| format!("writing the chart {}: {e}", path.display()))
}

fn draw(path: &Path, title: &str, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<&Sample> = series.iter().flat_map(|s| &s.samples).collect();
    let lo = all.iter().map(|s| s.concurrency).min().unwrap_or(1).max(1) as f64;
    let mut hi = all.iter().map(|s| s.concurrency).max().unwrap_or(1) as f64;
    if hi <= lo {
        hi = lo * 2.0;
    }
    let x_range = (lo * 0.8)..(hi * 1.25);
    let thr_max = all.iter().map(|s| s.ops_per_s).fold(0.0, f64::max).max(1.0) * 1.1;
    let p99_max = all.iter().map(|s| s.p99_ms).fold(0.0, f64::max).max(0.1) * 1.1;

    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(550);

    type Value = fn(&Sample) -> f64;
    let panels: [(DrawingArea<SVGBackend, _>, &str, f64, Value); 2] = [
        (left, "throughput (ops/s)", thr_max, |s| s.ops_per_s),
        (right, "p99 latency (ms)", p99_max, |s| s.p99_ms),
    ];
    for (area, y_desc, y_max, value) in panels {
        let mut chart = ChartBuilder::on(&area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range.clone().log_scale(), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{}", x.round()))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = s
                .samples
                .iter()
                .map(|p| (p.concurrency as f64, value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let s = |c, o, p| Sample {
            concurrency: c,
            ops_per_s: o,
            p99_ms: p,
        };
        let series = vec![
            Series {
                name: "lockd".into(),
                samples: vec![s(1, 100.0, 1.0), s(4, 300.0, 2.0)],
            },
            Series {
                name: "etcd".into(),
                samples: vec![s(1, 50.0, 2.0), s(4, 120.0, 5.0)],
            },
        ];
        write_svg(&path, "t", &series).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"));
        assert!(text.contains("etcd"));
    }
}
