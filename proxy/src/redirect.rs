//! Traffic redirection for a pod: the iptables rules that send the pod's
//! TCP to its proxy, as Linkerd's proxy-init sets them. The
//! `mesh-proxy-init` binary (the sidecar's init container) loads them with
//! `iptables-restore --noflush` (and, with `--ipv6`, `ip6tables-restore
//! --noflush`) into the pod's network namespace, before the app and the
//! proxy start.
//!
//! ```text
//! PREROUTING -> MESH_INBOUND:  the proxy's own ports and skipped ports: RETURN
//!                              any other TCP: REDIRECT to the inbound port
//! OUTPUT     -> MESH_OUTBOUND: the proxy's own user: RETURN (its connections never loop back)
//!                              out through lo: RETURN (the pod talking to itself)
//!                              skipped ports: RETURN
//!                              any other TCP: REDIRECT to the outbound port
//! ```
//!
//! Loading again (a restarted init container) leaves the same rules: the
//! mesh's chains are flushed and refilled, and the jumps into them are added
//! only when the table does not have them yet.

use stockkube_proto::ports;

/// The chains the rules live in.
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
pub const OUTBOUND_CHAIN: &str = "MESH_OUTBOUND";

/// Flags of `mesh-proxy-init`.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-proxy-init", version)]
pub struct InitArgs {
    /// The proxy's inbound port: where redirected inbound connections arrive.
    #[arg(long, default_value_t = ports::PROXY_INBOUND)]
    pub inbound_port: u16,

    /// Ports whose inbound connections are not redirected (the proxy's own
    /// admin and inbound ports, at least), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [ports::PROXY_ADMIN, ports::PROXY_INBOUND])]
    pub ignore_inbound_ports: Vec<u16>,

    /// The proxy's transparent outbound port: where the app's redirected
    /// connections arrive. Without it, outbound traffic is left alone.
    #[arg(long)]
    pub outbound_port: Option<u16>,

    /// The proxy's user id: its own connections are never redirected.
    #[arg(long, default_value_t = 2102, requires = "outbound_port")]
    pub proxy_uid: u32,

    /// Destination ports whose outbound connections are not redirected,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', requires = "outbound_port")]
    pub ignore_outbound_ports: Vec<u16>,

    /// The iptables-restore to run (`iptables-legacy-restore` where the
    /// legacy backend is in use and its tools are installed: the mesh's
    /// image carries the nft ones only); its `-save` sibling is found by name.
    #[arg(long, default_value = "iptables-restore")]
    pub iptables_restore: String,

    /// The same for IPv6.
    #[arg(long, default_value = "ip6tables-restore")]
    pub ip6tables_restore: String,

    /// Load the rules for IPv6 too: only for a proxy that listens on IPv6
    /// as well (`--outbound-transparent 127.0.0.1:4140,[::1]:4140 --inbound
    /// 0.0.0.0:4143,[::]:4143`); redirected to an IPv4-only proxy, the pod's
    /// IPv6 connections would fail, so IPv6 is left alone by default.
    #[arg(long)]
    pub ipv6: bool,

    /// Print the rules instead of loading them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Ports iptables' multiport match cannot take.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: at most 15 ports, got {count}")]
pub struct TooManyPorts {
    flag: &'static str,
    count: usize,
}

/// What to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub inbound_port: u16,
    pub ignore_inbound: Vec<u16>,
    pub outbound: Option<Outbound>,
}

/// Outbound redirection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub port: u16,
    pub proxy_uid: u32,
    pub ignore: Vec<u16>,
}

impl From<&InitArgs> for Redirect {
    fn from(args: &InitArgs) -> Self {
        Self {
            inbound_port: args.inbound_port,
            ignore_inbound: args.ignore_inbound_ports.clone(),
            outbound: args.outbound_port.map(|port| Outbound {
                port,
                proxy_uid: args.proxy_uid,
                ignore: args.ignore_outbound_ports.clone(),
            }),
        }
    }
}

