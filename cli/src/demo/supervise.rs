//! Supervision of the demo's processes, as a kubelet restarts a pod's
//! containers: a process that exits on its own is reported and started
//! again after a back-off (1 s, doubling to 30 s; back to 1 s once it stayed
//! up for 60 s), and is "up" again once it listens (and, for a sidecar,
//! once its `/ready` says so). What the demo does about a process being up
//! or not (its endpoint registered or removed) is the caller's business.

use crate::process::Service;
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use tokio::time::Instant;

/// Restart delays: exponential, capped, forgotten after a healthy spell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);
    /// Up this long, a process starts over from [`Self::FIRST`].
    pub const RESET_AFTER: Duration = Duration::from_secs(60);

    /// The delay before restarting a process that crashed after being up
    /// for `up_for` (`None`: it never came up).
    pub fn after_crash(&mut self, up_for: Option<Duration>) -> Duration {
        if up_for.is_some_and(|up| up >= Self::RESET_AFTER) {
            self.next = Self::FIRST;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

/// Where a supervised process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started (or restarted), not yet listening.
    Starting,
    Up {
        since: Instant,
    },
    /// Exited on its own; started again at `restart_at`.
    Crashed {
        restart_at: Instant,
    },
    /// Stopped or killed on purpose; stays down.
    Stopped,
}

/// What [`Supervised::poll`] saw change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It exited on its own; `restart_in` from now it is started again.
    Crashed {
        status: String,
        restart_in: Duration,
    },
    /// It was started again after a crash.
    Restarted,
    /// It listens (and is ready).
    Up,
}

/// A process the demo keeps running.
pub struct Supervised {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    /// Addresses it serves on; all must accept for it to be up.
    listens: Vec<SocketAddr>,
    /// A sidecar's admin address: up only once `/ready` answers 200.
    ready: Option<SocketAddr>,
    child: Option<Service>,
    state: State,
    backoff: Backoff,
    /// How often it was started again after a crash.
    pub restarts: u32,
    /// How it last exited on its own.
    pub last_exit: Option<String>,
}

impl Supervised {
    /// Starts `program`; [`Self::poll`] tells when it is up.
    pub fn start(
        name: impl Into<String>,
        program: PathBuf,
        args: Vec<String>,
        listens: Vec<SocketAddr>,
    ) -> anyhow::Result<Self> {
        Self::start_with(name, program, args, Vec::new(), listens, None)
    }

