//! The PNG: throughput vs threads, one panel per workload, one line per mode. Ours are solid
//! with filled circles, the peer's (`py-…`) thinner with hollow triangles; the batched limits
//! are dashed. Whiskers span min–max over the repetitions. Both axes are logarithmic.
//!
//! Drawn with plotters' primitives and the bitmap font of [`super::glyphs`], so the
//! binary needs no system font library to start or to plot.

use super::error::BenchError;
use super::glyphs;
use super::report::{workloads, BenchReport};
use super::schema::{BenchDoc, Stats, PEER_TOOL};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::full_palette as pal;
use std::path::Path;

/// Pixel size of one workload panel, and of the title band above the panels.
const PANEL: (i32, i32) = (560, 520);
const TITLE: i32 = 40;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// One line of a panel.
struct Series {
    label: String,
    peer: bool,
    limit: bool,
    color: RGBColor,
    /// (log2 T, stats), ascending T.
    points: Vec<(f64, Stats)>,
}

/// Where a panel's plot rectangle is and what it shows (log2 T across, ln samples/s up).
struct Frame {
    left: i32,
    top: i32,
    right: i32,
    bottom: i32,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64, v: f64) -> (i32, i32) {
        let fx = (x - self.x.0) / (self.x.1 - self.x.0);
        let fy = (v.ln() - self.y.0) / (self.y.1 - self.y.0);
        (self.left + (fx * f64::from(self.right - self.left)).round() as i32, self.bottom - (fy * f64::from(self.bottom - self.top)).round() as i32)
    }
}

/// Draws `report` to a PNG at `path`: a 40-pixel title, one 560×520 panel per workload, and one
/// legend for all panels underneath.
pub fn plot_png(report: &BenchReport, path: &Path) -> Result<(), BenchError> {
    draw(report, path).map_err(|message| BenchError::Plot { path: path.display().to_string(), message })
}

fn color_of(peer: bool, mode: &str) -> RGBColor {
    match (peer, mode) {
        (false, "tch-default") => pal::BLUE_700,
        (false, "tch-streams") => pal::GREEN_700,
        (false, "engine") => pal::ORANGE_800,
        (false, "engine-graphs") => pal::PURPLE_600,
        (false, "engine-spread") => pal::RED_700,
        (false, "limit") => BLACK,
        (false, "limit-host") => pal::BROWN_700,
        (true, "py-default") => pal::LIGHTBLUE_400,
        (true, "py-streams") => pal::LIGHTGREEN_600,
        (true, "py-graphs") => pal::PINK_300,
        (true, "py-limit") => pal::GREY_500,
        (true, "py-limit-host") => pal::BROWN_300,
        (true, "py-batcher") => pal::AMBER_400,
        (true, "py-batcher-graphs") => pal::DEEPPURPLE_300,
        _ => {
            let index = mode.bytes().map(usize::from).sum::<usize>();
            let c = Palette99::pick(index).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

fn series_of(doc: &BenchDoc, workload: &str) -> Vec<Series> {
    let peer = doc.tool == PEER_TOOL;
    let mut out: Vec<Series> = Vec::new();
    for r in doc.results.iter().filter(|r| r.workload == workload) {
        let idx = out.iter().position(|s| s.label == r.mode).unwrap_or_else(|| {
            let color = color_of(peer, &r.mode);
            out.push(Series { label: r.mode.clone(), peer, limit: super::Mode::is_limit_name(&r.mode), color, points: Vec::new() });
            out.len() - 1
        });
        out[idx].points.push(((r.threads.max(1) as f64).log2(), r.samples_per_s));
    }
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        s.points.retain(|(_, st)| st.min > 0.0 && st.median > 0.0 && st.max.is_finite());
    }
    out.retain(|s| !s.points.is_empty());
    out
}

fn draw(report: &BenchReport, path: &Path) -> Result<(), String> {
    let mut names = workloads(&report.ours);
    for d in report.docs() {
        names.extend(workloads(d).into_iter().filter(|w| !names.contains(w)).collect::<Vec<_>>());
    }
    let panels: Vec<Vec<Series>> =
        names.iter().map(|name| report.docs().into_iter().flat_map(|d| series_of(d, name)).collect()).collect();
    let mut keys: Vec<&Series> = Vec::new();
    for s in panels.iter().flatten() {
        if !keys.iter().any(|k| k.label == s.label && k.peer == s.peer) {
            keys.push(s);
        }
    }
    let width = PANEL.0 * names.len().max(1) as i32;
    let rows = legend_rows(&keys, width - 20);
    let height = TITLE + PANEL.1 + rows.len() as i32 * LEGEND_ROW + 12;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let o = &report.ours;
    let title = format!("throughput vs threads: {} ({}), torch {}, {}", o.device, o.device_name, o.torch_version, o.date);
    let scale = if glyphs::text_width(&title, 2) <= width - 20 { 2 } else { 1 };
    text(&root, &title, (width / 2, 12), scale, &BLACK, Align::Center)?;
    if names.is_empty() {
        text(&root, "no results", (width / 2, height / 2), 2, &BLACK, Align::Center)?;
    }
    for (i, (name, series)) in names.iter().zip(&panels).enumerate() {
        panel(&root, PANEL.0 * i as i32, name, series)?;
    }
    legend(&root, &rows, TITLE + PANEL.1)?;
    root.present().map_err(|e| e.to_string())
}

/// Height of one legend row, and the pixels before an entry's label (line sample and gap).
const LEGEND_ROW: i32 = 24;
const LEGEND_SAMPLE: i32 = 44;

/// Legend entries flowed into rows no wider than `width`.
fn legend_rows<'a>(keys: &[&'a Series], width: i32) -> Vec<Vec<&'a Series>> {
    let mut rows: Vec<Vec<&Series>> = Vec::new();
    let mut used = width; // forces a first row
    for &k in keys {
        let w = LEGEND_SAMPLE + glyphs::text_width(&k.label, 2) + 24;
        if used + w > width {
            rows.push(Vec::new());
            used = 0;
        }
        if let Some(row) = rows.last_mut() {
            row.push(k);
        }
        used += w;
    }
    rows
}

