//! History charts: after each scrape round, each workload's requests per
//! second, success rate and p99, and each replica's requests served per
//! second, over the last few scrapes; kept for `--history` (15 minutes) and
//! drawn as small server-rendered SVG line charts, so that a kill or a
//! slow-down shows as a step.
//!
//! Bounded: one point per round, at most [`MAX_WORKLOADS`] workloads and
//! [`MAX_REPLICAS`] replicas per point (names shared between points), so the
//! store holds at most `--history / --scrape-interval` points of a fixed
//! size whatever the proxies do.

use crate::{
    scrape::History,
    views::{self, Window},
};
use serde::Serialize;
use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

/// Workloads and replicas charted per point, at most.
pub const MAX_WORKLOADS: usize = 64;
pub const MAX_REPLICAS: usize = 256;

/// Each point's figures are rates over this much of the latest scrapes (or
/// two scrapes, when longer): short, so a change shows within seconds.
const RATE_OVER: Duration = Duration::from_secs(10);

/// One round's figures.
#[derive(Debug, Clone)]
struct Point {
    at: Instant,
    workloads: Vec<(Arc<str>, WorkloadPoint)>,
    /// `(service, instance)` and what it served, per second.
    replicas: Vec<(Replica, f32)>,
}

/// A replica: its service and instance.
type Replica = (Arc<str>, Arc<str>);

#[derive(Debug, Clone, Copy)]
struct WorkloadPoint {
    rps: f32,
    success: Option<f32>,
    p99_ms: Option<f32>,
}

/// The points of the last `keep`, oldest first.
#[derive(Debug)]
pub struct Trends {
    keep: Duration,
    interval: Duration,
    points: VecDeque<Point>,
    /// One copy of each name.
    names: BTreeMap<String, Arc<str>>,
}

impl Trends {
    pub fn new(keep: Duration, interval: Duration) -> Self {
        Self {
            keep,
            interval,
            points: VecDeque::new(),
            names: BTreeMap::new(),
        }
    }

    /// How long the charts span.
    pub fn span(&self) -> Duration {
        self.keep
    }

    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = name.into();
        self.names.insert(name.to_owned(), shared.clone());
        shared
    }

    /// Adds the latest round's point, computed from `history`, and forgets
    /// points (and names) older than the span.
    pub fn record(&mut self, history: &History) {
        let rate_over = RATE_OVER.max(self.interval * 2);
        let Some(window) = Window::new(history, rate_over) else {
            return;
        };
        let at = window.latest().at;
        let overview = views::overview(&window);
        let workloads: Vec<(Arc<str>, WorkloadPoint)> = overview
            .workloads
            .iter()
            .take(MAX_WORKLOADS)
            .map(|row| {
                let point = WorkloadPoint {
                    rps: row.golden.rps as f32,
                    success: row.golden.success_rate.map(|r| r as f32),
                    p99_ms: row.golden.p99_ms.map(|p| p as f32),
                };
                (self.name(&row.workload), point)
            })
            .collect();
        let servers = views::servers(&window);
        let seconds = window.seconds.max(f64::EPSILON);
        let mut replicas = Vec::new();
        for service in &servers.services {
            for replica in &service.replicas {
                if replicas.len() == MAX_REPLICAS {
                    break;
                }
                let key = (self.name(&service.service), self.name(&replica.instance));
                replicas.push((key, (replica.served / seconds) as f32));
            }
        }
        self.points.push_back(Point {
            at,
            workloads,
            replicas,
        });
        while self
            .points
            .front()
            .is_some_and(|p| at.duration_since(p.at) > self.keep)
        {
            self.points.pop_front();
        }
        if self.names.len() > 4 * (MAX_WORKLOADS + MAX_REPLICAS) {
            // Names no point uses any more go (an Arc held only here).
            self.names.retain(|_, shared| Arc::strong_count(shared) > 1);
        }
    }

    fn series(&self, value: impl Fn(&Point) -> Option<f64>) -> Vec<(Duration, Option<f64>)> {
        let Some(latest) = self.points.back() else {
            return Vec::new();
        };
        self.points
            .iter()
            .map(|p| (latest.at.duration_since(p.at), value(p)))
            .collect()
    }

    fn workload(
        &self,
        workload: &str,
        figure: impl Fn(&WorkloadPoint) -> Option<f64>,
    ) -> Vec<(Duration, Option<f64>)> {
        self.series(|p| {
            p.workloads
                .iter()
                .find(|(name, _)| &**name == workload)
                .and_then(|(_, point)| figure(point))
        })
    }

    /// A workload's requests per second over the span.
    pub fn rps(&self, workload: &str) -> Chart {
        Chart::draw(
            &self.workload(workload, |p| Some(f64::from(p.rps))),
            self.keep,
        )
    }

    /// A workload's success rate (0 to 1) over the span, drawn against 1.
    pub fn success(&self, workload: &str) -> Chart {
        let series = self.workload(workload, |p| p.success.map(f64::from));
        Chart::draw_to(&series, self.keep, 1.0)
    }

    /// A workload's p99 latency in milliseconds over the span.
    pub fn p99(&self, workload: &str) -> Chart {
        Chart::draw(
            &self.workload(workload, |p| p.p99_ms.map(f64::from)),
            self.keep,
        )
    }

    /// What a replica served per second over the span (0 while it was not
    /// listed).
    pub fn served(&self, service: &str, instance: &str) -> Chart {
        let series = self.series(|p| {
            Some(
                p.replicas
                    .iter()
                    .find(|((s, i), _)| &**s == service && &**i == instance)
                    .map_or(0.0, |(_, rps)| f64::from(*rps)),
            )
        });
        Chart::draw(&series, self.keep)
    }
}

