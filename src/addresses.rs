//! Addresses named in the configuration: IP addresses and CIDR blocks
//! (`trusted_proxies`, `no_proxy`) and the `no_proxy` host list.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::Error;

pub(crate) fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// `no_proxy`: the hosts reached directly although a proxy is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NoProxy {
    all: bool,
    /// Lower-case host names without a leading dot: the name and its subdomains match.
    domains: Vec<String>,
    /// IP addresses (as /32 or /128) and CIDR blocks.
    networks: Vec<IpNet>,
}

impl NoProxy {
    /// Parses a comma-separated list: `*`, host names (`example.com`, `.example.com`), IP
    /// addresses (IPv6 with or without brackets) and CIDR blocks. Empty entries are
    /// ignored; a port, scheme, path or wildcard inside a name is an error naming the entry.
    pub(crate) fn parse(list: &str) -> Result<NoProxy, Error> {
        let mut out = NoProxy::default();
        for (i, raw) in list.split(',').enumerate() {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                out.all = true;
                continue;
            }
            let unbracketed = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).unwrap_or(entry);
            if let Some(net) = parse_cidr(unbracketed) {
                out.networks.push(net);
                continue;
            }
            let name = entry.strip_prefix('.').unwrap_or(entry).to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                return Err(Error::config(
                    "no_proxy",
                    format!(
                        "entry {} is not *, a host name, an IP address or a CIDR block (no scheme, port or path)",
                        i + 1
                    ),
                ));
            }
            out.domains.push(name);
        }
        Ok(out)
    }

    /// True if the URL's host is reached directly.
    pub(crate) fn bypasses(&self, url: &url::Url) -> bool {
        if self.all {
            return true;
        }
        match url.host() {
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                self.domains.iter().any(|n| d == *n || d.strip_suffix(n.as_str()).is_some_and(|p| p.ends_with('.')))
            }
            Some(url::Host::Ipv4(a)) => self.contains(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => self.contains(IpAddr::V6(a)),
            None => false,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip))
    }
}
