//! The list of controller addresses a client may contact.

use failover_core::Topology;

/// Controller gRPC addresses (`host:port`), probed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(Vec<String>);

/// No controller address could be found.
#[derive(Debug, thiserror::Error)]
#[error("no controller endpoints: pass --endpoints, set FAILOVER_ENDPOINTS, or pass --config")]
pub struct NoEndpoints;

/// Why an endpoint list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The list names no address.
    #[error(transparent)]
    Empty(#[from] NoEndpoints),
    /// One entry is not `host:port` or `http://host:port`.
    #[error(
        "endpoint `{entry}`: {why} (expected host:port or http://host:port, e.g. 10.0.0.1:7001)"
    )]
    Invalid {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Endpoints {
    /// A comma-separated list (`a:1,http://b:2`); blanks are ignored. The URL form is
    /// accepted because operators copy addresses from browsers and other tools; it
    /// names the same gRPC port (controllers speak plain-text HTTP/2).
    pub fn parse(list: &str) -> Result<Endpoints, EndpointError> {
        let addrs = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(normalize)
            .collect::<Result<Vec<String>, EndpointError>>()?;
        if addrs.is_empty() {
            return Err(NoEndpoints.into());
        }
        Ok(Endpoints(addrs))
    }

    /// Every controller of a topology.
    pub fn from_topology(topology: &Topology) -> Endpoints {
        Endpoints(
            topology
                .controllers()
                .map(|(_, c)| c.addr.clone())
                .collect(),
        )
    }

    /// The addresses.
    pub fn addrs(&self) -> &[String] {
        &self.0
    }
}

/// One entry as `host:port`.
fn normalize(entry: &str) -> Result<String, EndpointError> {
    let invalid = |why| EndpointError::Invalid {
        entry: entry.to_owned(),
        why,
    };
    if entry.starts_with("https://") {
        return Err(invalid(
            "controllers do not speak TLS; use http:// or host:port",
        ));
    }
    let rest = entry.strip_prefix("http://").unwrap_or(entry);
    if rest.contains("://") {
        return Err(invalid("unknown scheme"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(invalid("a path is not allowed"));
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(invalid("the port is missing"));
    };
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid("the port is not a number from 1 to 65535"));
    }
    Ok(rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blanks and spaces are ignored; an empty list is an error, not an empty client.
    #[test]
    fn parse_list() {
        let e = Endpoints::parse(" a:1, ,b:2,").expect("two");
        assert_eq!(e.addrs(), ["a:1", "b:2"]);
        assert!(Endpoints::parse(" , ").is_err());
    }

    /// The URL form names the same address; other forms are refused with the reason.
    #[test]
    fn url_form_and_bad_entries() {
        let e = Endpoints::parse("http://127.0.0.1:7301/,[::1]:7").expect("valid");
        assert_eq!(e.addrs(), ["127.0.0.1:7301", "[::1]:7"]);
        for (entry, why) in [
            ("https://a:1", "TLS"),
            ("a", "port is missing"),
            ("a:x", "not a number"),
            ("a:0", "not a number"),
            (":1", "host is missing"),
            ("http://a:1/x", "path"),
            ("ftp://a:1", "scheme"),
        ] {
            let error = Endpoints::parse(entry).expect_err(entry).to_string();
            assert!(error.contains(why), "{entry}: {error}");
            assert!(error.contains(entry), "{entry}: {error}");
        }
    }
}
