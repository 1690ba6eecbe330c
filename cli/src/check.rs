//! `meshctl check` (and `--pre`), like `linkerd check`: is the cluster
//! ready for the mesh, and is the installed mesh healthy? One line per
//! check, ✔ passed, ‼ warning, × failure, each failure with a hint and the
//! anchor of its section in docs/check.md; `-o json` for scripts; the exit
//! status is non-zero when any check failed. The API server is found as
//! kubectl finds it (in-cluster, else `KUBECONFIG` or `~/.kube/config`).
//!
//! - here: the flags, the results and how they are printed;
//! - [`checks`]: the checks themselves, against the API.

mod checks;

use serde::Serialize;
use std::{io::Write as _, process::ExitCode};

/// `meshctl check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Before `meshctl install`: may this user install the mesh, and can
    /// this cluster run it?
    #[arg(long)]
    pre: bool,
    /// The control plane's namespace.
    #[arg(long, default_value = "stockkube-mesh")]
    namespace: String,
    /// `table` (one line per check) or `json`.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Error,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub category: &'static str,
    /// Its anchor in docs/check.md.
    pub id: &'static str,
    pub status: Status,
    /// What was checked, and what was found.
    pub description: String,
    /// What to do about a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn ok(category: &'static str, id: &'static str, description: impl Into<String>) -> Self {
        Self {
            category,
            id,
            status: Status::Ok,
            description: description.into(),
            hint: None,
        }
    }

    fn warning(
        category: &'static str,
        id: &'static str,
        description: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warning,
            hint: Some(hint.into()),
            ..Self::ok(category, id, description)
        }
    }

    fn error(
        category: &'static str,
        id: &'static str,
        description: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Error,
            hint: Some(hint.into()),
            ..Self::ok(category, id, description)
        }
    }

    fn docs(&self) -> String {
        format!("docs/check.md#{}", self.id)
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    success: bool,
    checks: Vec<JsonCheck<'a>>,
}

#[derive(Serialize)]
struct JsonCheck<'a> {
    #[serde(flatten)]
    check: &'a Check,
    docs: String,
}

/// The checks as lines: a header per category, a symbol per check, the
/// hint and the docs anchor under each warning and failure.
pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut category = "";
    for check in checks {
        if check.category != category {
            if !category.is_empty() {
                out.push('\n');
            }
            category = check.category;
            out.push_str(&format!("{category}\n{}\n", "-".repeat(category.len())));
        }
        let symbol = match check.status {
            Status::Ok => "✔",
            Status::Warning => "‼",
            Status::Error => "×",
        };
        out.push_str(&format!("{symbol} {}\n", check.description));
        if let Some(hint) = &check.hint {
            out.push_str(&format!("    {hint}\n    see {} for more\n", check.docs()));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Error).count();
    let warned = checks
        .iter()
        .filter(|c| c.status == Status::Warning)
        .count();
    out.push_str(&match (failed, warned) {
        (0, 0) => "\nStatus check results are ✔\n".to_owned(),
        (0, w) => format!("\nStatus check results are ✔, with {w} warning(s) (‼)\n"),
        (f, _) => format!("\nStatus check results are ×: {f} check(s) failed\n"),
    });
    out
}

pub fn main(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = runtime.block_on(checks::run(args.pre, &args.namespace));
    let success = checks.iter().all(|c| c.status != Status::Error);
    let text = if args.output == "json" {
        let report = JsonReport {
            success,
            checks: checks
                .iter()
                .map(|check| JsonCheck {
                    check,
                    docs: check.docs(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&checks)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_warnings_carry_their_hint_and_anchor() {
        let checks = [
            Check::ok("kubernetes-api", "api-reachable", "can reach the API"),
            Check::warning(
                "kubernetes-api",
                "clock-skew",
                "clock is 9 s off",
                "sync it",
            ),
            Check::error(
                "control-plane",
                "pods-ready",
                "mesh-injector not ready",
                "look at its logs",
            ),
        ];
        let text = table(&checks);
        assert!(text.starts_with("kubernetes-api\n--------------\n✔ can reach the API\n‼ clock is 9 s off\n    sync it\n    see docs/check.md#clock-skew for more\n"), "{text}");
        assert!(text.contains("\ncontrol-plane\n-------------\n× mesh-injector not ready\n    look at its logs\n    see docs/check.md#pods-ready"), "{text}");
        assert!(
            text.ends_with("Status check results are ×: 1 check(s) failed\n"),
            "{text}"
        );
        assert!(table(&checks[..2]).ends_with("are ✔, with 1 warning(s) (‼)\n"));
    }
}