fn panel(root: &Area, ox: i32, name: &str, series: &[Series]) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (x0, x1) = (xs.first().copied().unwrap_or(0.0), xs.last().copied().unwrap_or(1.0));
    let lo = series.iter().flat_map(|s| s.points.iter().map(|p| p.1.min)).fold(f64::INFINITY, f64::min);
    let hi = series.iter().flat_map(|s| s.points.iter().map(|p| p.1.max)).fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 { (lo / 1.6, hi * 1.6) } else { (1.0, 10.0) };
    let f = Frame {
        left: ox + 76,
        top: TITLE + 52,
        right: ox + PANEL.0 - 20,
        bottom: TITLE + PANEL.1 - 56,
        x: (x0 - 0.3, x1 + 0.3),
        y: (lo.ln(), hi.ln()),
    };
    let grid = ShapeStyle { color: RGBAColor(0, 0, 0, 0.15), filled: false, stroke_width: 1 };
    text(root, name, (ox + PANEL.0 / 2, TITLE + 10), 2, &BLACK, Align::Center)?;
    text(root, "samples/s", (f.left, f.top - 18), 2, &BLACK, Align::Left)?;
    text(root, "threads", ((f.left + f.right) / 2, f.bottom + 30), 2, &BLACK, Align::Center)?;
    for v in y_ticks(lo, hi) {
        let (_, y) = f.px(x0, v);
        root.draw(&PathElement::new(vec![(f.left, y), (f.right, y)], grid)).map_err(e)?;
        text(root, &si(v), (f.left - 8, y - glyphs::HEIGHT), 2, &BLACK, Align::Right)?; // centred: 2 x HEIGHT / 2
    }
    for &x in &xs {
        let (px, _) = f.px(x, lo);
        root.draw(&PathElement::new(vec![(px, f.top), (px, f.bottom)], grid)).map_err(e)?;
        text(root, &format!("{}", x.exp2().round()), (px, f.bottom + 8), 2, &BLACK, Align::Center)?;
    }
    root.draw(&Rectangle::new([(f.left, f.top), (f.right, f.bottom)], BLACK.stroke_width(1))).map_err(e)?;
    for s in series {
        let style = ShapeStyle { color: s.color.to_rgba(), filled: false, stroke_width: if s.peer { 2 } else { 3 } };
        let pts: Vec<(i32, i32)> = s.points.iter().map(|(x, st)| f.px(*x, st.median)).collect();
        for (x, st) in &s.points {
            root.draw(&PathElement::new(vec![f.px(*x, st.min), f.px(*x, st.max)], ShapeStyle { stroke_width: 1, ..style }))
                .map_err(e)?;
        }
        if s.limit {
            root.draw(&DashedPathElement::new(pts.clone(), 10, 6, style)).map_err(e)?;
        } else {
            root.draw(&PathElement::new(pts.clone(), style)).map_err(e)?;
        }
        for &p in &pts {
            marker(root, p, s, style)?;
        }
    }
    Ok(())
}

