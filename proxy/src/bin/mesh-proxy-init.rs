//! `mesh-proxy-init`: the sidecar's init container. Loads the rules that
//! redirect the pod's inbound TCP to the proxy (see `mesh_proxy::redirect`)
//! and exits; it needs NET_ADMIN in the pod's network namespace.

use anyhow::Context as _;
use clap::Parser as _;
use std::{io::Write as _, process::ExitCode};

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-proxy-init", init())
}

fn init() -> anyhow::Result<()> {
    let args = mesh_proxy::redirect::InitArgs::parse();
    let rules = mesh_proxy::redirect::inbound_rules(args.inbound_port, &args.ignore_inbound_ports)?;
    if args.dry_run {
        print!("{rules}");
        return Ok(());
    }
    let mut child = std::process::Command::new(&args.iptables_restore)
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {} (--iptables-restore)", args.iptables_restore))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())
        .with_context(|| format!("cannot write the rules to {}", args.iptables_restore))?;
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "{} --noflush failed ({status}) loading:\n{rules}",
        args.iptables_restore
    );
    eprintln!(
        "mesh-proxy-init: inbound TCP redirected to port {} (except ports {:?})",
        args.inbound_port, args.ignore_inbound_ports
    );
    Ok(())
}
