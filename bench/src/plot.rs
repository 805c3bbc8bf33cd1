//! A small SVG line-chart writer for the benchmark's report (cost curves against the number
//! of devices), hand-written: no crate, one standalone SVG document per chart.
//!
//! It never panics and never writes NaN or infinity: points that cannot be drawn (a
//! non-finite coordinate, x ≤ 0 on a logarithmic axis) are left out, and an empty chart is
//! drawn as empty axes saying "no data".

use std::fmt::Write as _;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, axis labels, and whether the x axis is logarithmic (devices 1..10,000).
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
/// The plot area (inside the axes).
const LEFT: f64 = 72.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = HEIGHT - 56.0;
/// Right edge of the plot area when there is a legend (it takes the column to the right).
const RIGHT_WITH_LEGEND: f64 = WIDTH - 170.0;
const RIGHT_ALONE: f64 = WIDTH - 24.0;
/// Legend names longer than this are cut (with an ellipsis) to stay in the SVG.
const LEGEND_CHARS: usize = 22;

/// Colours distinguishable from one another (and for most colour-blind readers).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The chart as a standalone SVG document (about 640×400), readable by a person: axes with ticks and labelled round-number tick values (log axis: powers of ten; linear y from 0 to a round maximum above the data), light grid lines, one polyline with point markers per series in distinct colours, a legend, the title, the axis labels. Text XML-escaped.
pub fn svg(chart: &Chart) -> String {
    // The points that can be drawn, per series, sorted by x (a line chart's line goes left
    // to right whatever order the points came in).
    let series: Vec<(&str, Vec<(f64, f64)>)> = chart
        .series
        .iter()
        .map(|s| {
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!chart.log_x || x > 0.0))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (s.name.as_str(), pts)
        })
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0);
    let mut any = false;
    for (x, y) in all {
        any = true;
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = f64::min(ymin, y);
        ymax = f64::max(ymax, y);
    }
    if !any {
        (xmin, xmax) = if chart.log_x { (1.0, 10.0) } else { (0.0, 1.0) };
    }

    let right = if series.is_empty() {
        RIGHT_ALONE
    } else {
        RIGHT_WITH_LEGEND
    };
    let x_axis = if chart.log_x {
        Axis::log(xmin, xmax)
    } else {
        Axis::linear(xmin, xmax, false)
    };
    let y_axis = Axis::linear(ymin, ymax, true);
    let px = |x: f64| LEFT + x_axis.fraction(x) * (right - LEFT);
    let py = |y: f64| BOTTOM - y_axis.fraction(y) * (BOTTOM - TOP);

    let mut out = String::with_capacity(8192);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#,
        w = WIDTH,
        h = HEIGHT
    );
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    // Title and axis labels.
    let _ = writeln!(
        out,
        r##"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold" fill="#222222">{}</text>"##,
        num(WIDTH / 2.0),
        escape(&chart.title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="#222222">{}</text>"##,
        num((LEFT + right) / 2.0),
        num(HEIGHT - 14.0),
        escape(&chart.x_label)
    );
    let _ = writeln!(
        out,
        r##"<text x="18" y="{y}" text-anchor="middle" font-size="13" fill="#222222" transform="rotate(-90 18 {y})">{}</text>"##,
        escape(&chart.y_label),
        y = num((TOP + BOTTOM) / 2.0)
    );

    // Grid lines, ticks and tick labels.
    let _ = writeln!(out, r#"<g class="grid" stroke-width="1">"#);
    for &m in &x_axis.minor {
        let x = px(m);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{BOTTOM}" stroke="#f0f0f0"/>"##,
            x = num(x)
        );
    }
    for (v, label) in &x_axis.ticks {
        let x = num(px(*v));
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{BOTTOM}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            out,
            r##"<line class="xtick" x1="{x}" y1="{BOTTOM}" x2="{x}" y2="{}" stroke="#333333"/>"##,
            num(BOTTOM + 5.0)
        );
        let _ = writeln!(
            out,
            r##"<text class="xtick-label" x="{x}" y="{}" text-anchor="middle" fill="#333333">{}</text>"##,
            num(BOTTOM + 19.0),
            escape(label)
        );
    }
    for (v, label) in &y_axis.ticks {
        let y = num(py(*v));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#dddddd"/>"##,
            num(right)
        );
        let _ = writeln!(
            out,
            r##"<line class="ytick" x1="{}" y1="{y}" x2="{LEFT}" y2="{y}" stroke="#333333"/>"##,
            num(LEFT - 5.0)
        );
        let _ = writeln!(
            out,
            r##"<text class="ytick-label" x="{}" y="{y}" dy="0.35em" text-anchor="end" fill="#333333">{}</text>"##,
            num(LEFT - 8.0),
            escape(label)
        );
    }
    let _ = writeln!(out, "</g>");
    // The axes themselves, over the grid.
    let _ = writeln!(
        out,
        r##"<path class="axes" d="M{LEFT},{TOP} L{LEFT},{BOTTOM} L{},{BOTTOM}" fill="none" stroke="#333333" stroke-width="1.5"/>"##,
        num(right)
    );
    if !any {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" fill="#888888">no data</text>"##,
            num((LEFT + right) / 2.0),
            num((TOP + BOTTOM) / 2.0)
        );
    }

    // The series, then the legend.
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let _ = writeln!(out, r#"<g class="series">"#);
        let _ = writeln!(out, "<title>{}</title>", escape(name));
        if pts.len() >= 2 {
            let coords: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{},{}", num(px(x)), num(py(y))))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>"#,
                coords.join(" ")
            );
        }
        for &(x, y) in pts {
            let _ = writeln!(
                out,
                r##"<circle class="marker" cx="{}" cy="{}" r="3.5" fill="{colour}" stroke="#ffffff" stroke-width="1"/>"##,
                num(px(x)),
                num(py(y))
            );
        }
        let _ = writeln!(out, "</g>");
    }
    for (i, (name, _)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let y = TOP + 8.0 + 20.0 * i as f64;
        if y > BOTTOM {
            break; // more series than the legend has room for: they keep their <title>
        }
        let x = right + 14.0;
        let _ = writeln!(
            out,
            r#"<line class="legend" x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#,
            num(x),
            num(x + 22.0),
            y = num(y)
        );
        let _ = writeln!(
            out,
            r##"<circle class="legend-marker" cx="{}" cy="{}" r="3.5" fill="{colour}" stroke="#ffffff" stroke-width="1"/>"##,
            num(x + 11.0),
            num(y)
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" dy="0.35em" fill="#222222">{}</text>"##,
            num(x + 28.0),
            num(y),
            escape(&shorten(name, LEGEND_CHARS))
        );
    }
    out.push_str("</svg>\n");
    out
}

