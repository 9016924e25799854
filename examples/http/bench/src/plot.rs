//! The picture: one column per way of updating, three rows per rate: wrk's requests per
//! second, wrk's p50 and p99 per second, and how long the probe went without an answer, per
//! 10 ms, with its failed requests: what a second hides. Each update is marked.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::server::Way;
use crate::wrk::Rate;
use crate::Scenario;

const SWAP: RGBColor = RGBColor(0, 140, 70);
const RESTART: RGBColor = RGBColor(200, 30, 30);
const P50: RGBColor = RGBColor(40, 90, 200);
const P99: RGBColor = RGBColor(230, 120, 0);

/// Draws every scenario into an SVG at `path`.
pub fn draw(
    path: &Path,
    scenarios: &[Scenario],
    rates: &[Rate],
) -> Result<(), Box<dyn std::error::Error>> {
    let rows = 3 * rates.len();
    let root = SVGBackend::new(path, (1500, 300 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, Way::ALL.len()));
    for (r, rate) in rates.iter().enumerate() {
        let of_rate: Vec<&Scenario> = scenarios.iter().filter(|s| s.rate == *rate).collect();
        let xmax = of_rate
            .iter()
            .flat_map(|s| s.rows.last().map(|r| r.end))
            .fold(1.0, f64::max);
        let top_rate = of_rate
            .iter()
            .flat_map(|s| s.rows.iter().map(|r| r.wrk.rate()))
            .fold(1.0, f64::max)
            * 1.15;
        let top_latency = of_rate
            .iter()
            .flat_map(|s| s.rows.iter().map(|r| r.wrk.p99))
            .fold(100.0, f64::max)
            * 3.0;
        for (c, way) in Way::ALL.iter().enumerate() {
            let Some(s) = of_rate.iter().find(|s| s.way == *way) else {
                continue;
            };
            let mark = if *way == Way::Swap { SWAP } else { RESTART };
            let mid = |r: &crate::Row| (r.start + r.end) / 2.0;

            let area = &panels[(3 * r) * Way::ALL.len() + c];
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{}, {}: requests/s", way.name(), rate.short()),
                    ("sans-serif", 16),
                )
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..xmax, 0f64..top_rate)?;
            chart
                .configure_mesh()
                .x_desc("s")
                .y_label_formatter(&|v| format!("{:.0}k", v / 1e3))
                .draw()?;
            mark_updates(&mut chart, &s.updates, 0.0, top_rate, mark)?;
            chart.draw_series(LineSeries::new(
                s.rows.iter().map(|r| (mid(r), r.wrk.rate())),
                BLACK.stroke_width(2),
            ))?;

            let area = &panels[(3 * r + 1) * Way::ALL.len() + c];
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{}, {}: p50, p99 (µs)", way.name(), rate.short()),
                    ("sans-serif", 16),
                )
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..xmax, (10f64..top_latency).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("s")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            mark_updates(&mut chart, &s.updates, 10.0, top_latency, mark)?;
            chart
                .draw_series(LineSeries::new(
                    s.rows.iter().map(|r| (mid(r), r.wrk.p50.max(10.0))),
                    P50.stroke_width(2),
                ))?
                .label("p50")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], P50.stroke_width(2)));
            chart
                .draw_series(LineSeries::new(
                    s.rows.iter().map(|r| (mid(r), r.wrk.p99.max(10.0))),
                    P99.stroke_width(2),
                ))?
                .label("p99")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], P99.stroke_width(2)));
            legend(&mut chart)?;

            let area = &panels[(3 * r + 2) * Way::ALL.len() + c];
            probe_panel(area, s, rate, xmax, mark)?;
        }
    }
    root.present()?;
    Ok(())
}

/// How long the probe went without an answer: per 10 ms, the longest wait from one
/// successful answer to the next (about 1 ms while all is well, the gap during an outage),
/// and its failed requests as red marks along the top.
fn probe_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    s: &Scenario,
    rate: &Rate,
    xmax: f64,
    mark: RGBColor,
) -> Result<(), Box<dyn std::error::Error>> {
    let bucket = 0.01;
    let mut longest: Vec<f64> = vec![0.0; (xmax / bucket) as usize + 1];
    let mut failed = vec![];
    let mut last = None;
    for p in &s.probes {
        let at = p.done.as_secs_f64();
        if !p.ok {
            failed.push(at);
            continue;
        }
        if let (Some(last), Some(b)) = (last, longest.get_mut((at / bucket) as usize)) {
            *b = f64::max(*b, (at - last) * 1e3);
        }
        last = Some(at);
    }
    let top = 1000.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}, {}: probe, ms without an answer",
                s.way.name(),
                rate.short()
            ),
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, (0.1f64..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    mark_updates(&mut chart, &s.updates, 0.1, top, mark)?;
    chart.draw_series(LineSeries::new(
        longest
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0.0)
            .map(|(i, v)| ((i as f64 + 0.5) * bucket, v.max(0.1))),
        P50.stroke_width(1),
    ))?;
    chart
        .draw_series(
            failed
                .iter()
                .map(|&at| Circle::new((at, 150.0), 2, RESTART.filled())),
        )?
        .label("failed probe")
        .legend(|(x, y)| Circle::new((x + 8, y), 3, RESTART.filled()));
    if !failed.is_empty() {
        legend(&mut chart)?;
    }
    Ok(())
}

type Chart<'a, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>;
type DrawResult =
    Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;

/// A vertical line at each update, from `low` to `high`.
fn mark_updates<Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, Y>,
    updates: &[crate::Update],
    low: f64,
    high: f64,
    color: RGBColor,
) -> DrawResult {
    for u in updates {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(u.at, low), (u.at, high)],
            color.mix(0.35),
        )))?;
    }
    Ok(())
}

/// The chart's legend, top left.
fn legend<Y: Ranged<ValueType = f64>>(chart: &mut Chart<'_, Y>) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}
