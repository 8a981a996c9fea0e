//! The grouped bar chart of the attention papers (`--plot FILE.svg`), hand-written SVG.
//!
//! One panel per head_dim × causal; in a panel, one group of bars per sequence length, one bar per
//! series (the peers from `--peers`, then ours: full call, kernel only), the TOPS written above
//! each bar.

use super::peers::{PeerValue, Peers};
use super::report::{seq_label, Report};
use std::fmt::Write as _;

/// One bar series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS color.
    pub color: String,
}

/// One panel of grouped bars.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Group labels along x.
    pub categories: Vec<String>,
    /// `values[series][category]`; `None` draws no bar (a small "n/a" instead).
    pub values: Vec<Vec<Option<f64>>>,
}

/// Peers' colors, in order.
const PEER_COLORS: [&str; 6] = [
    "#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#8c8c8c",
];
/// Our full call.
const OURS_FULL: &str = "#f28e79";
/// Our kernel alone.
const OURS_KERNEL: &str = "#c44e52";

/// Least width of a panel's plot area, px.
const MIN_PLOT_W: f64 = 240.0;

/// Approximate rendered width of `text` in a sans-serif font of `size` px (0.58 em a character).
fn text_width(text: &str, size: f64) -> f64 {
    0.58 * size * text.chars().count() as f64
}

