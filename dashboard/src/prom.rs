//! Parsing the Prometheus / OpenMetrics text the proxies expose. Only what
//! the dashboard reads: `name{labels} value` lines; comments and `# EOF` are
//! skipped, and a line that does not parse is skipped and counted, never
//! fatal (a proxy's output is a peer's input).

use std::{collections::HashSet, sync::Arc};

/// A sample's labels, sorted by name. They are shared (see [`Interner`]):
/// the dashboard keeps a window of every proxy's samples, and the same
/// series come back in every scrape, so a sample kept costs its pointers
/// and value, and each series' labels are held once.
pub type Labels = Arc<[(Arc<str>, Arc<str>)]>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: Arc<str>,
    pub labels: Labels,
    pub value: f64,
}

/// One copy of each metric name, label name, label value and label set
/// seen lately.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    label_sets: HashSet<Labels>,
}

impl Interner {
    /// Past this many strings (or label sets) a set starts over, so that
    /// values that never come back (random labels) are not kept for ever;
    /// samples keep their own references.
    const MAX: usize = 100_000;

    pub fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        if self.strings.len() >= Self::MAX {
            self.strings.clear();
        }
        let shared: Arc<str> = text.into();
        self.strings.insert(shared.clone());
        shared
    }

    fn intern_labels(&mut self, labels: Vec<(Arc<str>, Arc<str>)>) -> Labels {
        if let Some(shared) = self.label_sets.get(labels.as_slice()) {
            return shared.clone();
        }
        if self.label_sets.len() >= Self::MAX {
            self.label_sets.clear();
        }
        let shared: Labels = labels.into();
        self.label_sets.insert(shared.clone());
        shared
    }
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| &**key == name)
            .map(|(_, value)| &**value)
    }
}

/// Parses `text`; returns the samples and how many lines were unreadable.
pub fn parse(text: &str) -> (Vec<Sample>, usize) {
    parse_limited(text, usize::MAX, &|_| true, &mut Interner::default())
        .expect("no limit on the number of series is ever passed")
}

/// [`parse`], keeping only the samples whose metric name `keep` accepts (a
/// line that is not kept is not parsed further), and refusing text with
/// more than `max_series` samples in all: a proxy's output is a peer's
/// input, and its size must not decide the dashboard's.
pub fn parse_limited(
    text: &str,
    max_series: usize,
    keep: &dyn Fn(&str) -> bool,
    strings: &mut Interner,
) -> Result<(Vec<Sample>, usize), String> {
    let mut samples = Vec::new();
    let mut bad = 0;
    let mut series = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        series += 1;
        if series > max_series {
            return Err(format!("more than {max_series} series: not read"));
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if !keep(&line[..name_end]) {
            continue;
        }
        match parse_line(line, strings) {
            Some(sample) => samples.push(sample),
            None => bad += 1,
        }
    }
    Ok((samples, bad))
}

fn parse_line(line: &str, strings: &mut Interner) -> Option<Sample> {
    let (series, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], line[close + 1..].trim())
        }
        None => line.split_once(' ').map(|(s, r)| (s, r.trim()))?,
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, body)) => (name, parse_labels(body.strip_suffix('}')?, strings)?),
        None => (series, strings.intern_labels(Vec::new())),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    Some(Sample {
        name: strings.intern(name),
        labels,
        value,
    })
}

fn parse_labels(body: &str, strings: &mut Interner) -> Option<Labels> {
    let mut labels: Vec<(Arc<str>, Arc<str>)> = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            // Stable: of two labels with one name, the first stays.
            labels.sort_by(|a, b| a.0.cmp(&b.0));
            labels.dedup_by(|later, earlier| later.0 == earlier.0);
            return Some(strings.intern_labels(labels));
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        chars.next()?; // '='
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((strings.intern(key.trim()), strings.intern(&value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_from_the_proxy() {
        let text = r#"# HELP mesh_requests Requests proxied.
# TYPE mesh_requests counter
mesh_requests_total{direction="outbound",target="stockdata",endpoint="127.0.0.1:1"} 42
mesh_response_latency_seconds_bucket{le="+Inf",direction="outbound"} 7
plain_gauge 1.5e3
# EOF
"#;
        let (samples, bad) = parse(text);
        assert_eq!(bad, 0);
        assert_eq!(samples.len(), 3);
        assert_eq!(&*samples[0].name, "mesh_requests_total");
        assert_eq!(samples[0].label("endpoint"), Some("127.0.0.1:1"));
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].label("le"), Some("+Inf"));
        assert_eq!(samples[2].value, 1500.0);
    }

    #[test]
    fn escapes_and_commas_inside_values() {
        let (samples, _) = parse(r#"m{a="x,\"y\"",b="line\nnext"} 1"#);
        assert_eq!(samples[0].label("a"), Some(r#"x,"y""#));
        assert_eq!(samples[0].label("b"), Some("line\nnext"));
    }

    #[test]
    fn limited_parsing_keeps_what_is_asked_and_refuses_too_many_series() {
        let text = "keep{a=\"1\"} 1\ndrop{a=\"1\"} 2\n# comment\nkeep 3\n";
        let strings = &mut Interner::default();
        let (samples, bad) = parse_limited(text, 3, &|name| name == "keep", strings).unwrap();
        assert!(
            Arc::ptr_eq(&samples[0].name, &samples[1].name),
            "names shared"
        );
        let again = parse_limited(text, 3, &|name| name == "keep", strings)
            .unwrap()
            .0;
        assert!(
            Arc::ptr_eq(&samples[0].labels, &again[0].labels),
            "label sets shared"
        );
        assert_eq!((samples.len(), bad), (2, 0));
        assert_eq!(samples[0].label("a"), Some("1"));
        assert_eq!(
            parse_limited(text, 2, &|_| true, strings).unwrap_err(),
            "more than 2 series: not read"
        );
    }

    #[test]
    fn labels_are_sorted_and_the_first_of_a_name_counts() {
        let (samples, _) = parse(r#"m{b="2",a="3",a="1"} 1"#);
        let labels: Vec<(&str, &str)> = samples[0]
            .labels
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect();
        assert_eq!(labels, [("a", "3"), ("b", "2")]);
    }

    #[test]
    fn garbage_is_skipped_and_counted() {
        let (samples, bad) = parse("ok 1\n{}{} 2\nname{a=\"1\" 3\nname x\nbad-name 4\n");
        assert_eq!(samples.len(), 1);
        assert_eq!(bad, 4);
    }
}
