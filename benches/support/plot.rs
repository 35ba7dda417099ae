//! SVG line plots of bench results (e.g. time against context length), written next to the
//! bench's JSON in `bench-results/`. Only plotters' SVG backend is used: no fonts or system
//! libraries are needed (text is left to the SVG viewer).

use std::path::Path;

use plotters::prelude::*;

/// Axis scales of a plot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlotOptions {
    /// Logarithmic x axis, ticks at powers of two (context lengths, matrix sizes).
    pub log_x: bool,
    /// Logarithmic y axis, ticks at powers of ten.
    pub log_y: bool,
}

impl PlotOptions {
    /// Logarithmic axes where every value is positive and the values span at least 16×
    /// (context lengths 8K..256K, times that grow with them); linear otherwise.
    pub fn auto(series: &[(String, Vec<(f64, f64)>)]) -> PlotOptions {
        let wide = |vals: Vec<f64>| {
            let (lo, hi) = bounds(vals.into_iter());
            lo > 0.0 && hi / lo >= 16.0
        };
        let points = || series.iter().flat_map(|(_, p)| p.iter());
        PlotOptions {
            log_x: wide(points().map(|p| p.0).collect()),
            log_y: wide(points().map(|p| p.1).collect()),
        }
    }
}

fn bounds(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    vals.filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// Writes an SVG line plot of `series` (name, points) to `path`, with axes chosen by
/// [`PlotOptions::auto`]. Non-finite points are left out; an empty plot is an error.
pub fn plot_series(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    plot_series_with(
        path,
        title,
        x_label,
        y_label,
        series,
        PlotOptions::auto(series),
    )
}

/// [`plot_series`] with explicit axis scales (a log axis needs positive values: others are
/// left out).
pub fn plot_series_with(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    options: PlotOptions,
) -> Result<(), String> {
    let keep = |&(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!options.log_x || x > 0.0) && (!options.log_y || y > 0.0)
    };
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, p)| (n.as_str(), p.iter().copied().filter(keep).collect()))
        .collect();
    let (x0, x1) = bounds(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)));
    let (y0, y1) = bounds(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
    if x0 > x1 || y0 > y1 {
        return Err(format!("{}: nothing to plot", path.display()));
    }
    let (x0, x1) = pad(x0, x1, options.log_x);
    let (y0, y1) = pad(
        if options.log_y { y0 } else { y0.min(0.0) },
        y1,
        options.log_y,
    );
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    // the four axis combinations have different coordinate types
    macro_rules! draw {
        ($xr:expr, $yr:expr) => {{
            let mut chart = builder.build_cartesian_2d($xr, $yr).map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .light_line_style(BLACK.mix(0.03))
                .x_label_formatter(&|v| short(*v))
                .y_label_formatter(&|v| short(*v))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, (name, points)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    match (options.log_x, options.log_y) {
        (false, false) => draw!(x0..x1, y0..y1),
        (true, false) => draw!((x0..x1).log_scale().base(2.0), y0..y1),
        (false, true) => draw!(x0..x1, (y0..y1).log_scale()),
        (true, true) => draw!((x0..x1).log_scale().base(2.0), (y0..y1).log_scale()),
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A little room around the data (a factor on log axes); a single value gets a range too.
fn pad(lo: f64, hi: f64, log: bool) -> (f64, f64) {
    if log {
        (lo / 1.25, hi * 1.25)
    } else if hi > lo {
        let m = (hi - lo) * 0.05;
        (lo - m, hi + m)
    } else {
        (lo - 1.0, hi + 1.0)
    }
}

/// Compact tick labels: `8K`, `256K`, `2M` for multiples of 1024 and 1024², otherwise at most
/// three significant digits after the point (`12.5`, `0.9`, `0.125`).
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && (v / 1048576.0).fract() == 0.0 {
        format!("{}M", v / 1048576.0)
    } else if a >= 1024.0 && (v / 1024.0).fract() == 0.0 {
        format!("{}K", v / 1024.0)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        // three significant digits, without trailing zeros: 12.5, 0.9, 0.125
        let digits = (2 - a.log10().floor() as i32).clamp(0, 9) as usize;
        let s = format!("{v:.digits$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tick_labels() {
        let l: Vec<String> = [
            8192.0, 262144.0, 2097152.0, 1000.0, 12.5, 0.9, 0.125, 0.0004, 3.0,
        ]
        .iter()
        .map(|v| super::short(*v))
        .collect();
        assert_eq!(
            l,
            ["8K", "256K", "2M", "1000", "12.5", "0.9", "0.125", "0.0004", "3"]
        );
    }
}