fn marker(root: &Area, p: (i32, i32), s: &Series, style: ShapeStyle) -> Result<(), String> {
    let r = if s.peer { root.draw(&TriangleMarker::new(p, 6, style)) } else { root.draw(&Circle::new(p, 4, style.filled())) };
    r.map_err(|e| e.to_string())
}

/// The legend band under the panels, each row centred.
fn legend(root: &Area, rows: &[Vec<&Series>], top: i32) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let width = root.dim_in_pixel().0 as i32;
    for (r, row) in rows.iter().enumerate() {
        let entry = |s: &Series| LEGEND_SAMPLE + glyphs::text_width(&s.label, 2) + 24;
        let mut x = (width - row.iter().map(|s| entry(s)).sum::<i32>()) / 2;
        let y = top + 8 + LEGEND_ROW * r as i32 + LEGEND_ROW / 2;
        for s in row {
            let style = ShapeStyle { color: s.color.to_rgba(), filled: false, stroke_width: if s.peer { 2 } else { 3 } };
            let line = vec![(x, y), (x + 32, y)];
            if s.limit {
                root.draw(&DashedPathElement::new(line, 6, 4, style)).map_err(e)?;
            } else {
                root.draw(&PathElement::new(line, style)).map_err(e)?;
                marker(root, (x + 16, y), s, style)?;
            }
            text(root, &s.label, (x + LEGEND_SAMPLE, y - glyphs::HEIGHT), 2, &BLACK, Align::Left)?;
            x += entry(s);
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

/// Draws `s` with its top edge at `at.1`, anchored at `at.0` as `align` says.
fn text(root: &Area, s: &str, at: (i32, i32), scale: i32, color: &RGBColor, align: Align) -> Result<(), String> {
    let w = glyphs::text_width(s, scale);
    let x0 = match align {
        Align::Left => at.0,
        Align::Center => at.0 - w / 2,
        Align::Right => at.0 - w,
    };
    let fill = color.filled();
    for (i, c) in s.chars().enumerate() {
        let cx = x0 + i as i32 * (glyphs::WIDTH + 1) * scale;
        for (gx, gy) in glyphs::cells(c) {
            let (px, py) = (cx + gx * scale, at.1 + gy * scale);
            root.draw(&Rectangle::new([(px, py), (px + scale - 1, py + scale - 1)], fill)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Tick values for a log axis over [lo, hi]: 1-2-5 steps per decade, or 1..9 if those are
/// fewer than three.
fn y_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let within = |mults: &[f64]| -> Vec<f64> {
        (k0..=k1).flat_map(|k| mults.iter().map(move |m| m * 10f64.powi(k))).filter(|v| (lo..=hi).contains(v)).collect()
    };
    let coarse = within(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        coarse
    } else {
        within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// 1234567 → "1.235M": short axis labels.
fn si(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = format!("{scaled:.3}");
    format!("{}{suffix}", digits.trim_end_matches('0').trim_end_matches('.'))
}
