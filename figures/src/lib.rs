//! Figures: PNG files drawn with `plotters` on an RGB buffer and encoded with `png`. The
//! evaluator's reports draw their figures here, and `dsm dashboard` the Grafana dashboard's panels.
//!
//! Text is set in DejaVu Sans, bundled in `figures/assets/` (licence beside it) and registered
//! from bytes, so figures look the same on every machine and need no system fonts. plotters'
//! `ab_glyph` text does no shaping: a combining mark (the dot of "θ̇", U+0307) is drawn after its
//! letter, not above it, so labels read better with "ω" or "dθ/dt".
//!
//! Every figure is a title band over a grid of panels (at most `COLUMNS` wide) that share
//! `figure`; each function checks its input first and returns an error naming what is wrong.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The font family every text style names; `register_font` maps it to the bundled font.
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Text sizes in pixels. Even on purpose: plotters' `ab_glyph` text places each glyph at
/// `(size / 2 + top) as i32`, which truncates half pixels differently for glyphs above and
/// below that line, so an odd size sets a tick label's "." a pixel too high.
const TITLE_PX: u32 = 24;
const CAPTION_PX: u32 = 18;
const DESC_PX: u32 = 16;
const TICK_PX: u32 = 14;
/// Panels per row, at most.
const COLUMNS: usize = 3;
/// Height of the figure's title band, in pixels.
const TITLE_H: u32 = 50;
/// The size of one panel, in pixels.
const PANEL: (u32, u32) = (480, 400);
/// Width of a heat map's colour bar (with its labels), in pixels.
const BAR_W: u32 = 110;
/// Dark2 (ColorBrewer), a qualitative palette, cycled for atoms and series.
const PALETTE: [RGBColor; 8] = [
    RGBColor(27, 158, 119),
    RGBColor(217, 95, 2),
    RGBColor(117, 112, 179),
    RGBColor(231, 41, 138),
    RGBColor(102, 166, 30),
    RGBColor(230, 171, 2),
    RGBColor(166, 118, 29),
    RGBColor(102, 102, 102),
];
/// Viridis (matplotlib's default map, perceptually uniform) sampled at i/7, linearly interpolated.
const VIRIDIS: [(u8, u8, u8); 8] = [
    (68, 1, 84),
    (70, 50, 127),
    (54, 92, 141),
    (39, 127, 143),
    (31, 162, 136),
    (74, 194, 110),
    (160, 219, 57),
    (254, 232, 37),
];
const PREDICTED: RGBColor = RGBColor(31, 119, 180);
const REFERENCE: RGBColor = RGBColor(255, 127, 14);
const DATASET: RGBColor = RGBColor(190, 190, 190);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel of [`cdf_panels`]: the δ-model's return atoms and the Monte-Carlo returns.
#[derive(Debug, Clone)]
pub struct CdfPanel {
    pub title: String,
    pub predicted: Vec<f64>,
    pub reference: Vec<f64>,
}

/// One panel of [`heat_maps`]: `values` is row-major `ny × nx`, row 0 at `y0` (the bottom),
/// column 0 at `x0`; `extent` is `[x0, x1, y0, y1]` in metres. Non-finite cells are drawn white.
/// `walls` (segments, m) are drawn over the map in white on black, `marker` as a red ×.
#[derive(Debug, Clone, Default)]
pub struct HeatPanel {
    pub title: String,
    pub values: Vec<f64>,
    pub nx: usize,
    pub ny: usize,
    pub extent: [f64; 4],
    pub walls: Vec<[[f64; 2]; 2]>,
    pub marker: Option<[f64; 2]>,
}

/// One panel of [`line_panels`].
#[derive(Debug, Clone)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<[f64; 2]>)>,
}