/// An axis: the range drawn, and the ticks (value, label) within it.
struct Axis {
    log: bool,
    /// The range, in the axis's units (decades for a logarithmic axis).
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
    /// Unlabelled grid lines (2..9 × 10^k on a logarithmic axis).
    minor: Vec<f64>,
}

impl Axis {
    /// From a round number at or below `min` to one at or above `max` (with `headroom`,
    /// strictly above a positive `max`: no point on the top edge).
    fn linear(min: f64, max: f64, headroom: bool) -> Axis {
        let (mut min, mut max) = (min, max);
        if min == max {
            let d = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
            if min == 0.0 {
                max = d;
            } else {
                min -= d;
                max += d;
            }
        }
        // Fifths of each, so that a range from -f64::MAX to f64::MAX does not overflow.
        let step = nice_step(max / 5.0 - min / 5.0);
        let mut lo = (min / step).floor() * step;
        let mut hi = (max / step).ceil() * step;
        if headroom && max > 0.0 && hi <= max {
            hi += step;
        }
        if !lo.is_finite() {
            lo = min;
        }
        if !hi.is_finite() {
            hi = max;
        }
        let mut ticks = Vec::new();
        if step.is_finite() && step > 0.0 {
            let n = (hi / step - lo / step + 1e-9).floor().clamp(0.0, 40.0) as usize;
            for i in 0..=n {
                let v = lo + i as f64 * step;
                if v.is_finite() {
                    // A tick of -0.00000000001 is 0.
                    let v = if (v / step).abs() < 1e-9 { 0.0 } else { v };
                    ticks.push((v, format_tick(v)));
                }
            }
        }
        Axis {
            log: false,
            lo,
            hi,
            ticks,
            minor: Vec::new(),
        }
    }