/// Escapes text for SVG content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A y axis top and tick step for data up to `max`: the step is 1, 2, 2.5 or 5 times a power of
/// ten, giving 4 to 8 ticks, and the top leaves room (about 18%) for the value labels.
pub fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max * 1.18
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| max / s <= 8.0)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// A tick label without trailing zeros.
fn tick_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A number above a bar: integers from 10 up, one decimal below.
fn value_label(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Renders panels of grouped bars into an SVG document, `cols` panels per row.
pub fn grouped_bars(
    title: &str,
    subtitle: &str,
    y_label: &str,
    series: &[Series],
    panels: &[Panel],
    cols: usize,
) -> String {
    let cols = cols.max(1);
    let n_series = series.len().max(1);
    let bar_w: f64 = if n_series <= 3 {
        14.0
    } else {
        (48.0 / n_series as f64).max(7.0)
    };
    let group_gap = 14.0;
    let group_w = bar_w * n_series as f64 + group_gap;
    let max_cats = panels
        .iter()
        .map(|p| p.categories.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let plot_w = (group_w * max_cats as f64).max(MIN_PLOT_W);
    let plot_h = 220.0;
    let (axis_left, panel_pad_right) = (58.0, 18.0);
    let (panel_title_h, panel_bottom) = (28.0, 44.0);
    let panel_w = axis_left + plot_w + panel_pad_right;
    let panel_h = panel_title_h + plot_h + panel_bottom;
    let margin = 16.0;
    let rows = panels.len().div_ceil(cols).max(1);
    let content_w = cols as f64 * panel_w;

    // Legend items, wrapped into lines no wider than the panels (or 640 px).
    let item_w: Vec<f64> = series
        .iter()
        .map(|se| 20.0 + text_width(&se.name, 12.0) + 22.0)
        .collect();
    let legend_max = content_w.max(640.0);
    let mut legend_lines: Vec<Vec<usize>> = vec![Vec::new()];
    let mut line_w = 0.0;
    for (i, w) in item_w.iter().enumerate() {
        let last = legend_lines.last_mut().expect("one line");
        if !last.is_empty() && line_w + w > legend_max {
            legend_lines.push(vec![i]);
            line_w = *w;
        } else {
            last.push(i);
            line_w += w;
        }
    }
    let line_width = |l: &Vec<usize>| l.iter().map(|&i| item_w[i]).sum::<f64>();
    let legend_w = legend_lines.iter().map(line_width).fold(0.0, f64::max);
    let width = [
        2.0 * margin + content_w,
        2.0 * margin + legend_w,
        2.0 * margin + text_width(title, 17.0) * 1.08,
        2.0 * margin + text_width(subtitle, 11.0),
        560.0,
    ]
    .into_iter()
    .fold(0.0, f64::max)
    .ceil();
    let legend_top = 58.0;
    let header_h = legend_top + 20.0 * legend_lines.len() as f64 + 14.0;
    let height = header_h + rows as f64 * panel_h + margin;
    // Panels centered when the header is wider.
    let panels_left = (width - content_w) / 2.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="26" font-size="17" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="46" font-size="11" text-anchor="middle" fill="#444">{}</text>"##,
        width / 2.0,
        xml_escape(subtitle)
    );
    for (li, line) in legend_lines.iter().enumerate() {
        let mut x = (width - line_width(line)) / 2.0;
        let y = legend_top + 20.0 * li as f64;
        for &i in line {
            let se = &series[i];
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="14" height="14" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                xml_escape(&se.color),
                x + 20.0,
                y + 11.5,
                xml_escape(&se.name)
            );
            x += item_w[i];
        }
    }

    for (pi, p) in panels.iter().enumerate() {
        let px = panels_left + (pi % cols) as f64 * panel_w;
        let py = header_h + (pi / cols) as f64 * panel_h;
        let (x0, y0) = (px + axis_left, py + panel_title_h); // plot's top-left
        let max = p
            .values
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let (top, step) = nice_axis(max);
        let y_of = |v: f64| y0 + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
        let _ = writeln!(s, "<g>");
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
            x0 + plot_w / 2.0,
            py + 18.0,
            xml_escape(&p.title)
        );
        // Grid and y ticks.
        let ticks = (top / step).round() as usize;
        for t in 0..=ticks {
            let v = t as f64 * step;
            let y = y_of(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd" stroke-width="1"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#333">{}</text>"##,
                x0 + plot_w,
                x0 - 5.0,
                y + 3.5,
                tick_label(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="11" text-anchor="middle">{}</text>"#,
            px + 16.0,
            y0 + plot_h / 2.0,
            xml_escape(y_label)
        );
        // Bars.
        for (ci, cat) in p.categories.iter().enumerate() {
            // Groups spread evenly over the plot; bars centered in their group.
            let gw = plot_w / p.categories.len().max(1) as f64;
            let gx = x0 + ci as f64 * gw + (gw - bar_w * n_series as f64) / 2.0;
            for (si, se) in series.iter().enumerate() {
                let bx = gx + si as f64 * bar_w;
                let cx = bx + bar_w / 2.0;
                match p.values.get(si).and_then(|v| v.get(ci)).copied().flatten() {
                    Some(v) if v.is_finite() && v >= 0.0 => {
                        let y = y_of(v);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{bx:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {:.1}</title></rect>"#,
                            bar_w - 1.0,
                            (y0 + plot_h - y).max(0.0),
                            xml_escape(&se.color),
                            xml_escape(&se.name),
                            v
                        );
                        let _ = writeln!(
                            s,
                            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="9">{}</text>"#,
                            cx + 3.0,
                            y - 3.0,
                            value_label(v)
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            s,
                            r##"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="8" fill="#999">n/a</text>"##,
                            cx + 3.0,
                            y0 + plot_h - 3.0
                        );
                    }
                }
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                gx + bar_w * n_series as f64 / 2.0,
                y0 + plot_h + 15.0,
                xml_escape(cat)
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="1"/><line x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{:.1}" stroke="#333" stroke-width="1"/>"##,
            y0 + plot_h,
            x0 + plot_w,
            y0 + plot_h,
            y0 + plot_h
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">Sequence length</text>"#,
            x0 + plot_w / 2.0,
            y0 + plot_h + 33.0
        );
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}

/// The series and panels of a bench report (and peers): one panel per head_dim × causal.
pub fn chart_data(report: &Report, peers: Option<&Peers>) -> (Vec<Series>, Vec<Panel>, usize) {
    let mut series: Vec<Series> = Vec::new();
    let peer_names: Vec<String> = peers.map(|p| p.names.clone()).unwrap_or_default();
    for (i, n) in peer_names.iter().enumerate() {
        series.push(Series {
            name: n.clone(),
            color: PEER_COLORS[i % PEER_COLORS.len()].into(),
        });
    }
    series.push(Series {
        name: "ours (full call)".into(),
        color: OURS_FULL.into(),
    });
    series.push(Series {
        name: "ours (kernel only)".into(),
        color: OURS_KERNEL.into(),
    });

    let mut dims: Vec<usize> = report.cases.iter().map(|c| c.head_dim).collect();
    dims.sort_unstable();
    dims.dedup();
    let mut causals: Vec<bool> = report.cases.iter().map(|c| c.causal).collect();
    causals.sort_unstable();
    causals.dedup();
    let mut panels = Vec::new();
    for &d in &dims {
        for &causal in &causals {
            let mut cases: Vec<_> = report
                .cases
                .iter()
                .filter(|c| c.head_dim == d && c.causal == causal)
                .collect();
            if cases.is_empty() {
                continue;
            }
            cases.sort_by_key(|c| c.seq_len);
            let mut values = Vec::new();
            for n in &peer_names {
                values.push(
                    cases
                        .iter()
                        .map(|c| match peers.and_then(|p| p.get(c.key(), n)) {
                            Some(PeerValue::Tops(t)) => Some(*t),
                            _ => None,
                        })
                        .collect(),
                );
            }
            values.push(
                cases
                    .iter()
                    .map(|c| c.full.as_ref().map(|p| p.tops))
                    .collect(),
            );
            values.push(
                cases
                    .iter()
                    .map(|c| c.kernel.as_ref().map(|p| p.tops))
                    .collect(),
            );
            panels.push(Panel {
                title: format!("head_dim {d}, causal {}", if causal { "on" } else { "off" }),
                categories: cases.iter().map(|c| seq_label(c.seq_len)).collect(),
                values,
            });
        }
    }
    (series, panels, causals.len().max(1))
}

/// The whole chart of a report.
pub fn render_chart(report: &Report, peers: Option<&Peers>) -> String {
    let (series, panels, cols) = chart_data(report, peers);
    let cfg = &report.config;
    let device = report
        .device
        .as_ref()
        .map_or("unknown device".to_string(), |d| d.name.clone());
    let gqa = if cfg.kv_heads != cfg.heads {
        format!(", kv_heads {}", cfg.kv_heads)
    } else {
        String::new()
    };
    let pv8 = cfg.pv_precision == "int8";
    let fp8 = cfg.pv_precision == "fp8";
    let subtitle = format!(
        "{device} | batch {}, heads {}{gqa}, {} {}, PV {} | median of CUDA-event times, inputs rotated over >2x L2",
        cfg.batch,
        cfg.heads,
        cfg.dtype,
        cfg.layout.to_uppercase(),
        if pv8 {
            "INT8 (u8 P x s8 V, exact per tile, f32 across tiles)".to_string()
        } else if fp8 {
            format!("FP8 (e4m3 P x e4m3 V, {} per tile, f32 across tiles)", cfg.pv_accum)
        } else {
            format!("accumulation {}", cfg.pv_accum)
        }
    );
    let title = if pv8 {
        "SageAttention (INT8 QK, INT8 PV) in Rust: attention speed"
    } else if fp8 {
        "SageAttention (INT8 QK, FP8 PV) in Rust: attention speed"
    } else {
        "SageAttention (INT8 QK, FP16 PV) in Rust: attention speed"
    };
    grouped_bars(title, &subtitle, "TOPS", &series, &panels, cols)
}

#[cfg(test)]
mod tests {
    use super::super::peers::{parse_peers, tests::FAKE_PEERS};
    use super::super::report::tests::fake_report;
    use super::*;

    fn count(h: &str, n: &str) -> usize {
        h.matches(n).count()
    }

    #[test]
    fn nice_axis_steps() {
        for max in [0.3, 1.0, 7.0, 99.0, 164.0, 322.0, 555.5, 1234.0, 1e6] {
            let (top, step) = nice_axis(max);
            assert!(top >= max * 1.18 - 1e-9, "{max}: {top}");
            let ticks = top / step;
            assert!(
                (ticks - ticks.round()).abs() < 1e-9 && (2.0..=8.0).contains(&ticks),
                "{max}: {top} / {step}"
            );
            let m = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 2.5, 5.0].iter().any(|x| (x - m).abs() < 1e-9),
                "{step}"
            );
        }
        assert_eq!(nice_axis(0.0), nice_axis(f64::NAN));
        assert_eq!(tick_label(250.0), "250");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(value_label(321.6), "322");
        assert_eq!(value_label(3.21), "3.2");
    }

    #[test]
    fn escape() {
        assert_eq!(xml_escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
    }

    #[test]
    fn chart_without_peers() {
        let r = fake_report();
        let svg = render_chart(&r, None);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // 4 panels (64/128 × off/on), 3 seq lens each, 2 series; one causal 128 case skipped
        // (1M, no bars: 2 "n/a")
        assert_eq!(count(&svg, "<g>"), 4);
        assert_eq!(count(&svg, "<g>"), count(&svg, "</g>"));
        assert_eq!(
            count(&svg, "<rect") - 1 - 2,
            4 * 3 * 2,
            "bars = panels x seqs x series"
        );
        assert_eq!(count(&svg, ">n/a<"), 2);
        assert!(svg.contains("head_dim 128, causal on"));
        assert!(svg.contains(">1K<") && svg.contains(">4K<") && svg.contains(">1M<"));
        assert!(svg.contains("NVIDIA H100 80GB HBM3"));
    }

    #[test]
    fn chart_with_peers() {
        let r = fake_report();
        let p = parse_peers(FAKE_PEERS).unwrap();
        let (series, panels, cols) = chart_data(&r, Some(&p));
        assert_eq!(cols, 2);
        assert_eq!(series.len(), 6); // 4 peers + ours x2
        assert_eq!(series[4].name, "ours (full call)");
        assert_eq!(panels.len(), 4);
        // d=64 causal off, 1K: flash 171.8, cudnn failed -> None
        assert_eq!(panels[0].values[0][0], Some(171.8));
        assert_eq!(panels[0].values[1][0], None);
        assert_eq!(panels[0].values[2][0], Some(229.0));
        let svg = render_chart(&r, Some(&p));
        assert!(svg.contains("sdpa-cudnn"));
        assert!(svg.contains(">172<"), "flash label");
    }
}
