//! The list of controller addresses a client may contact.

use failover_core::Topology;

/// Controller addresses (`host:port`), tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(Vec<String>);

/// No controller address could be found.
#[derive(Debug, thiserror::Error)]
#[error("no controller endpoints: pass --endpoints, set FAILOVER_ENDPOINTS, or pass --config")]
pub struct NoEndpoints;

impl Endpoints {
    /// A comma-separated list (`a:1,b:2`); blanks are ignored.
    pub fn parse(list: &str) -> Result<Endpoints, NoEndpoints> {
        let addrs: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            return Err(NoEndpoints);
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
}
