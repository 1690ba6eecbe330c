//! `mesh-proxy-init`: the sidecar's init container. Loads the rules that
//! redirect the pod's inbound TCP, and with `--outbound-port` its outbound
//! TCP, to the proxy (see `mesh_proxy::redirect`), for IPv4 (and with
//! `--ipv6` for IPv6), prints what it installed, and exits; it needs NET_ADMIN (and NET_RAW) in
//! the pod's network namespace.

use anyhow::Context as _;
use clap::Parser as _;
use mesh_proxy::redirect::{InitArgs, Redirect};
use std::{
    io::Write as _,
    process::{Command, ExitCode, Stdio},
};

fn main() -> ExitCode {
    mesh_runtime::exit("mesh-proxy-init", init())
}

fn init() -> anyhow::Result<()> {
    let args = InitArgs::parse();
    let redirect = Redirect::from(&args);
    let mut families = vec![("IPv4", args.iptables_restore.as_str())];
    if args.ipv6 {
        families.push(("IPv6", args.ip6tables_restore.as_str()));
    }
    for (family, restore) in families {
        if args.dry_run {
            print!("# {family}\n{}", redirect.rules("")?);
            continue;
        }
        let existing = save(restore)?;
        let rules = redirect.rules(&existing)?;
        load(restore, &rules)?;
        println!("# {family}: loaded with {restore} --noflush\n{rules}");
    }
    Ok(())
}

/// The nat table as `iptables-save` (the `-save` sibling of `restore`)
/// prints it.
fn save(restore: &str) -> anyhow::Result<String> {
    let save = restore.replace("-restore", "-save");
    let output = Command::new(&save)
        .args(["-t", "nat"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {save} (found from {restore})"))?;
    anyhow::ensure!(
        output.status.success(),
        "{save} -t nat failed ({})",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn load(restore: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {restore}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())
        .with_context(|| format!("cannot write the rules to {restore}"))?;
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "{restore} --noflush failed ({status}) loading:\n{rules}"
    );
    Ok(())
}
