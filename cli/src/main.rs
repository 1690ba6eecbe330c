//! `meshctl`, the StockKube Mesh command line.
//!
//! - `demo` (also what a bare `meshctl` or `cargo run --release` does): runs
//!   the mesh and the StockKube sample on this machine.
//! - `dashboard`: the dashboard against a running mesh.
//! - `install` / `uninstall`: the control plane as YAML for `kubectl apply`
//!   (and what removes it).
//! - `check`: is the cluster ready for the mesh, is the mesh healthy.
//! - `inject` / `uninject`: add the mesh to Kubernetes YAML, or take it out.
//! - `bench`: gRPC load and the benchmark suite.
//! - `stat`, `routes`, `top`, `tap`: the dashboard's figures as tables, and
//!   the requests passing through, live.
//!
//! Every service runs as a child process of `meshctl`, exactly as it would
//! run anywhere else; `meshctl` only starts, watches and stops them.

mod bench;
mod check;
mod dashboard;
mod demo;
mod identity;
mod inject;
mod install;
mod process;
mod service_vip;
mod viz;

use clap::Parser as _;
use std::process::ExitCode;

/// StockKube Mesh: per-request gRPC load balancing for Kubernetes.
#[derive(Debug, clap::Parser)]
#[command(name = "meshctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the whole mesh on this machine: controller, StockData replicas with
    /// sidecars, StockWeb with and without the mesh (the default command).
    /// A process that dies is restarted after a back-off; only the
    /// controller's death ends the demo.
    Demo(demo::DemoArgs),
    /// Run the dashboard against a running mesh's controller.
    Dashboard(dashboard::DashboardArgs),
    /// Print the mesh's control plane as Kubernetes YAML, with a fresh
    /// certificate for the injector:
    /// `meshctl install | kubectl apply -f -`.
    Install(install::InstallArgs),
    /// Print what removes the mesh: `meshctl uninstall | kubectl delete -f -`.
    Uninstall(install::UninstallArgs),
    /// Check that the cluster can run the mesh (--pre) or that the
    /// installed mesh is healthy: one line per check, non-zero exit status
    /// on any failure.
    Check(check::CheckArgs),
    /// Add the mesh to Kubernetes YAML: the inject annotation on every pod
    /// template (or, with --manual, the sidecar itself). Writes the result to
    /// stdout, a line per resource to stderr, e.g.
    /// `meshctl inject k8s/stocks/stockdata.yml | kubectl apply -f -`.
    Inject(inject::InjectArgs),
    /// Take the mesh out of Kubernetes YAML that `inject` wrote.
    Uninject(inject::UninjectArgs),
    /// Print a proxy's identity, when its certificate expires, and the
    /// certificate chain it presents (PEM), from its admin server.
    Identity(identity::IdentityArgs),
    /// Load a StockData target with unary gRPC calls and report throughput,
    /// latency percentiles, errors and each replica's share; or, with
    /// --suite, compare no proxy, mesh-proxy and Envoy (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Golden metrics per workload (success rate, requests per second,
    /// latency percentiles) from a running dashboard, like `linkerd viz
    /// stat`.
    Stat(viz::StatArgs),
    /// Golden metrics per route (a gRPC method, an HTTP path) of one
    /// workload: the routes it serves, or with --to the ones it calls on a
    /// service; like `linkerd viz routes`.
    Routes(viz::RoutesArgs),
    /// The busiest routes of one workload, served and called, by requests
    /// per second; redrawn every few seconds on a terminal (like `top`).
    Top(viz::TopArgs),
    /// The requests passing through a workload's proxies, live, one line
    /// each: source, chosen endpoint, method, path, status, attempts,
    /// latency, mTLS; like `linkerd viz tap`.
    Tap(viz::TapArgs),
}

fn main() -> ExitCode {
    // A bare `meshctl` (as `cargo run --release` gives) means `meshctl demo`
    // with its defaults and environment.
    let command = Cli::parse()
        .command
        .or_else(|| Cli::parse_from(["meshctl", "demo"]).command)
        .expect("`meshctl demo` parses with defaults");
    let result = match command {
        Command::Demo(args) => demo::main(args),
        Command::Dashboard(args) => dashboard::main(args),
        Command::Identity(args) => identity::main(args),
        Command::Check(args) => match check::main(args) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        Command::Install(args) => install::install_main(args),
        Command::Uninstall(args) => install::uninstall_main(args),
        Command::Inject(args) => inject::inject_main(args),
        Command::Uninject(args) => inject::uninject_main(args),
        Command::Bench(args) => bench::main(args),
        Command::Stat(args) => viz::stat_main(args),
        Command::Routes(args) => viz::routes_main(args),
        Command::Top(args) => viz::top_main(args),
        Command::Tap(args) => viz::tap_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