    /// Whole decades around `min` and `max` (both > 0), ticks at powers of ten.
    fn log(min: f64, max: f64) -> Axis {
        let lo = min.log10().floor();
        let mut hi = max.log10().ceil();
        let lo = if lo.is_finite() { lo } else { 0.0 };
        if !hi.is_finite() || hi <= lo {
            hi = lo + 1.0;
        }
        let decades = (hi - lo) as i64;
        // At most about ten labelled ticks.
        let every = (decades + 9) / 10;
        let mut ticks = Vec::new();
        let mut minor = Vec::new();
        let mut k = lo as i64;
        while k <= hi as i64 {
            let label = if (-15..=15).contains(&k) {
                format_tick(10f64.powi(k as i32))
            } else {
                format!("1e{k}")
            };
            if (k - lo as i64) % every.max(1) == 0 {
                ticks.push((k as f64, label));
            }
            if decades <= 6 && k < hi as i64 {
                for m in 2..=9 {
                    minor.push(k as f64 + (m as f64).log10());
                }
            }
            k += 1;
        }
        // Tick and minor positions are in decades; `fraction` takes values, so keep them
        // as the values' logarithms and mark the axis as already logarithmic.
        Axis {
            log: true,
            lo,
            hi,
            ticks: ticks
                .into_iter()
                .map(|(d, l)| (10f64.powf(d), l))
                .filter(|(v, _)| v.is_finite() && *v > 0.0)
                .collect(),
            minor: minor
                .into_iter()
                .map(|d| 10f64.powf(d))
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect(),
        }
    }