/// Empirical CDFs (step functions) of predicted and reference returns, one panel per entry.
pub fn cdf_panels(path: &Path, title: &str, x_label: &str, panels: &[CdfPanel]) -> Result<()> {
    ensure!(!panels.is_empty(), "cdf_panels: no panels");
    for (i, p) in panels.iter().enumerate() {
        for (name, xs) in [("predicted", &p.predicted), ("reference", &p.reference)] {
            ensure!(!xs.is_empty(), "cdf_panels: panel {i} ({:?}): {name} is empty", p.title);
            if let Some(j) = xs.iter().position(|x| !x.is_finite()) {
                bail!("cdf_panels: panel {i} ({:?}): {name}[{j}] is {}", p.title, xs[j]);
            }
        }
    }
    figure(path, title, panels.len(), PANEL, |i, area| {
        let p = &panels[i];
        let x = span(p.predicted.iter().chain(&p.reference).copied()).unwrap_or(0.0..1.0);
        let mut chart = chart(area, &p.title, x.clone(), -0.02..1.02, x_label, "CDF", true)?;
        for (xs, colour, name) in [(&p.predicted, PREDICTED, "δ-model"), (&p.reference, REFERENCE, "Monte-Carlo")] {
            let style = colour.stroke_width(2);
            chart
                .draw_series(LineSeries::new(ecdf(xs, &x), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// Two panels on the same axes: the dataset's states in grey (left); each atom's samples in its
/// own colour and the source state as a red × (right). Non-finite points are skipped.
pub fn state_samples(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    background: &[[f64; 2]],
    atoms: &[Vec<[f64; 2]>],
    source: [f64; 2],
) -> Result<()> {
    ensure!(!background.is_empty(), "state_samples: background is empty");
    ensure!(atoms.iter().any(|a| !a.is_empty()), "state_samples: no atom samples");
    ensure!(source.iter().all(|v| v.is_finite()), "state_samples: source {source:?} is not finite");
    let all = || background.iter().chain(atoms.iter().flatten()).chain([&source]);
    let x = span(all().map(|p| p[0])).context("state_samples: no finite points")?;
    let y = span(all().map(|p| p[1])).context("state_samples: no finite points")?;
    let dot = |p: &[f64; 2], size, colour: RGBColor| Circle::new((p[0], p[1]), size, colour.filled());
    let panel = (PANEL.0 + 60, PANEL.1 + 60);
    figure(path, title, 2, panel, |i, area| {
        let caption = if i == 0 { "dataset" } else { "δ-model atoms and source" };
        let mut chart = chart(area, caption, x.clone(), y.clone(), x_label, y_label, true)?;
        if i == 0 {
            chart.draw_series(finite(background).map(|p| dot(p, 2, DATASET)))?;
            return Ok(());
        }
        for (a, samples) in atoms.iter().enumerate() {
            let colour = PALETTE[a % PALETTE.len()];
            chart.draw_series(finite(samples).map(|p| dot(p, 3, colour)))?;
        }
        let cross = RED.stroke_width(3);
        chart
            .draw_series([Cross::new((source[0], source[1]), 8, cross)])?
            .label("source")
            .legend(move |(x, y)| Cross::new((x + 10, y), 6, cross));
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// A grid of heat maps (viridis, non-finite cells white), each with a colour bar labelled
/// `colour_label`; the colour range is per panel, or common to all with `shared_range`.
pub fn heat_maps(path: &Path, title: &str, panels: &[HeatPanel], colour_label: &str, shared_range: bool) -> Result<()> {
    ensure!(!panels.is_empty(), "heat_maps: no panels");
    for (i, p) in panels.iter().enumerate() {
        let what = format!("heat_maps: panel {i} ({:?})", p.title);
        ensure!(p.nx > 0 && p.ny > 0, "{what}: grid is {} × {}", p.ny, p.nx);
        ensure!(p.values.len() == p.nx * p.ny, "{what}: {} values for a {} × {} grid", p.values.len(), p.ny, p.nx);
        let [x0, x1, y0, y1] = p.extent;
        ensure!(
            p.extent.iter().all(|v| v.is_finite()) && x0 < x1 && y0 < y1,
            "{what}: extent {:?} is not [x0, x1, y0, y1] with x0 < x1, y0 < y1",
            p.extent
        );
    }
    let shared = value_range(panels.iter().flat_map(|p| p.values.iter().copied()));
    figure(path, title, panels.len(), (PANEL.0 + BAR_W, PANEL.1), |i, area| {
        let p = &panels[i];
        let (lo, hi) = if shared_range { shared } else { value_range(p.values.iter().copied()) };
        let area = area.titled(&p.title, (FONT, CAPTION_PX))?;
        let (map, bar) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(BAR_W));
        let [x0, x1, y0, y1] = p.extent;
        let mut chart = chart(&map, "", x0..x1, y0..y1, "x (m)", "y (m)", false)?;
        let (dx, dy) = ((x1 - x0) / p.nx as f64, (y1 - y0) / p.ny as f64);
        chart.draw_series(p.values.iter().enumerate().map(|(k, &v)| {
            let (cx, cy) = (x0 + (k % p.nx) as f64 * dx, y0 + (k / p.nx) as f64 * dy);
            let colour = if v.is_finite() { viridis((v - lo) / (hi - lo)) } else { WHITE };
            Rectangle::new([(cx, cy), (cx + dx, cy + dy)], colour.filled())
        }))?;
        for w in &p.walls {
            let seg = [(w[0][0], w[0][1]), (w[1][0], w[1][1])];
            chart.draw_series([PathElement::new(seg, BLACK.stroke_width(5))])?;
            chart.draw_series([PathElement::new(seg, WHITE.stroke_width(2))])?;
        }
        if let Some(m) = p.marker {
            chart.draw_series([Cross::new((m[0], m[1]), 8, RED.stroke_width(3))])?;
        }
        colour_bar(&bar, lo..hi, colour_label)
    })
}

/// Lines (e.g. learning curves), one per named series, with a legend; a non-finite point
/// breaks its line.
pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<[f64; 2]>)]) -> Result<()> {
    let panel =
        LinePanel { title: String::new(), x_label: x_label.into(), y_label: y_label.into(), series: series.to_vec() };
    line_panels(path, title, std::slice::from_ref(&panel), (PANEL.0 * 3 / 2, PANEL.1 * 3 / 2))
}

/// A grid of line panels (see [`lines`]), each `panel` pixels.
pub fn line_panels(path: &Path, title: &str, panels: &[LinePanel], panel: (u32, u32)) -> Result<()> {
    ensure!(!panels.is_empty(), "line_panels: no panels");
    let mut ranges = Vec::new();
    for (i, p) in panels.iter().enumerate() {
        ensure!(!p.series.is_empty(), "line_panels: panel {i} ({:?}) has no series", p.title);
        let all = || p.series.iter().flat_map(|(_, pts)| finite(pts));
        let x = span(all().map(|q| q[0]))
            .with_context(|| format!("line_panels: panel {i} ({:?}) has no finite points", p.title))?;
        let y = span(all().map(|q| q[1]))
            .with_context(|| format!("line_panels: panel {i} ({:?}) has no finite points", p.title))?;
        ranges.push((x, y));
    }
    figure(path, title, panels.len(), panel, |i, area| {
        let p = &panels[i];
        let (x, y) = ranges[i].clone();
        let mut chart = chart(area, &p.title, x, y, &p.x_label, &p.y_label, true)?;
        for (s, (name, pts)) in p.series.iter().enumerate() {
            let style = PALETTE[s % PALETTE.len()].stroke_width(2);
            let runs = pts.split(|q| !q.iter().all(|v| v.is_finite()));
            for (r, run) in runs.filter(|r| !r.is_empty()).enumerate() {
                chart.draw_series(run.iter().map(|q| Circle::new((q[0], q[1]), 4, style.filled())))?;
                let drawn = chart.draw_series(LineSeries::new(run.iter().map(|q| (q[0], q[1])), style))?;
                if r == 0 {
                    drawn.label(name).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
                }
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// The layout every figure shares: a white canvas, the title band, `n` panels of `panel` pixels
/// in rows of at most [`COLUMNS`], each drawn by `draw(index, area)`; then the PNG file.
fn figure(
    path: &Path,
    title: &str,
    n: usize,
    panel: (u32, u32),
    mut draw: impl FnMut(usize, &Area<'_>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let cols = n.clamp(1, COLUMNS);
    let rows = n.div_ceil(cols).max(1);
    let (w, h) = (panel.0 * cols as u32, panel.1 * rows as u32 + TITLE_H);
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (band, body) = root.split_vertically(TITLE_H);
        let style = TextStyle::from((FONT, TITLE_PX).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        band.draw_text(title, &style, (w as i32 / 2, TITLE_H as i32 / 2))?;
        for (i, area) in body.split_evenly((rows, cols)).iter().take(n).enumerate() {
            draw(i, area)?;
        }
        root.present()?;
    }
    write_png(path, (w, h), &rgb)
}

/// A Cartesian chart on `area` with labelled axes (and grid lines when `grid`).
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x: Range<f64>,
    y: Range<f64>,
    x_label: &str,
    y_label: &str,
    grid: bool,
) -> Result<Chart<'a, 'b>> {
    let (x_ticks, y_ticks) = (ticks(&x), ticks(&y));
    let mut builder = ChartBuilder::on(area);
    if !caption.is_empty() {
        builder.caption(caption, (FONT, CAPTION_PX));
    }
    let mut chart = builder.margin(12).x_label_area_size(48).y_label_area_size(64).build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_ticks)
        .y_label_formatter(&y_ticks)
        .label_style((FONT, TICK_PX))
        .axis_desc_style((FONT, DESC_PX))
        .light_line_style(WHITE);
    if !grid {
        mesh.disable_mesh();
    }
    mesh.draw()?;
    Ok(chart)
}

/// A vertical colour bar for `range`, its ticks and `label` on the right.
fn colour_bar(area: &Area<'_>, range: Range<f64>, label: &str) -> Result<()> {
    let (lo, hi, y_ticks) = (range.start, range.end, ticks(&range));
    let mut bar = ChartBuilder::on(area)
        .margin(12)
        .margin_left(4)
        .x_label_area_size(48)
        .set_label_area_size(LabelAreaPosition::Right, 70)
        .build_cartesian_2d(0.0..1.0, range)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(label)
        .y_label_formatter(&y_ticks)
        .label_style((FONT, TICK_PX))
        .axis_desc_style((FONT, DESC_PX))
        .draw()?;
    const STEPS: usize = 128;
    let step = (hi - lo) / STEPS as f64;
    bar.draw_series((0..STEPS).map(|k| {
        let y = lo + k as f64 * step;
        Rectangle::new([(0.0, y), (1.0, y + step)], viridis(k as f64 / (STEPS - 1) as f64).filled())
    }))?;
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, TICK_PX))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Registers the bundled font once, under the family name every style uses.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    ensure!(ok, "the bundled font assets/DejaVuSans.ttf could not be parsed");
    Ok(())
}

fn write_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish().with_context(|| format!("writing {}", path.display()))
}

/// The empirical CDF of `xs` (all finite) as a step path over `x`.
fn ecdf(xs: &[f64], x: &Range<f64>) -> Vec<(f64, f64)> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut path = vec![(x.start, 0.0)];
    for (k, &v) in sorted.iter().enumerate() {
        path.extend([(v, k as f64 / n), (v, (k + 1) as f64 / n)]);
    }
    path.push((x.end, 1.0));
    path
}

/// Tick labels for an axis over `range`: as many decimals as a tenth of its width needs (plotters
/// puts at most about ten ticks on an axis), and "0" never signed.
fn ticks(range: &Range<f64>) -> impl Fn(&f64) -> String {
    let decimals = (-((range.end - range.start) / 10.0).log10().floor()).clamp(0.0, 9.0) as usize;
    move |v| {
        let s = format!("{v:.decimals$}");
        match s.strip_prefix('-') {
            Some(unsigned) if unsigned.bytes().all(|b| b == b'0' || b == b'.') => unsigned.to_string(),
            _ => s,
        }
    }
}

fn finite<'a>(points: &'a [[f64; 2]]) -> impl Iterator<Item = &'a [f64; 2]> + 'a {
    points.iter().filter(|p| p.iter().all(|v| v.is_finite()))
}

/// The finite values' min and max, or `None` when there are none.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v)))))
}

/// An axis range holding the finite values, padded by 5% (a unit wide around a single value).
fn span(values: impl Iterator<Item = f64>) -> Option<Range<f64>> {
    let (lo, hi) = min_max(values)?;
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5_f64.max(0.05 * lo.abs()) };
    Some(lo - pad..hi + pad)
}

/// A colour range for heat-map values: their finite min and max, widened when they are equal.
fn value_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    match min_max(values) {
        Some((lo, hi)) if hi > lo => (lo, hi),
        Some((v, _)) => (v - 0.5, v + 0.5),
        None => (0.0, 1.0),
    }
}

fn viridis(t: f64) -> RGBColor {
    let s = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let k = (s as usize).min(VIRIDIS.len() - 2);
    let f = s - k as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (VIRIDIS[k], VIRIDIS[k + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes an RGB PNG: (width, height, pixels).
    fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
        let file = std::io::BufReader::new(File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let px = buf[..info.buffer_size()].chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        (info.width, info.height, px)
    }

    fn has(px: &[[u8; 3]], c: RGBColor) -> bool {
        px.contains(&[c.0, c.1, c.2])
    }

    /// Decodes `path`, checks its size and that it is not blank; returns the pixels.
    fn check(path: &Path, size: (u32, u32)) -> Vec<[u8; 3]> {
        let (w, h, px) = decode(path);
        assert_eq!((w, h), size);
        let inked = px.iter().filter(|p| **p != [255; 3]).count();
        assert!(inked > px.len() / 100, "{} of {} pixels drawn", inked, px.len());
        px
    }

    fn cdf_input() -> Vec<CdfPanel> {
        (0..4)
            .map(|i| CdfPanel {
                title: format!("source state {i}"),
                predicted: (0..32).map(|k| (k as f64 * 0.37 + i as f64).sin() * 2.0 + 10.0).collect(),
                reference: (0..200).map(|k| (k as f64 * 0.11).cos() * 2.2 + 10.1).collect(),
            })
            .collect()
    }

    fn heat_input(nan: bool) -> Vec<HeatPanel> {
        let (nx, ny) = (24, 16);
        (0..3)
            .map(|c| HeatPanel {
                title: format!("cell {c}"),
                values: (0..nx * ny)
                    .map(|k| {
                        let (x, y) = ((k % nx) as f64 / nx as f64, (k / nx) as f64 / ny as f64);
                        let r = (-((x - 0.3 * c as f64 - 0.2).powi(2) + (y - 0.5).powi(2)) * 20.0).exp();
                        if nan && k % 37 == 0 {
                            f64::NAN
                        } else {
                            r * (c + 1) as f64 * 5.0
                        }
                    })
                    .collect(),
                nx,
                ny,
                extent: [0.0, 1.5, 0.0, 1.0],
                walls: vec![[[0.6, 0.0], [0.6, 0.8]]],
                marker: Some([0.3, 0.5]),
            })
            .collect()
    }

    fn state_input() -> (Vec<[f64; 2]>, Vec<Vec<[f64; 2]>>) {
        let background = (0..2000)
            .map(|k| {
                let t = k as f64 * 0.013;
                [t.cos() * (1.0 + 0.1 * (k as f64).sin()), t.sin() * 0.7]
            })
            .chain([[f64::NAN, 0.0], [0.0, f64::INFINITY]])
            .collect();
        let atoms = (0..10)
            .map(|a| {
                (0..40)
                    .map(|k| {
                        let (ang, r) = (a as f64 * 0.6, 0.05 * ((k * 7 % 11) as f64 / 11.0));
                        [ang.cos() * 0.8 + r * (k as f64).cos(), ang.sin() * 0.5 + r * (k as f64).sin()]
                    })
                    .collect()
            })
            .collect();
        (background, atoms)
    }

    fn lines_input() -> Vec<(String, Vec<[f64; 2]>)> {
        let curve = |s: f64| (0..200).map(move |k| [k as f64 * 50.0, s * (-(k as f64) / 40.0).exp() + 0.1]);
        vec![
            ("outer MMD".into(), curve(1.0).collect()),
            (
                "inner MMD".into(),
                curve(0.5).enumerate().map(|(k, p)| if k == 90 { [p[0], f64::NAN] } else { p }).collect(),
            ),
        ]
    }

    #[test]
    fn cdf_panels_draws_both_series_and_the_title() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        cdf_panels(&a, "Return distributions", "return", &cdf_input()).unwrap();
        cdf_panels(&b, "", "return", &cdf_input()).unwrap();
        let size = (3 * PANEL.0, 2 * PANEL.1 + TITLE_H);
        let (pa, pb) = (check(&a, size), check(&b, size));
        assert!(has(&pa, PREDICTED) && has(&pa, REFERENCE));
        let band = (size.0 * TITLE_H) as usize;
        assert_ne!(pa[..band], pb[..band], "the title's text was not drawn");
        assert!(pb[..band].iter().all(|p| *p == [255; 3]));
    }

    #[test]
    fn cdf_panels_rejects_bad_input() {
        let p = |path: &Path, panels: &[CdfPanel]| cdf_panels(path, "t", "return", panels).unwrap_err().to_string();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        assert!(p(&path, &[]).contains("no panels"));
        let mut panels = cdf_input();
        panels[1].predicted.clear();
        assert!(p(&path, &panels).contains("panel 1") && p(&path, &panels).contains("predicted is empty"));
        let mut panels = cdf_input();
        panels[2].reference[5] = f64::NAN;
        assert!(p(&path, &panels).contains("reference[5] is NaN"), "{}", p(&path, &panels));
        assert!(!path.exists());
    }

    #[test]
    fn state_samples_draws_dataset_atoms_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.png");
        let (background, atoms) = state_input();
        state_samples(&path, "Samples from s₀", "x (m)", "y (m)", &background, &atoms, [0.1, -0.2]).unwrap();
        let px = check(&path, (2 * (PANEL.0 + 60), PANEL.1 + 60 + TITLE_H));
        for c in [DATASET, RED, PALETTE[0], PALETTE[7], PALETTE[1]] {
            assert!(has(&px, c), "{c:?} not drawn");
        }
    }

    #[test]
    fn state_samples_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.png");
        let (background, atoms) = state_input();
        let e = |bg: &[[f64; 2]], at: &[Vec<[f64; 2]>], s| {
            state_samples(&path, "t", "x", "y", bg, at, s).unwrap_err().to_string()
        };
        assert!(e(&[], &atoms, [0.0; 2]).contains("background is empty"));
        assert!(e(&background, &[], [0.0; 2]).contains("no atom samples"));
        assert!(e(&background, &[vec![]], [0.0; 2]).contains("no atom samples"));
        assert!(e(&background, &atoms, [f64::NAN, 0.0]).contains("source"));
        // Only non-finite samples: they are skipped, and the source alone sets the axes.
        state_samples(&path, "t", "x", "y", &[[f64::NAN; 2]], &[vec![[f64::INFINITY; 2]]], [0.0; 2]).unwrap();
    }

    #[test]
    fn heat_maps_draws_cells_nan_white_and_colour_bars() {
        let dir = tempfile::tempdir().unwrap();
        for shared in [false, true] {
            let path = dir.path().join(format!("h{shared}.png"));
            heat_maps(&path, "Rate maps", &heat_input(true), "rate (Hz)", shared).unwrap();
            let px = check(&path, (3 * (PANEL.0 + BAR_W), PANEL.1 + TITLE_H));
            let (lo, hi) = (VIRIDIS[0], VIRIDIS[7]);
            assert!(has(&px, RGBColor(lo.0, lo.1, lo.2)) && has(&px, RGBColor(hi.0, hi.1, hi.2)));
        }
        // A constant map and an all-NaN map have a range to draw with.
        let mut panels = heat_input(false);
        panels[0].values.fill(2.0);
        panels[1].values.fill(f64::NAN);
        heat_maps(&dir.path().join("c.png"), "", &panels[..2], "rate (Hz)", false).unwrap();
    }

    #[test]
    fn heat_maps_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let e = |panels: &[HeatPanel]| {
            heat_maps(&dir.path().join("h.png"), "t", panels, "rate", false).unwrap_err().to_string()
        };
        assert!(e(&[]).contains("no panels"));
        let mut panels = heat_input(false);
        panels[1].values.pop();
        assert!(e(&panels).contains("panel 1") && e(&panels).contains("383 values for a 16 × 24 grid"));
        let mut panels = heat_input(false);
        panels[2].extent = [1.0, 0.0, 0.0, 1.0];
        assert!(e(&panels).contains("panel 2") && e(&panels).contains("extent"));
        let mut panels = heat_input(false);
        (panels[0].nx, panels[0].values) = (0, vec![]);
        assert!(e(&panels).contains("grid is 16 × 0"));
    }

    #[test]
    fn lines_draws_series_and_skips_non_finite_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.png");
        lines(&path, "Learning curves", "step", "loss", &lines_input()).unwrap();
        let px = check(&path, (PANEL.0 * 3 / 2, PANEL.1 * 3 / 2 + TITLE_H));
        assert!(has(&px, PALETTE[0]) && has(&px, PALETTE[1]));
        let e = |s: &[(String, Vec<[f64; 2]>)]| lines(&path, "t", "x", "y", s).unwrap_err().to_string();
        assert!(e(&[]).contains("no series"));
        assert!(e(&[("a".into(), vec![[f64::NAN, 1.0]])]).contains("no finite points"));
    }

    #[test]
    fn tick_labels_follow_the_axis_width() {
        let f = |r: Range<f64>, v: f64| ticks(&r)(&v);
        assert_eq!(f(0.0..1.0, 0.5), "0.5");
        assert_eq!(f(-1.2..1.2, -1e-17), "0.0");
        assert_eq!(f(0.0..10_000.0, 2000.0), "2000");
        assert_eq!(f(0.0..0.002, 0.0015), "0.0015");
        assert_eq!(f(7.7..12.5, -8.0), "-8.0");
    }

    /// Renders one example of each figure into /tmp/plot-examples, to look at:
    /// `cargo test --release -p learner --lib eval::plot -- --ignored`.
    #[test]
    #[ignore]
    fn render_examples() {
        let dir = Path::new("/tmp/plot-examples");
        std::fs::create_dir_all(dir).unwrap();
        cdf_panels(&dir.join("cdf.png"), "Return distributions from four source states", "return", &cdf_input())
            .unwrap();
        let (background, atoms) = state_input();
        state_samples(
            &dir.join("states.png"),
            "Generated states from θ = 0.10 rad, θ̇ = -0.2 rad/s (step 12000)",
            "θ mod 2π (rad)",
            "θ̇ (rad/s)",
            &background,
            &atoms,
            [0.1, -0.2],
        )
        .unwrap();
        heat_maps(&dir.join("heat.png"), "Place-cell rate maps", &heat_input(true), "rate (Hz)", false).unwrap();
        heat_maps(
            &dir.join("heat-shared.png"),
            "Place-cell rate maps (shared range)",
            &heat_input(true),
            "rate (Hz)",
            true,
        )
        .unwrap();
        lines(&dir.join("lines.png"), "Learning curves", "step", "loss", &lines_input()).unwrap();
    }
}
