//! `docs/tutorial.md` is executable: every ```` ```console check ```` block
//! runs, in order, from the repository's root, with this build's `meshctl`
//! first on PATH. In a block, `$ COMMAND` runs `COMMAND` with bash (stdout
//! and stderr together); the lines after it, if any, are the output it must
//! print, where `[..]` matches anything within a line and a line `...` any
//! number of lines. A command that exits non-zero fails the test. `$ CMD &`
//! starts CMD in the background; `$ kill %N` stops the N-th such process
//! with SIGTERM and waits for it. In a ```` ```console check eventually ````
//! block (the info string does not show when rendered) each command is run
//! again until its output matches, for up to 30 s: for views that refresh,
//! such as the dashboard's. Every command sees `STOCKKUBE_IMAGE_PROFILE`
//! set as the container test sets it, so the tutorial's `docker/build.sh`
//! builds the images the same way and the run builds them once.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};

#[derive(Debug)]
struct Step {
    /// 1-based line in the tutorial.
    line: usize,
    command: String,
    expected: Vec<String>,
    eventually: bool,
}

/// The checked steps of a Markdown document.
fn steps(markdown: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut eventually = false;
    for (index, line) in markdown.lines().enumerate() {
        if !in_block {
            let info = line.trim_end();
            in_block = info == "```console check" || info == "```console check eventually";
            eventually = info.ends_with(" eventually");
            continue;
        }
        if line.starts_with("```") {
            in_block = false;
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                line: index + 1,
                command: command.to_owned(),
                expected: Vec::new(),
                eventually,
            });
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("line {}: output before any command", index + 1));
            step.expected.push(line.to_owned());
        }
    }
    steps
}

/// One line against a pattern with `[..]` wildcards.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Output lines against expected lines, where `...` skips any lines.
fn output_matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| output_matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(line, more)| line_matches(first, line) && output_matches(rest, more)),
    }
}

/// Background processes, stopped (SIGTERM) when the test ends however it
/// ends; and compose projects brought down.
struct Session {
    background: Vec<Option<Child>>,
    root: PathBuf,
}

impl Drop for Session {
    fn drop(&mut self) {
        for child in self.background.iter_mut().flatten() {
            if let Some(pid) = child.id() {
                let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        // Whatever the tutorial started with compose.
        let _ = std::process::Command::new("docker-compose")
            .args(["down", "--timeout", "5"])
            .current_dir(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn bash(root: &Path, path: &str, command: &str) -> Command {
    let mut bash = Command::new("bash");
    bash.args(["-c", command])
        .current_dir(root)
        .env("PATH", path)
        // The tutorial's `docker/build.sh`, built as the container test
        // builds it, so that the run builds the images once.
        .env(crate::IMAGE_PROFILE.0, crate::IMAGE_PROFILE.1)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    bash
}

#[tokio::test]
async fn every_checked_command_of_the_tutorial_prints_what_it_shows() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_owned();
    let docker = std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    let tools = ["curl", "jq", "docker-compose"].iter().all(|tool| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !docker || !tools {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the tutorial needs curl, jq, Docker and docker-compose with CI=true (scripts/test.sh installs curl and jq)"
        );
        eprintln!("SKIPPED: the tutorial needs curl, jq, Docker and docker-compose");
        return;
    }
    for port in [8080, 8081, 8082] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "the tutorial uses port {port}, which is taken"
        );
    }
    let markdown = std::fs::read_to_string(root.join("docs/tutorial.md")).unwrap();
    let steps = steps(&markdown);
    assert!(steps.len() >= 10, "the tutorial has its checked steps");

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_meshctl")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut session = Session {
        background: Vec::new(),
        root: root.clone(),
    };
    for step in &steps {
        let at = format!("docs/tutorial.md:{}: $ {}", step.line, step.command);
        if let Some(command) = step.command.strip_suffix(" &") {
            let child = bash(&root, &path, &format!("exec {command}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(false)
                .spawn()
                .unwrap();
            session.background.push(Some(child));
            continue;
        }
        if let Some(job) = step.command.strip_prefix("kill %") {
            let job: usize = job.parse().expect("kill %N");
            let mut child = session.background[job - 1].take().expect("a running job");
            let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .unwrap_or_else(|_| panic!("{at}: still running 30 s after SIGTERM"))
                .unwrap();
            assert!(status.success(), "{at}: {status}");
            continue;
        }
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let output = tokio::time::timeout(
                Duration::from_secs(900),
                bash(&root, &path, &format!("exec 2>&1; {}", step.command)).output(),
            )
            .await
            .unwrap_or_else(|_| panic!("{at}: still running after 900 s"))
            .unwrap();
            let text = String::from_utf8_lossy(&output.stdout);
            let actual: Vec<&str> = text.lines().collect();
            let matched = output.status.success()
                && (step.expected.is_empty() || output_matches(&step.expected, &actual));
            if matched {
                break;
            }
            if step.eventually && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            panic!(
                "{at}: {}\nexpected:\n{}\ngot:\n{text}",
                output.status,
                step.expected.join("\n")
            );
        }
    }
    drop(session);
}

#[test]
fn patterns_match_what_they_should_and_nothing_else() {
    assert!(line_matches("{\"a\":[..]}", "{\"a\":100}"));
    assert!(line_matches("x [..] y [..] z", "x 1 y 2 z"));
    assert!(!line_matches("x [..] y", "x 1 z"));
    assert!(!line_matches("abc", "abcd"));
    let expected: Vec<String> = ["a", "...", "z"].map(String::from).to_vec();
    assert!(output_matches(&expected, &["a", "b", "c", "z"]));
    assert!(output_matches(&expected, &["a", "z"]));
    assert!(!output_matches(&expected, &["a", "b"]));
    let parsed =
        steps("text\n```console check\n$ echo hi\nhi\n$ true\n```\n```sh\n$ not run\n```\n");
    assert_eq!(parsed.len(), 2);
    assert_eq!(
        (parsed[0].line, parsed[0].expected.clone()),
        (3, vec!["hi".to_owned()])
    );
}
