//! Child processes that `meshctl` runs: finding their binaries, starting
//! them, noticing when one dies, and stopping them gracefully (SIGTERM, then
//! SIGKILL after a grace period). A child never outlives `meshctl`: each is
//! killed on drop.

use anyhow::{Context as _, bail};
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};
use tokio::process::{Child, Command};

/// Where the service binaries are: `--bin-dir`, else beside `meshctl` itself
/// (the layout of `target/<profile>/` and of an unpacked release).
pub fn bin_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find meshctl's own path")?;
    Ok(exe
        .parent()
        .context("meshctl's path has no directory")?
        .to_owned())
}

/// Makes sure every binary in `names` exists in `dir`. Under `cargo run`
/// (which sets `CARGO`) missing ones are built with the same profile, so
/// `cargo run --release` alone is enough; otherwise the error says how.
pub fn ensure_binaries(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        bail!(
            "{} not found in {} (build them with `cargo build --release --workspace`, or pass --bin-dir)",
            missing.join(", "),
            dir.display()
        );
    };
    let profile = dir
        .file_name()
        .and_then(OsStr::to_str)
        .context("the binary directory has no profile name")?;
    let mut build = std::process::Command::new(cargo);
    build.arg("build");
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    for name in &missing {
        build.args(["-p", name]);
    }
    eprintln!("meshctl: building {} ...", missing.join(", "));
    let status = build.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of {} failed: {status}", missing.join(", "));
    }
    Ok(())
}

/// A running child with a name for messages.
pub struct Service {
    pub name: String,
    child: Child,
}

impl Service {
    /// Starts `program` with `args` and `envs`; its stdout and stderr go to
    /// ours, so its logs show in the terminal.
    pub fn spawn(
        name: impl Into<String>,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Self { name, child })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `Some(status)` if the child has already exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL at once, as a crash would end it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exited() {
            return Some(status);
        }
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            // The child may exit between the check and the signal; ESRCH
            // then is harmless.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!(
                    "meshctl: {} did not stop within {grace:?}; killing it",
                    self.name
                );
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

/// How long a child gets to start listening.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls until every address accepts a connection; fails as soon as one of
/// `services` exits (its own message is already on stderr), or after
/// [`READY_TIMEOUT`].
pub async fn wait_until_listening(
    services: &mut [&mut Service],
    addrs: &[std::net::SocketAddr],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut pending: Vec<std::net::SocketAddr> = addrs.to_vec();
    loop {
        for service in services.iter_mut() {
            if let Some(status) = service.try_exited() {
                bail!("{} exited ({status}) before it was ready", service.name);
            }
        }
        let mut still_pending = Vec::new();
        for addr in pending {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                still_pending.push(addr);
            }
        }
        pending = still_pending;
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing listening on {pending:?} after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