    /// Where `v` lies, from 0 (the axis's start) to 1 (its end), clamped, never NaN.
    fn fraction(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        let f = (v / 2.0 - self.lo / 2.0) / (self.hi / 2.0 - self.lo / 2.0);
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// 1, 2, 2.5 or 5 × 10^k, at least `rough` (a fifth of the range: five ticks or so).
fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let exp = rough.log10().floor();
    let base = 10f64.powf(exp);
    let m = rough / base;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 2.5 {
        2.5
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = nice * base;
    if step.is_finite() && step > 0.0 {
        step
    } else {
        rough
    }
}

/// A tick value readably: 2,000,000 as "2 M", 1500 as "1.5 k", 0.5 as "0.5".
fn format_tick(v: f64) -> String {
    if !v.is_finite() {
        return String::from("?");
    }
    if v == 0.0 {
        return String::from("0");
    }
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e15 {
        let e = a.log10().floor();
        let m = v / 10f64.powf(e);
        return format!("{}e{}", trim(m, 2), e as i64);
    } else if a >= 1e12 {
        (v / 1e12, " T")
    } else if a >= 1e9 {
        (v / 1e9, " G")
    } else if a >= 1e6 {
        (v / 1e6, " M")
    } else if a >= 1e3 {
        (v / 1e3, " k")
    } else {
        (v, "")
    };
    if a < 1e-6 {
        let e = a.log10().floor();
        let m = v / 10f64.powf(e);
        return format!("{}e{}", trim(m, 2), e as i64);
    }
    let decimals = if a < 1.0 { 6 } else { 2 };
    format!("{}{}", trim(scaled, decimals), suffix)
}

/// `v` with at most `decimals` decimals, trailing zeros dropped.
fn trim(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        String::from("0")
    } else {
        s
    }
}

/// A coordinate, one decimal; 0 for anything not finite (there is none: the axes clamp).
fn num(v: f64) -> String {
    if v.is_finite() {
        trim(v, 1)
    } else {
        String::from("0")
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log_x: bool, series: Vec<Series>) -> Chart {
        Chart {
            title: String::from("Records per second"),
            x_label: String::from("devices"),
            y_label: String::from("records/s"),
            log_x,
            series,
        }
    }

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.to_string(),
            points: points.to_vec(),
        }
    }

    /// The values of attribute `attr` in the elements whose text contains `marker`.
    fn attrs(svg: &str, marker: &str, attr: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.contains(marker))
            .map(|l| {
                let key = format!(" {attr}=\"");
                let start = l.find(&key).expect("attribute") + key.len();
                let end = start + l[start..].find('"').unwrap();
                l[start..end].parse::<f64>().expect("a number")
            })
            .collect()
    }

    fn example() -> Chart {
        chart(
            true,
            vec![
                series(
                    "tether listen",
                    &[
                        (1.0, 210_000.0),
                        (10.0, 1_450_000.0),
                        (100.0, 2_900_000.0),
                        (1000.0, 3_100_000.0),
                        (10_000.0, 2_600_000.0),
                    ],
                ),
                series(
                    "raw TCP <ref> & co",
                    &[
                        (1.0, 400_000.0),
                        (100.0, 3_800_000.0),
                        (10_000.0, 4_100_000.0),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn one_marker_per_point_inside_the_plot_area() {
        let s = svg(&example());
        assert_eq!(s.matches(r#"class="marker""#).count(), 8);
        let xs = attrs(&s, r#"class="marker""#, "cx");
        let ys = attrs(&s, r#"class="marker""#, "cy");
        assert_eq!(xs.len(), 8);
        for x in xs {
            assert!((LEFT..=RIGHT_WITH_LEGEND).contains(&x), "x {x}");
        }
        for y in ys {
            assert!((TOP..=BOTTOM).contains(&y), "y {y}");
        }
        // The highest point is the top one, and it is under the top of the axis (the
        // maximum is a round number above the data).
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>\n"));
    }

    #[test]
    fn names_are_escaped() {
        let mut c = example();
        c.title = String::from("a <b> & \"c\"");
        let s = svg(&c);
        assert!(s.contains("raw TCP &lt;ref&gt; &amp; co"), "{s}");
        assert!(s.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(!s.contains("<ref>") && !s.contains("<b>") && !s.contains("& "));
    }

    #[test]
    fn log_axis_ticks_at_powers_of_ten() {
        let s = svg(&example());
        let labels: Vec<&str> = s
            .lines()
            .filter(|l| l.contains(r#"class="xtick-label""#))
            .map(|l| {
                let start = l.find('>').unwrap() + 1;
                &l[start..l.rfind("</text>").unwrap()]
            })
            .collect();
        assert_eq!(labels, ["1", "10", "100", "1 k", "10 k"]);
        // Evenly spaced.
        let xs = attrs(&s, r#"class="xtick""#, "x1");
        assert_eq!(xs.len(), 5);
        assert_eq!(xs[0], LEFT);
        assert_eq!(xs[4], RIGHT_WITH_LEGEND);
        for w in xs.windows(3) {
            assert!(((w[1] - w[0]) - (w[2] - w[1])).abs() < 0.2, "{xs:?}");
        }
    }

    #[test]
    fn linear_y_from_zero_to_a_round_maximum() {
        let labels = |c: &Chart| -> Vec<String> {
            svg(c)
                .lines()
                .filter(|l| l.contains(r#"class="ytick-label""#))
                .map(|l| {
                    let start = l.find('>').unwrap() + 1;
                    l[start..l.rfind("</text>").unwrap()].to_string()
                })
                .collect()
        };
        let l = labels(&example());
        assert_eq!(l.first().map(String::as_str), Some("0"));
        assert_eq!(l.last().map(String::as_str), Some("5 M"), "{l:?}");
        assert!(l.len() >= 3 && l.len() <= 11, "{l:?}");
        // A maximum on a round number gets a step of headroom above it.
        let l = labels(&chart(
            false,
            vec![series("ns", &[(1.0, 0.5), (2.0, 1.25)])],
        ));
        assert_eq!(l, ["0", "0.25", "0.5", "0.75", "1", "1.25", "1.5"]);
    }

    #[test]
    fn edge_cases_draw_without_nan_or_infinity() {
        let cases = vec![
            chart(false, vec![]),
            chart(true, vec![]),
            chart(true, vec![series("empty", &[])]),
            chart(true, vec![series("one", &[(10.0, 5.0)])]),
            chart(false, vec![series("one", &[(3.0, 5.0)])]),
            chart(false, vec![series("zero", &[(0.0, 0.0)])]),
            chart(true, vec![series("zeros", &[(1.0, 0.0), (10.0, 0.0)])]),
            chart(
                true,
                vec![series("x ≤ 0", &[(0.0, 1.0), (-5.0, 2.0), (10.0, 3.0)])],
            ),
            chart(
                true,
                vec![series(
                    "bad",
                    &[(f64::NAN, 1.0), (1.0, f64::INFINITY), (f64::INFINITY, 1.0)],
                )],
            ),
            chart(
                false,
                vec![series(
                    "huge",
                    &[(-f64::MAX, -f64::MAX), (f64::MAX, f64::MAX)],
                )],
            ),
            chart(
                true,
                vec![series(
                    "tiny to huge",
                    &[(f64::MIN_POSITIVE, 1e-300), (f64::MAX, 1e300)],
                )],
            ),
            chart(false, vec![series("negative", &[(1.0, -3.0), (2.0, -7.5)])]),
        ];
        for c in &cases {
            let s = svg(c);
            let name = c.series.first().map(|s| s.name.as_str()).unwrap_or("none");
            assert!(!s.contains("NaN"), "{name}: {s}");
            assert!(!s.to_lowercase().contains("inf"), "{name}: {s}");
            for l in s.lines().filter(|l| l.contains(r#"class="marker""#)) {
                assert!(!l.contains("?"), "{l}");
            }
            let ys = attrs(&s, r#"class="marker""#, "cy");
            assert!(
                ys.iter().all(|y| (TOP..=BOTTOM).contains(y)),
                "{name}: {ys:?}"
            );
        }
        // Points left out: x ≤ 0 on the log axis, non-finite coordinates.
        assert_eq!(svg(&cases[7]).matches(r#"class="marker""#).count(), 1);
        assert_eq!(svg(&cases[8]).matches(r#"class="marker""#).count(), 0);
        assert!(svg(&cases[0]).contains("no data"));
        assert_eq!(svg(&cases[3]).matches(r#"class="marker""#).count(), 1);
        assert_eq!(svg(&cases[3]).matches("<polyline").count(), 0);
    }

    #[test]
    fn tick_labels_are_readable() {
        assert_eq!(format_tick(2_000_000.0), "2 M");
        assert_eq!(format_tick(1500.0), "1.5 k");
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(0.0), "0");
        assert_eq!(format_tick(250.0), "250");
        assert_eq!(format_tick(0.30000000000000004), "0.3");
        assert_eq!(format_tick(12_500_000_000.0), "12.5 G");
        assert_eq!(format_tick(-1500.0), "-1.5 k");
        assert_eq!(format_tick(3e20), "3e20");
    }

    /// Not a check: writes the example chart where a person can look at it
    /// (`cargo test -p tether-bench --lib plot::tests::write_example -- --ignored`).
    #[test]
    #[ignore]
    fn write_example() {
        let mut c = example();
        c.title = String::from("Small records into CSV against devices");
        std::fs::write("/tmp/plot-example.svg", svg(&c)).unwrap();
    }
}
