//! DNS as a pod's resolver sees it: `dig` run in a namespace, its answer
//! parsed, and the resolv.conf of a pod in the cluster domain.

use std::net::SocketAddr;

use anyhow::Context;

use crate::netns::{ChildGuard, Netns, checked};

/// The node-local address the tests' DNS responder answers on (NodeLocal
/// DNSCache's), on the node's loopback.
pub const DNS_IP: &str = "169.254.20.10";

/// A pod's resolv.conf in namespace `default`, as the kubelet writes it.
pub fn pod_resolv_conf(nameserver: &str) -> String {
    format!(
        "nameserver {nameserver}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
}

/// One `dig` answer.
#[derive(Debug)]
pub struct Dig {
    /// NOERROR, NXDOMAIN, REFUSED, ...
    pub status: String,
    /// The header's flags: `qr`, `aa`, `tc`, ...
    pub flags: Vec<String>,
    /// Records as `name TTL CLASS TYPE data`, whitespace collapsed.
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
}

impl Dig {
    /// The data of the answer's records (the address of an A record), sorted.
    pub fn data(&self) -> Vec<String> {
        let mut data: Vec<String> =
            self.answer.iter().map(|r| r.splitn(5, ' ').nth(4).unwrap_or_default().to_owned()).collect();
        data.sort();
        data
    }
}

/// `dig @server QUERY...` from `ns`.
pub fn dig(ns: &Netns, server: SocketAddr, query: &[&str]) -> anyhow::Result<Dig> {
    let mut cmd = ns.command("dig");
    cmd.arg(format!("@{}", server.ip())).args(["-p", &server.port().to_string(), "+time=2", "+tries=1"]).args(query);
    let out = checked(&mut cmd)?;
    parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| format!("dig {query:?}"))
}

fn parse(text: &str) -> anyhow::Result<Dig> {
    let header = text.lines().find(|l| l.contains("->>HEADER<<-")).with_context(|| format!("no header in {text}"))?;
    let status = header.split("status: ").nth(1).and_then(|s| s.split(',').next()).context("no status")?.to_owned();
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let section = |title: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with(&format!(";; {title} SECTION:")))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| !l.starts_with(';'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    Ok(Dig {
        status,
        flags,
        answer: section("ANSWER"),
        authority: section("AUTHORITY"),
        additional: section("ADDITIONAL"),
    })
}

/// Debian's dnsmasq in `ns` on `listen`, answering the names of the hosts
/// file `hosts` and nothing else (no upstream, no /etc/hosts), in the
/// foreground as root: stopped when the guard drops.
pub fn dnsmasq(ns: &Netns, listen: SocketAddr, hosts: &std::path::Path) -> anyhow::Result<ChildGuard> {
    ns.spawn(
        ns.command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--listen-address={}", listen.ip()))
            .arg(format!("--port={}", listen.port()))
            .arg(format!("--addn-hosts={}", hosts.display())),
    )
}
