//! DNS-rebinding protection, as the MCP transport asks of servers. The sidecar rewrites `Host` to
//! the upstream's authority, which hides a hostile `Host` or `Origin` from the server's own check,
//! so the sidecar makes that check itself: an `Origin` must be allowed whenever it is sent, and
//! when the sidecar listens on loopback (or hosts are listed) `Host` must be an allowed host too.

use http::header::{self, HeaderMap};

/// Why a request's `Origin` or `Host` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the Origin header is not readable")]
    UnreadableOrigin,
    #[error(
        "Origin {0:?} is not allowed (DNS-rebinding protection); allow it with --allowed-origin"
    )]
    Origin(String),
    #[error("a Host header is required")]
    NoHost,
    #[error("more than one Host header")]
    TwoHosts,
    #[error("Host {0:?} is not allowed (DNS-rebinding protection); allow it with --allowed-host")]
    Host(String),
}

/// Which `Host` and `Origin` values are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Whether `Host` is checked at all.
    check_host: bool,
    /// Accepted hosts: `name` (any port) or `name:port`; `*` accepts every host.
    hosts: Vec<String>,
    /// Accepted origins, `scheme://host[:port]`; `*` accepts every origin.
    origins: Vec<String>,
}

const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

impl Allowed {
    /// `Host` is checked when the sidecar listens on loopback or hosts are listed. Loopback names
    /// are always accepted, as hosts and in origins: a page elsewhere cannot send them.
    pub fn new(listen_loopback: bool, hosts: &[String], origins: &[String]) -> Allowed {
        let norm = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let hosts = norm(hosts);
        Allowed {
            check_host: (listen_loopback || !hosts.is_empty()) && !hosts.iter().any(|h| h == "*"),
            hosts,
            origins: norm(origins),
        }
    }

    /// `Err` with the reason when the request must be refused (HTTP 403).
    pub fn check(&self, h: &HeaderMap) -> Result<(), Refused> {
        if let Some(origin) = h.get(header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| Refused::UnreadableOrigin)?;
            if !self.origin_ok(origin) {
                return Err(Refused::Origin(origin.to_owned()));
            }
        }
        if self.check_host {
            let mut hosts = h.get_all(header::HOST).iter();
            let host = match (hosts.next(), hosts.next()) {
                (Some(v), None) => v.to_str().unwrap_or(""),
                (None, _) => return Err(Refused::NoHost),
                (Some(_), Some(_)) => return Err(Refused::TwoHosts),
            };
            if !self.host_ok(host) {
                return Err(Refused::Host(host.to_owned()));
            }
        }
        Ok(())
    }

    fn host_ok(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let name = host_name(&host);
        LOOPBACK.contains(&name) || self.hosts.iter().any(|a| *a == host || a == name)
    }

    fn origin_ok(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        if self.origins.iter().any(|o| o == "*" || *o == origin) {
            return true;
        }
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return false;
        }
        let name = host_name(authority);
        LOOPBACK.contains(&name) || self.hosts.iter().any(|a| a == authority || a == name)
    }
}

/// The name part of `host[:port]` (an IPv6 literal keeps its brackets).
fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn on_loopback_only_loopback_hosts_and_origins_pass() {
        let a = Allowed::new(true, &[], &[]);
        for ok in [
            vec![("host", "127.0.0.1:9480")],
            vec![("host", "localhost")],
            vec![("host", "[::1]:80"), ("origin", "http://localhost:3000")],
            vec![("host", "LOCALHOST:1"), ("origin", "https://127.0.0.1")],
        ] {
            assert_eq!(a.check(&headers(&ok)), Ok(()), "{ok:?}");
        }
        for bad in [
            vec![("host", "evil.example.com")],
            vec![("host", "127.0.0.1.evil.example.com")],
            vec![("host", "127.0.0.1"), ("origin", "http://evil.example.com")],
            vec![("host", "127.0.0.1"), ("origin", "null")],
            vec![
                ("host", "127.0.0.1"),
                ("origin", "http://localhost@evil.example.com"),
            ],
            vec![("host", "127.0.0.1"), ("host", "evil.example.com")],
            vec![],
        ] {
            assert!(a.check(&headers(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn elsewhere_host_is_free_but_origin_is_still_checked() {
        let a = Allowed::new(false, &[], &[]);
        assert_eq!(
            a.check(&headers(&[("host", "mcp.team-a.svc:9480")])),
            Ok(())
        );
        assert!(a
            .check(&headers(&[
                ("host", "x"),
                ("origin", "http://evil.example.com")
            ]))
            .is_err());
        let a = Allowed::new(
            false,
            &["mcp.team-a.svc".into(), "mcp:9480".into()],
            &["https://console.example.com/".into()],
        );
        for ok in [
            vec![("host", "mcp.team-a.svc:9480")],
            vec![("host", "mcp:9480"), ("origin", "http://mcp:9480")],
            vec![
                ("host", "mcp.team-a.svc"),
                ("origin", "https://console.example.com"),
            ],
        ] {
            assert_eq!(a.check(&headers(&ok)), Ok(()), "{ok:?}");
        }
        for bad in [
            vec![("host", "mcp:9999")],
            vec![("host", "evil.example.com")],
            vec![
                ("host", "mcp.team-a.svc"),
                ("origin", "https://console.example.com.evil"),
            ],
        ] {
            assert!(a.check(&headers(&bad)).is_err(), "{bad:?}");
        }
        let any = Allowed::new(true, &["*".into()], &["*".into()]);
        assert_eq!(
            any.check(&headers(&[("host", "x"), ("origin", "http://y")])),
            Ok(())
        );
    }
}
