//! The names an app in a pod uses for a Service, as cluster DNS answers
//! them: `name` and `name.namespace` (through the pod's search path),
//! `name.namespace.svc`, and `name.namespace.svc.<cluster domain>`, each
//! with or without `:port`.

use std::fmt;

/// One Service port to follow: the Service, and the port the app dialled
/// (`None`: the Service's first port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// A name that is no Service's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} has a port that is not a number from 1 to 65535")]
    Port(String),
    #[error(
        "{0:?} is not a Kubernetes Service name (name, name.namespace, name.namespace.svc or name.namespace.svc.{1})"
    )]
    Shape(String, String),
    #[error("{0:?} is not a DNS label (lowercase letters, digits, '-', at most 63)")]
    Label(String),
}

/// The Service `authority` names, for an app in `context_namespace`.
pub fn parse(
    authority: &str,
    context_namespace: &str,
    cluster_domain: &str,
) -> Result<Target, NameError> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| NameError::Port(authority.to_owned()))?;
            (host, Some(port))
        }
        None => (authority, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let shape = || NameError::Shape(authority.to_owned(), cluster_domain.to_owned());
    let (name, namespace) = match labels.as_slice() {
        [name] => (*name, context_namespace),
        [name, namespace] | [name, namespace, "svc"] => (*name, *namespace),
        [name, namespace, "svc", domain @ ..] if domain.join(".") == cluster_domain => {
            (*name, *namespace)
        }
        _ => return Err(shape()),
    };
    for label in [name, namespace] {
        check_label(label)?;
    }
    Ok(Target {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port,
    })
}

/// The fully qualified name of a Service port, as [`parse`] reads it back.
pub fn qualified(namespace: &str, name: &str, cluster_domain: &str, port: u16) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}:{port}")
}

fn check_label(label: &str) -> Result<(), NameError> {
    let valid = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(NameError::Label(label.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(namespace: &str, name: &str, port: Option<u16>) -> Target {
        Target {
            namespace: namespace.into(),
            name: name.into(),
            port,
        }
    }

    #[test]
    fn every_name_an_app_uses_means_the_same_service() {
        let parse = |name| parse(name, "stocks", "cluster.local");
        for name in [
            "stockdata",
            "stockdata.stocks",
            "stockdata.stocks.svc",
            "stockdata.stocks.svc.cluster.local",
            "stockdata.stocks.svc.cluster.local.",
            "StockData.Stocks",
        ] {
            assert_eq!(
                parse(name),
                Ok(target("stocks", "stockdata", None)),
                "{name}"
            );
        }
        assert_eq!(
            parse("stockdata:8080"),
            Ok(target("stocks", "stockdata", Some(8080)))
        );
        assert_eq!(
            parse("stockdata.other.svc.cluster.local:80"),
            Ok(target("other", "stockdata", Some(80)))
        );
    }

    #[test]
    fn other_names_are_refused_with_the_reason() {
        let parse = |name| parse(name, "stocks", "cluster.local");
        assert!(matches!(parse("stockdata:0"), Err(NameError::Port(_))));
        assert!(matches!(parse("stockdata:http"), Err(NameError::Port(_))));
        assert!(matches!(
            parse("stockdata.stocks.svc.other.domain"),
            Err(NameError::Shape(..))
        ));
        assert!(matches!(parse("a.b.c"), Err(NameError::Shape(..))));
        assert!(matches!(parse("stock_data"), Err(NameError::Label(_))));
        assert!(matches!(parse(""), Err(NameError::Label(_))));
        assert!(matches!(parse("10.96.0.10:80"), Err(NameError::Shape(..))));
    }

    #[test]
    fn a_qualified_name_parses_back() {
        let name = qualified("stocks", "stockdata", "cluster.local", 80);
        assert_eq!(name, "stockdata.stocks.svc.cluster.local:80");
        assert_eq!(
            parse(&name, "elsewhere", "cluster.local"),
            Ok(target("stocks", "stockdata", Some(80)))
        );
    }
}