impl Redirect {
    /// The rules, in iptables-restore's format, for loading with
    /// `--noflush` into a nat table that `iptables-save -t nat` printed as
    /// `existing` (jumps already there are not added again).
    pub fn rules(&self, existing: &str) -> Result<String, TooManyPorts> {
        let inbound_jump = format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}");
        let outbound_jump = format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}");
        let mut rules = format!("*nat\n:{INBOUND_CHAIN} - [0:0]\n");
        if self.outbound.is_some() {
            rules += &format!(":{OUTBOUND_CHAIN} - [0:0]\n");
        }
        if let Some(ports) = multiport("--ignore-inbound-ports", &self.ignore_inbound)? {
            rules +=
                &format!("-A {INBOUND_CHAIN} -p tcp -m multiport --dports {ports} -j RETURN\n");
        }
        rules += &format!(
            "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
            self.inbound_port
        );
        if let Some(outbound) = &self.outbound {
            rules += &format!(
                "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN\n\
                 -A {OUTBOUND_CHAIN} -o lo -j RETURN\n",
                outbound.proxy_uid
            );
            if let Some(ports) = multiport("--ignore-outbound-ports", &outbound.ignore)? {
                rules += &format!(
                    "-A {OUTBOUND_CHAIN} -p tcp -m multiport --dports {ports} -j RETURN\n"
                );
            }
            rules += &format!(
                "-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
                outbound.port
            );
        }
        let has = |rule: &str| existing.lines().any(|line| line.trim() == rule);
        if !has(&inbound_jump) {
            rules += &format!("{inbound_jump}\n");
        }
        if self.outbound.is_some() && !has(&outbound_jump) {
            rules += &format!("{outbound_jump}\n");
        }
        rules += "COMMIT\n";
        Ok(rules)
    }
}

/// A multiport list, sorted and without repeats; `None` when empty.
fn multiport(flag: &'static str, ports: &[u16]) -> Result<Option<String>, TooManyPorts> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > 15 {
        return Err(TooManyPorts {
            flag,
            count: ports.len(),
        });
    }
    Ok((!ports.is_empty()).then(|| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound_only() -> Redirect {
        Redirect {
            inbound_port: 4143,
            ignore_inbound: vec![4191, 4143, 4191],
            outbound: None,
        }
    }

    #[test]
    fn the_proxy_ports_return_and_the_rest_is_redirected() {
        assert_eq!(
            inbound_only().rules("").unwrap(),
            "*nat\n\
             :MESH_INBOUND - [0:0]\n\
             -A MESH_INBOUND -p tcp -m multiport --dports 4143,4191 -j RETURN\n\
             -A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143\n\
             -A PREROUTING -p tcp -j MESH_INBOUND\n\
             COMMIT\n"
        );
    }

    #[test]
    fn outbound_skips_the_proxys_own_user_loopback_and_skipped_ports() {
        let redirect = Redirect {
            outbound: Some(Outbound {
                port: 4140,
                proxy_uid: 2102,
                ignore: vec![443],
            }),
            ..inbound_only()
        };
        assert_eq!(
            redirect.rules("").unwrap(),
            "*nat\n\
             :MESH_INBOUND - [0:0]\n\
             :MESH_OUTBOUND - [0:0]\n\
             -A MESH_INBOUND -p tcp -m multiport --dports 4143,4191 -j RETURN\n\
             -A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143\n\
             -A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN\n\
             -A MESH_OUTBOUND -o lo -j RETURN\n\
             -A MESH_OUTBOUND -p tcp -m multiport --dports 443 -j RETURN\n\
             -A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140\n\
             -A PREROUTING -p tcp -j MESH_INBOUND\n\
             -A OUTPUT -p tcp -j MESH_OUTBOUND\n\
             COMMIT\n"
        );
    }

    #[test]
    fn loading_again_adds_no_second_jump() {
        let existing = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
                        :MESH_INBOUND - [0:0]\n-A PREROUTING -p tcp -j MESH_INBOUND\n\
                        -A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143\nCOMMIT\n";
        let rules = inbound_only().rules(existing).unwrap();
        assert!(!rules.contains("-A PREROUTING"), "{rules}");
        assert!(
            rules.contains(":MESH_INBOUND - [0:0]"),
            "the chain is refilled"
        );
    }

    #[test]
    fn multiport_takes_fifteen_ports_at_most() {
        let ports: Vec<u16> = (1..=16).collect();
        let redirect = |ignore: &[u16]| Redirect {
            ignore_inbound: ignore.to_vec(),
            ..inbound_only()
        };
        assert!(redirect(&ports).rules("").is_err());
        assert!(redirect(&ports[..15]).rules("").is_ok());
    }
}
