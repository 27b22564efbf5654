//! Where an executor may run: the rule `failover exec` checks at start.
//!
//! An executor runs one group's workers at one site, so the site must exist, the group
//! must exist, and the site must be one of the group's eligible sites. A site listed in
//! no group at all is a witness: it hosts controllers only, never executors.

/// What the cluster says exists: every site, and every group with its eligible sites.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placements {
    /// Every site of the topology.
    pub sites: Vec<String>,
    /// Every group with its eligible sites.
    pub groups: Vec<(String, Vec<String>)>,
}

/// Why an executor may not run at a site for a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The site, the group or both are not in the topology.
    #[error("{}", unknown_message(.site, .group, .sites, .groups))]
    Unknown {
        /// The unknown site, if it is.
        site: Option<String>,
        /// The unknown group, if it is.
        group: Option<String>,
        /// The sites that exist.
        sites: Vec<String>,
        /// The groups that exist.
        groups: Vec<String>,
    },
    /// The site is in no group: a witness, which runs controllers only.
    #[error("site `{site}` is a witness (it is in no group's sites), so it runs controllers only, never executors; sites that run group `{group}`: {}", .eligible.join(", "))]
    Witness {
        /// The site.
        site: String,
        /// The group asked for.
        group: String,
        /// The group's eligible sites.
        eligible: Vec<String>,
    },
    /// The site is eligible for other groups, not this one.
    #[error("site `{site}` is not one of group `{group}`'s sites ({})", .eligible.join(", "))]
    NotEligible {
        /// The site.
        site: String,
        /// The group asked for.
        group: String,
        /// The group's eligible sites.
        eligible: Vec<String>,
    },
}

fn unknown_message(
    site: &Option<String>,
    group: &Option<String>,
    sites: &[String],
    groups: &[String],
) -> String {
    let mut parts = Vec::new();
    if let Some(site) = site {
        parts.push(format!(
            "unknown site `{site}` (the cluster's sites: {})",
            sites.join(", ")
        ));
    }
    if let Some(group) = group {
        parts.push(format!(
            "unknown group `{group}` (the cluster's groups: {})",
            groups.join(", ")
        ));
    }
    parts.join("; ")
}

impl Placements {
    /// Checks that an executor of `group` may run at `site`.
    pub fn check(&self, site: &str, group: &str) -> Result<(), PlacementError> {
        let site_known = self.sites.iter().any(|s| s == site);
        let eligible = self.groups.iter().find(|(g, _)| g == group).map(|(_, s)| s);
        let Some(eligible) = eligible.filter(|_| site_known) else {
            return Err(PlacementError::Unknown {
                site: (!site_known).then(|| site.to_owned()),
                group: eligible.is_none().then(|| group.to_owned()),
                sites: self.sites.clone(),
                groups: self.groups.iter().map(|(g, _)| g.clone()).collect(),
            });
        };
        if eligible.iter().any(|s| s == site) {
            return Ok(());
        }
        let in_any_group = self.groups.iter().any(|(_, s)| s.iter().any(|s| s == site));
        let (site, group, eligible) = (site.to_owned(), group.to_owned(), eligible.clone());
        if in_any_group {
            Err(PlacementError::NotEligible {
                site,
                group,
                eligible,
            })
        } else {
            Err(PlacementError::Witness {
                site,
                group,
                eligible,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Placements {
        let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Placements {
            sites: strings(&["site-a", "site-b", "site-c", "witness"]),
            groups: vec![
                ("default".into(), strings(&["site-a", "site-b"])),
                ("batch".into(), strings(&["site-c"])),
            ],
        }
    }

    /// An eligible site of an existing group is accepted.
    #[test]
    fn eligible_site_is_accepted() {
        example().check("site-b", "default").expect("eligible");
    }

    /// An unknown site and an unknown group are both named, with what exists.
    #[test]
    fn unknown_site_and_group_are_both_named() {
        let e = example().check("site-z", "nope").expect_err("unknown");
        let message = e.to_string();
        assert!(message.contains("unknown site `site-z`"), "{message}");
        assert!(message.contains("unknown group `nope`"), "{message}");
        assert!(
            message.contains("site-a, site-b, site-c, witness"),
            "{message}"
        );
        assert!(message.contains("default, batch"), "{message}");
        let e = example()
            .check("site-a", "nope")
            .expect_err("unknown group");
        assert!(!e.to_string().contains("unknown site"), "{e}");
    }

    /// A site in no group is a witness and is refused as such.
    #[test]
    fn witness_is_refused() {
        let e = example().check("witness", "default").expect_err("witness");
        assert!(matches!(e, PlacementError::Witness { .. }), "{e:?}");
        assert!(e.to_string().contains("is a witness"), "{e}");
    }

    /// A site of another group is refused as not eligible, naming the group's sites.
    #[test]
    fn site_of_another_group_is_not_eligible() {
        let e = example()
            .check("site-c", "default")
            .expect_err("not eligible");
        assert!(matches!(e, PlacementError::NotEligible { .. }), "{e:?}");
        assert!(e.to_string().contains("(site-a, site-b)"), "{e}");
    }
}
