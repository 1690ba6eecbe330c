//! Parsing the Prometheus / OpenMetrics text the proxies expose. Only what
//! the dashboard reads: `name{labels} value` lines; comments and `# EOF` are
//! skipped, and a line that does not parse is skipped and counted, never
//! fatal (a proxy's output is a peer's input).

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Parses `text`; returns the samples and how many lines were unreadable.
pub fn parse(text: &str) -> (Vec<Sample>, usize) {
    let mut samples = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(sample) => samples.push(sample),
            None => bad += 1,
        }
    }
    (samples, bad)
}

fn parse_line(line: &str) -> Option<Sample> {
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
        Some((name, body)) => (name, parse_labels(body.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(body: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
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
        labels.insert(key.trim().to_owned(), value);
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
        assert_eq!(samples[0].name, "mesh_requests_total");
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
    fn garbage_is_skipped_and_counted() {
        let (samples, bad) = parse("ok 1\n{}{} 2\nname{a=\"1\" 3\nname x\nbad-name 4\n");
        assert_eq!(samples.len(), 1);
        assert_eq!(bad, 4);
    }
}
