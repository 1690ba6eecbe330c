//! Traffic redirection for a pod: the iptables rules that send the pod's
//! inbound TCP connections to the proxy's inbound port, as Linkerd's
//! proxy-init does. The `mesh-proxy-init` binary (the sidecar's init
//! container) loads them with `iptables-restore` into the pod's network
//! namespace, before the app and the proxy start.
//!
//! ```text
//! PREROUTING -> MESH_INBOUND: the proxy's own ports: RETURN
//!                             any other TCP: REDIRECT to the inbound port
//! ```
//!
//! Connections the pod makes to itself over `lo` are not redirected
//! (PREROUTING does not see them), so the proxy reaching the app on
//! 127.0.0.1 cannot loop. Outbound redirection waits for the proxy to
//! route by original destination.

use stockkube_proto::ports;

/// The chain the rules live in.
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";

/// Flags of `mesh-proxy-init`.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-proxy-init", version)]
pub struct InitArgs {
    /// The proxy's inbound port: where redirected connections arrive.
    #[arg(long, default_value_t = ports::PROXY_INBOUND)]
    pub inbound_port: u16,

    /// Ports whose inbound connections are not redirected (the proxy's own
    /// admin and inbound ports, at least), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [ports::PROXY_ADMIN, ports::PROXY_INBOUND])]
    pub ignore_inbound_ports: Vec<u16>,

    /// The iptables-restore to run (`iptables-legacy-restore` on nodes that
    /// use the legacy backend).
    #[arg(long, default_value = "iptables-restore")]
    pub iptables_restore: String,

    /// Print the rules instead of loading them.
    #[arg(long)]
    pub dry_run: bool,
}

/// A set of ports iptables' multiport match cannot take.
#[derive(Debug, thiserror::Error)]
#[error("--ignore-inbound-ports: at most 15 ports, got {0}")]
pub struct TooManyPorts(usize);

/// The rules, in iptables-restore's format, for loading with `--noflush`
/// (other chains of the nat table are left as they are).
pub fn inbound_rules(inbound_port: u16, ignore: &[u16]) -> Result<String, TooManyPorts> {
    let mut ignore: Vec<u16> = ignore.to_vec();
    ignore.sort_unstable();
    ignore.dedup();
    if ignore.len() > 15 {
        return Err(TooManyPorts(ignore.len()));
    }
    let mut rules = format!("*nat\n:{INBOUND_CHAIN} - [0:0]\n");
    if !ignore.is_empty() {
        let ports: Vec<String> = ignore.iter().map(u16::to_string).collect();
        rules += &format!(
            "-A {INBOUND_CHAIN} -p tcp -m multiport --dports {} -j RETURN\n",
            ports.join(",")
        );
    }
    rules += &format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {inbound_port}\n\
         -A PREROUTING -p tcp -j {INBOUND_CHAIN}\n\
         COMMIT\n"
    );
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_ports_return_and_the_rest_is_redirected() {
        let rules = inbound_rules(4143, &[4191, 4143, 4191]).unwrap();
        assert_eq!(
            rules,
            "*nat\n\
             :MESH_INBOUND - [0:0]\n\
             -A MESH_INBOUND -p tcp -m multiport --dports 4143,4191 -j RETURN\n\
             -A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143\n\
             -A PREROUTING -p tcp -j MESH_INBOUND\n\
             COMMIT\n"
        );
    }

    #[test]
    fn multiport_takes_fifteen_ports_at_most() {
        let ports: Vec<u16> = (1..=16).collect();
        assert!(inbound_rules(4143, &ports).is_err());
        assert!(inbound_rules(4143, &ports[..15]).is_ok());
    }
}