/// A small line chart, ready for a template's `<svg>`.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub width: u32,
    pub height: u32,
    /// `polyline` point lists, one per stretch without gaps.
    pub lines: Vec<String>,
    /// The largest value drawn (the top of the chart), and the latest.
    pub peak: f64,
    pub last: Option<f64>,
    /// How many points, over how long.
    pub points: usize,
    pub span_seconds: f64,
}

impl Chart {
    const WIDTH: u32 = 120;
    const HEIGHT: u32 = 28;

    /// `series` is (age, value) oldest first; the chart spans `span`.
    fn draw(series: &[(Duration, Option<f64>)], span: Duration) -> Self {
        let peak = series
            .iter()
            .filter_map(|(_, v)| *v)
            .fold(0.0_f64, f64::max);
        Self::draw_to(series, span, peak)
    }

    /// Drawn over what there is: the span, or less while the history is
    /// younger than that.
    fn draw_to(series: &[(Duration, Option<f64>)], span: Duration, top: f64) -> Self {
        let (w, h) = (f64::from(Self::WIDTH), f64::from(Self::HEIGHT));
        let oldest = series.first().map_or(span, |(age, _)| *age);
        let span_seconds = oldest.min(span).as_secs_f64().max(1.0);
        let mut lines = Vec::new();
        let mut current = String::new();
        for (age, value) in series {
            match value {
                Some(value) => {
                    let x = w - (age.as_secs_f64() / span_seconds * w).min(w);
                    // A flat series sits on the bottom line.
                    let y = if top > 0.0 {
                        h - 1.0 - (value / top) * (h - 2.0)
                    } else {
                        h - 1.0
                    };
                    if !current.is_empty() {
                        current.push(' ');
                    }
                    current.push_str(&format!("{x:.1},{y:.1}"));
                }
                None if !current.is_empty() => lines.push(std::mem::take(&mut current)),
                None => {}
            }
        }
        if !current.is_empty() {
            lines.push(current);
        }
        Self {
            width: Self::WIDTH,
            height: Self::HEIGHT,
            lines,
            peak: top,
            last: series.last().and_then(|(_, v)| *v),
            points: series.len(),
            span_seconds,
        }
    }

    /// The chart as inline SVG, titled with its summary (`what`, in
    /// `unit`), its latest and peak values in `data-` attributes.
    pub fn svg(&self, what: &str, unit: &str) -> String {
        let mut svg = format!(
            r#"<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" data-last="{last}" data-peak="{peak}" data-points="{points}"><title>{title}</title><line class="base" x1="0" y1="{base}" x2="{w}" y2="{base}"/>"#,
            w = self.width,
            h = self.height,
            last = self.last.map_or(String::new(), |v| v.to_string()),
            peak = self.peak,
            points = self.points,
            title = escape(&self.describe(what, unit)),
            base = self.height - 1,
        );
        for line in &self.lines {
            svg.push_str(&format!(r#"<polyline points="{line}"/>"#));
        }
        svg.push_str("</svg>");
        svg
    }

    /// The chart's summary, for its `<title>`: never a picture alone.
    pub fn describe(&self, what: &str, unit: &str) -> String {
        let span = if self.span_seconds >= 120.0 {
            format!("{:.0} min", self.span_seconds / 60.0)
        } else {
            format!("{:.0} s", self.span_seconds)
        };
        match self.last {
            None => format!("{what}: no data in the last {span}"),
            Some(last) => format!(
                "{what} over the last {span}: now {last:.2}{unit}, peak {:.2}{unit}",
                self.peak
            ),
        }
    }
}

/// Text made safe inside an element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_down_shows_at_the_right_end() {
        let span = Duration::from_secs(100);
        let series: Vec<(Duration, Option<f64>)> = (0..=10)
            .rev()
            .map(|i| {
                let age = Duration::from_secs(i * 10);
                (age, Some(if i > 3 { 20.0 } else { 0.0 }))
            })
            .collect();
        let chart = Chart::draw(&series, span);
        assert_eq!((chart.peak, chart.last), (20.0, Some(0.0)));
        assert_eq!(chart.lines.len(), 1);
        let points: Vec<(f64, f64)> = chart.lines[0]
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(
            points.first().unwrap(),
            &(0.0, 1.0),
            "oldest left, at the top"
        );
        assert_eq!(
            points.last().unwrap(),
            &(120.0, 27.0),
            "newest right, at the bottom"
        );
        assert!(
            chart
                .describe("served", " rps")
                .contains("now 0.00 rps, peak 20.00 rps")
        );
        let svg = chart.svg("<served>", " rps");
        assert!(svg.contains(r#"data-last="0" data-peak="20""#), "{svg}");
        assert!(
            svg.contains("<title>&lt;served&gt; over the last 100 s"),
            "{svg}"
        );
        // A history younger than the span is drawn over what there is.
        let young = Chart::draw(&series[5..], Duration::from_secs(900));
        assert_eq!(young.span_seconds, 50.0);
        assert!(young.lines[0].starts_with("0.0,"), "{:?}", young.lines);
    }

    #[test]
    fn gaps_break_the_line() {
        let s = |age, v| (Duration::from_secs(age), v);
        let chart = Chart::draw(
            &[
                s(30, Some(1.0)),
                s(20, None),
                s(10, Some(2.0)),
                s(0, Some(3.0)),
            ],
            Duration::from_secs(30),
        );
        assert_eq!(chart.lines.len(), 2, "{:?}", chart.lines);
        assert_eq!(chart.last, Some(3.0));
    }
}