    /// [`Self::start`], with environment variables and, for a sidecar, the
    /// admin address whose `/ready` must say so.
    pub fn start_with(
        name: impl Into<String>,
        program: PathBuf,
        args: Vec<String>,
        envs: Vec<(&'static str, String)>,
        listens: Vec<SocketAddr>,
        ready: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let mut supervised = Self {
            name: name.into(),
            program,
            args,
            envs,
            listens,
            ready,
            child: None,
            state: State::Starting,
            backoff: Backoff::default(),
            restarts: 0,
            last_exit: None,
        };
        supervised.spawn()?;
        Ok(supervised)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let envs: Vec<(&str, String)> = self.envs.iter().map(|(k, v)| (*k, v.clone())).collect();
        self.child = Some(Service::spawn(
            self.name.clone(),
            &self.program,
            &self.args,
            &envs,
        )?);
        self.state = State::Starting;
        Ok(())
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Notices an exit, a restart that is due, or that it came up.
    pub async fn poll(&mut self) -> Option<Change> {
        let now = Instant::now();
        match self.state {
            State::Stopped => None,
            State::Crashed { restart_at } if now >= restart_at => match self.spawn() {
                Ok(()) => {
                    self.restarts += 1;
                    Some(Change::Restarted)
                }
                Err(err) => Some(self.crashed(format!("{err:#}"), None)),
            },
            State::Crashed { .. } => None,
            State::Starting | State::Up { .. } => {
                let exited = self.child.as_mut().and_then(Service::try_exited);
                if let Some(status) = exited {
                    self.child = None;
                    let up_for = match self.state {
                        State::Up { since } => Some(now.duration_since(since)),
                        _ => None,
                    };
                    return Some(self.crashed(status.to_string(), up_for));
                }
                if self.state == State::Starting && self.answers().await {
                    self.state = State::Up { since: now };
                    return Some(Change::Up);
                }
                None
            }
        }
    }

    fn crashed(&mut self, status: String, up_for: Option<Duration>) -> Change {
        let restart_in = self.backoff.after_crash(up_for);
        self.state = State::Crashed {
            restart_at: Instant::now() + restart_in,
        };
        self.last_exit = Some(status.clone());
        Change::Crashed { status, restart_in }
    }

    /// Whether every address accepts and the sidecar, if it is one, is ready.
    async fn answers(&self) -> bool {
        for addr in &self.listens {
            let connect = tokio::net::TcpStream::connect(addr);
            if !matches!(
                tokio::time::timeout(Duration::from_millis(200), connect).await,
                Ok(Ok(_))
            ) {
                return false;
            }
        }
        match self.ready {
            None => true,
            Some(admin) => {
                let ready = super::http_get(admin, stockkube_proto::admin::READY);
                matches!(
                    tokio::time::timeout(Duration::from_millis(500), ready).await,
                    Ok(Ok(_))
                )
            }
        }
    }

    /// Stops it gracefully (SIGTERM, then SIGKILL after `grace`); it stays
    /// down.
    pub async fn stop(&mut self, grace: Duration) {
        self.state = State::Stopped;
        if let Some(child) = self.child.take() {
            child.stop(grace).await;
        }
    }

    /// Kills it outright, as a crash would; it stays down.
    pub async fn kill(&mut self) {
        self.state = State::Stopped;
        if let Some(child) = self.child.take() {
            child.kill().await;
        }
    }

    /// Stops it gracefully and starts it again with `args`: a planned
    /// restart, not a crash.
    pub async fn restart_with(&mut self, args: Vec<String>, grace: Duration) -> anyhow::Result<()> {
        self.stop(grace).await;
        self.args = args;
        self.spawn()
    }
}

/// Polls `processes` until every one is up; fails as soon as one exits
/// (its own message is already on stderr), or after `timeout`.
pub async fn until_up(processes: &mut [&mut Supervised], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for process in processes.iter_mut() {
            if let Some(Change::Crashed { status, .. }) = process.poll().await {
                anyhow::bail!("{} exited ({status}) before it was ready", process.name);
            }
        }
        if processes.iter().all(|p| p.is_up()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending: Vec<&str> = processes
                .iter()
                .filter(|p| !p.is_up())
                .map(|p| p.name.as_str())
                .collect();
            anyhow::bail!("{} not ready after {timeout:?}", pending.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_over_after_a_healthy_spell() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.after_crash(Some(Duration::from_secs(5))).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        // A crash before it ever came up keeps the pace.
        assert_eq!(backoff.after_crash(None), Backoff::MAX);
        // Up for a minute: forgiven.
        assert_eq!(
            backoff.after_crash(Some(Backoff::RESET_AFTER)),
            Backoff::FIRST
        );
        assert_eq!(
            backoff.after_crash(Some(Duration::from_secs(1))),
            Duration::from_secs(2)
        );
    }

    // Real time: it runs real processes and probes real sockets.
    #[tokio::test]
    async fn a_crashed_process_restarts_after_the_backoff_and_comes_up() {
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        // A process that exits at once (nothing listens for it), then,
        // restarted, one that stays; the listener stands for what it serves.
        let mut process =
            Supervised::start("exits", "/bin/false".into(), Vec::new(), vec![closed]).unwrap();
        let change = loop {
            if let Some(change) = process.poll().await {
                break change;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let Change::Crashed { restart_in, status } = change else {
            panic!("{change:?}");
        };
        assert_eq!(restart_in, Backoff::FIRST, "{status}");
        assert_eq!(process.last_exit.as_deref(), Some(status.as_str()));
        assert!(matches!(process.state(), State::Crashed { .. }));
        assert_eq!(process.poll().await, None, "not before the back-off");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        process.listens = vec![listener.local_addr().unwrap()];
        process.program = "/bin/sleep".into();
        process.args = vec!["30".into()];
        tokio::time::sleep(Backoff::FIRST).await;
        assert_eq!(process.poll().await, Some(Change::Restarted));
        assert_eq!(process.restarts, 1);
        assert_eq!(process.poll().await, Some(Change::Up));
        assert!(process.is_up());
        process.kill().await;
        assert_eq!(process.state(), State::Stopped);
        assert_eq!(process.poll().await, None, "a killed process stays down");
    }
}
