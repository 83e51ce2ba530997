//! Names that reach the node from users: site host names and release numbers.
//!
//! They are parsed once, where they come in, into types that can then be trusted
//! everywhere else (in paths, Apache configuration, host names) without checking again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// "4294967295." is the longest prefix `version_host` adds; a site name must leave room
/// for it so that every N.host of a valid site is itself a valid host name.
const MAX_VERSION_PREFIX_LEN: usize = 11;
/// The longest a site name may be.
pub const MAX_SITE_NAME_LEN: usize = MAX_HOST_LEN - MAX_VERSION_PREFIX_LEN;

/// Why a name was refused. The Display form names the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid site name {input:?}: {reason}")]
    SiteName { input: String, reason: String },
    #[error("invalid default domain {input:?}: {reason}")]
    DefaultDomain { input: String, reason: String },
    #[error("invalid release id {input:?}: {reason}")]
    ReleaseId { input: String, reason: String },
    #[error("invalid host name {input:?}: {reason}")]
    HostName { input: String, reason: String },
}

/// The domain a node appends to bare site names ("blog" -> "blog.example.com"):
/// checked once, when the config is read, then trusted by every parse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    pub fn parse(input: &str) -> Result<Domain, NameError> {
        let domain = input.to_ascii_lowercase();
        check_host(&domain, MAX_HOST_LEN).map_err(|reason| NameError::DefaultDomain {
            input: input.to_owned(),
            reason,
        })?;
        Ok(Domain(domain))
    }

    /// A dev node's domain: `localhost` resolves to 127.0.0.1 everywhere.
    pub fn localhost() -> Domain {
        Domain("localhost".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Domain {
    type Error = NameError;
    fn try_from(s: String) -> Result<Domain, NameError> {
        Domain::parse(&s)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A site's host name, e.g. "blog.example.com": lower case and a valid DNS name.
/// Written out (release.toml, state) as the full name, and read back only as one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteName(String);

impl SiteName {
    /// `input` is what a user typed ("blog" or "blog.example.com"); a name without a dot gets
    /// ".{default_domain}" appended. Lower-cased. Errors name the input and the reason.
    pub fn parse(input: &str, domain: &Domain) -> Result<SiteName, NameError> {
        let domain = domain.as_str();

        let site_error = |reason: String| NameError::SiteName {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(site_error("the name is empty".to_owned()));
        }
        let lower = input.to_ascii_lowercase();
        let name = if lower.contains('.') {
            lower
        } else {
            format!("{lower}.{domain}")
        };
        check_host(&name, MAX_SITE_NAME_LEN).map_err(site_error)?;

        // At least two labels hold by construction: a name without a dot got the domain
        // appended, and a name with a dot has passed the empty-label check.
        let labels: Vec<&str> = name.split('.').collect();
        let first = labels[0];
        if first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(site_error(
                "the first label may not be a number (that is the N.host of a site)".to_owned(),
            ));
        }
        if first == "prev" {
            return Err(site_error(
                "the first label may not be \"prev\" (that is the prev.host of a site)".to_owned(),
            ));
        }
        if labels.last() == Some(&"invalid") {
            return Err(site_error(
                "the last label may not be \"invalid\" (reserved for the node's internal hosts)"
                    .to_owned(),
            ));
        }
        Ok(SiteName(name))
    }

    /// Checks that `input` can name a site on some node (a bare name, to
    /// which the node adds its domain, or a full one), for a client that
    /// does not know the node's domain.
    pub fn check_shape(input: &str) -> Result<(), NameError> {
        SiteName::parse(input, &Domain::localhost()).map(|_| ())
    }

    /// A full site name only (no domain is added): how the node reads back
    /// the names it wrote.
    pub fn parse_full(input: &str) -> Result<SiteName, NameError> {
        if !input.contains('.') {
            return Err(NameError::SiteName {
                input: input.to_owned(),
                reason: "a full site name is expected here (blog.example.com)".to_owned(),
            });
        }
        SiteName::parse(input, &Domain::localhost())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host that serves one release of the site directly: "1.blog.example.com".
    pub fn version_host(&self, version: u32) -> String {
        format!("{version}.{}", self.0)
    }

    /// The host that serves the site's previous release: "prev.blog.example.com".
    pub fn prev_host(&self) -> String {
        format!("prev.{}", self.0)
    }
}

impl TryFrom<String> for SiteName {
    type Error = NameError;
    fn try_from(s: String) -> Result<SiteName, NameError> {
        SiteName::parse_full(&s)
    }
}

impl From<SiteName> for String {
    fn from(s: SiteName) -> String {
        s.0
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A further name a site answers (an alias, `www.blog.example.com`): a full
/// DNS host name, lower case, that a certificate can be issued for. No
/// wildcard, no IP address, no name of the node's own (`.invalid`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn parse(input: &str) -> Result<HostName, NameError> {
        let error = |reason: &str| NameError::HostName {
            input: input.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        let name = input.to_ascii_lowercase();
        if name.contains('*') {
            return Err(error(
                "wildcards are not supported: name each host (ACME's http-01 challenge cannot prove a wildcard)",
            ));
        }
        if name.contains(':') || name.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(error(
                "an IP address is not a host name (certificates are issued for DNS names)",
            ));
        }
        if name.contains("..") {
            return Err(error("empty label (\"..\")"));
        }
        check_host(&name, MAX_HOST_LEN).map_err(|r| error(&r))?;
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(error("a full host name is expected (www.example.com)"));
        }
        if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(error(
                "an IP address is not a host name (certificates are issued for DNS names)",
            ));
        }
        if labels.last() == Some(&"invalid") {
            return Err(error(
                "the last label may not be \"invalid\" (reserved for the node's internal hosts)",
            ));
        }
        Ok(HostName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = NameError;
    fn try_from(s: String) -> Result<HostName, NameError> {
        HostName::parse(&s)
    }
}

impl From<HostName> for String {
    fn from(h: HostName) -> String {
        h.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the DNS host name rules shared by site names and the default domain; `name` is
/// already lower case. Returns the reason on failure.
fn check_host(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "character {c:?} is not allowed (only a-z, 0-9, '-' and '.')"
        ));
    }
    if name.ends_with('.') {
        return Err("the name may not end with a dot".to_owned());
    }
    if name.len() > max_len {
        return Err(format!(
            "the name is {} characters long, at most {max_len} are allowed",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".to_owned());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "a label is {} characters long, at most {MAX_LABEL_LEN} are allowed",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} may not start or end with '-'"));
        }
    }
    Ok(())
}

/// The number of one release of a site; releases are numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReleaseId(u32);

impl ReleaseId {
    /// For numbers the node produces itself; text from outside goes through [`ReleaseId::parse`].
    pub fn new(n: u32) -> Self {
        ReleaseId(n)
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Digits only, greater than 0, without leading zeros: a release has exactly one
    /// spelling, so "007" cannot name the directory or host of release 7.
    pub fn parse(s: &str) -> Result<ReleaseId, NameError> {
        let error = |reason: &str| NameError::ReleaseId {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error("must be a whole number greater than 0"));
        }
        if s.bytes().all(|b| b == b'0') {
            return Err(error("must be greater than 0"));
        }
        if s.starts_with('0') {
            return Err(error("leading zeros are not allowed"));
        }
        s.parse::<u32>()
            .map(ReleaseId)
            .map_err(|_| error("the number is too large"))
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(domain: &str) -> Domain {
        Domain::parse(domain).unwrap()
    }

    fn site(input: &str) -> Result<SiteName, String> {
        SiteName::parse(input, &d("localhost")).map_err(|e| e.to_string())
    }

    fn refused(input: &str) -> String {
        match site(input) {
            Ok(name) => panic!("{input:?} was accepted as {name}"),
            Err(message) => message,
        }
    }

    #[test]
    fn short_name_gets_default_domain() {
        assert_eq!(site("blog").unwrap().as_str(), "blog.localhost");
        let name = SiteName::parse("blog", &d("example.com")).unwrap();
        assert_eq!(name.as_str(), "blog.example.com");
    }

    #[test]
    fn name_with_dot_is_taken_whole() {
        let name = SiteName::parse("blog.example.com", &d("localhost")).unwrap();
        assert_eq!(name.as_str(), "blog.example.com");
        assert_eq!(site("a.b").unwrap().as_str(), "a.b");
    }

    #[test]
    fn upper_case_is_lowered() {
        assert_eq!(
            site("Blog.Example.COM").unwrap().as_str(),
            "blog.example.com"
        );
        let name = SiteName::parse("BLOG", &d("LocalHost")).unwrap();
        assert_eq!(name.as_str(), "blog.localhost");
    }

    #[test]
    fn accepts_digits_and_hyphens_inside_labels() {
        assert_eq!(site("my-blog2").unwrap().as_str(), "my-blog2.localhost");
        assert_eq!(site("2fast").unwrap().as_str(), "2fast.localhost");
        assert_eq!(site("a.123.com").unwrap().as_str(), "a.123.com");
        assert_eq!(site("prevent.com").unwrap().as_str(), "prevent.com");
        assert_eq!(site("invalid.com").unwrap().as_str(), "invalid.com");
        assert_eq!(
            site("xn--bcher-kva").unwrap().as_str(),
            "xn--bcher-kva.localhost"
        );
    }

    #[test]
    fn display_and_hosts() {
        let name = SiteName::parse("blog", &d("example.com")).unwrap();
        assert_eq!(name.to_string(), "blog.example.com");
        assert_eq!(name.version_host(1), "1.blog.example.com");
        assert_eq!(name.version_host(42), "42.blog.example.com");
        assert_eq!(name.prev_host(), "prev.blog.example.com");
    }

    #[test]
    fn derived_hosts_are_valid_host_names() {
        let label = "a".repeat(60);
        let long = format!("{label}.{label}.{label}.{}", "b".repeat(59));
        assert_eq!(long.len(), MAX_SITE_NAME_LEN);
        let name = site(&long).unwrap();
        let host = name.version_host(u32::MAX);
        assert!(host.len() <= MAX_HOST_LEN, "{} > 253", host.len());
        assert!(name.prev_host().len() <= MAX_HOST_LEN);
    }

    #[test]
    fn refuses_empty_input() {
        assert_eq!(refused(""), r#"invalid site name "": the name is empty"#);
    }

    #[test]
    fn refuses_empty_labels() {
        assert_eq!(refused("a..b"), r#"invalid site name "a..b": empty label"#);
        assert_eq!(
            refused(".blog"),
            r#"invalid site name ".blog": empty label"#
        );
        assert_eq!(
            refused("."),
            r#"invalid site name ".": the name may not end with a dot"#
        );
    }

    #[test]
    fn refuses_trailing_dot() {
        assert_eq!(
            refused("blog.example.com."),
            r#"invalid site name "blog.example.com.": the name may not end with a dot"#
        );
    }

    #[test]
    fn refuses_characters_outside_dns() {
        assert_eq!(
            refused("a/b"),
            r#"invalid site name "a/b": character '/' is not allowed (only a-z, 0-9, '-' and '.')"#
        );
        assert_eq!(
            refused("../etc"),
            r#"invalid site name "../etc": character '/' is not allowed (only a-z, 0-9, '-' and '.')"#
        );
        assert_eq!(
            refused("my blog"),
            r#"invalid site name "my blog": character ' ' is not allowed (only a-z, 0-9, '-' and '.')"#
        );
        assert_eq!(
            refused(" blog"),
            r#"invalid site name " blog": character ' ' is not allowed (only a-z, 0-9, '-' and '.')"#
        );
        assert_eq!(
            refused("my_blog"),
            r#"invalid site name "my_blog": character '_' is not allowed (only a-z, 0-9, '-' and '.')"#
        );
        assert!(refused("blög").contains("character 'ö' is not allowed"));
        assert!(refused("a\nb").contains(r"character '\n' is not allowed"));
        assert!(refused("a:80").contains("character ':' is not allowed"));
    }

    #[test]
    fn refuses_double_dot_path() {
        assert_eq!(
            refused(".."),
            r#"invalid site name "..": the name may not end with a dot"#
        );
        assert_eq!(
            refused("..blog"),
            r#"invalid site name "..blog": empty label"#
        );
    }

    #[test]
    fn refuses_hyphen_at_label_edges() {
        assert_eq!(
            refused("-blog"),
            r#"invalid site name "-blog": label "-blog" may not start or end with '-'"#
        );
        assert_eq!(
            refused("blog-.com"),
            r#"invalid site name "blog-.com": label "blog-" may not start or end with '-'"#
        );
        assert!(refused("a.-b.com").contains(r#"label "-b""#));
    }

    #[test]
    fn label_length_limit() {
        let ok = "a".repeat(63);
        assert_eq!(site(&ok).unwrap().as_str(), format!("{ok}.localhost"));
        let long = "a".repeat(64);
        assert_eq!(
            refused(&long),
            format!(
                "invalid site name {long:?}: a label is 64 characters long, at most 63 are allowed"
            )
        );
    }

    #[test]
    fn total_length_limit() {
        let label = "a".repeat(60);
        let too_long = format!("{label}.{label}.{label}.{}", "b".repeat(60));
        assert_eq!(too_long.len(), MAX_SITE_NAME_LEN + 1);
        assert_eq!(
            refused(&too_long),
            format!(
                "invalid site name {too_long:?}: the name is 243 characters long, at most 242 are allowed"
            )
        );
        // The length counts the appended domain.
        let domain = format!("{label}.{label}.{label}");
        let fits = "c".repeat(MAX_SITE_NAME_LEN - domain.len() - 1);
        assert!(SiteName::parse(&fits, &d(&domain)).is_ok());
        let err = SiteName::parse(&format!("{fits}d"), &d(&domain)).unwrap_err();
        assert!(err.to_string().contains("243 characters long"), "{err}");
    }

    #[test]
    fn refuses_number_as_first_label() {
        assert_eq!(
            refused("1.blog.localhost"),
            r#"invalid site name "1.blog.localhost": the first label may not be a number (that is the N.host of a site)"#
        );
        assert_eq!(
            refused("42"),
            r#"invalid site name "42": the first label may not be a number (that is the N.host of a site)"#
        );
        assert!(refused("10.0.0.1").contains("may not be a number"));
    }

    #[test]
    fn refuses_prev_as_first_label() {
        assert_eq!(
            refused("prev.blog.localhost"),
            r#"invalid site name "prev.blog.localhost": the first label may not be "prev" (that is the prev.host of a site)"#
        );
        assert!(refused("PREV.blog.localhost").contains(r#"may not be "prev""#));
        assert!(refused("prev").contains(r#"may not be "prev""#));
    }

    #[test]
    fn refuses_invalid_top_label() {
        assert_eq!(
            refused("blog.invalid"),
            r#"invalid site name "blog.invalid": the last label may not be "invalid" (reserved for the node's internal hosts)"#
        );
        assert!(refused("a.b.INVALID").contains(r#"may not be "invalid""#));
        let err = SiteName::parse("blog", &d("invalid")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"invalid site name "blog": the last label"#)
        );
    }

    #[test]
    fn default_domain_is_validated() {
        // A single label is a fine domain.
        assert!(SiteName::parse("blog", &d("localhost")).is_ok());
        let err = Domain::parse("").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid default domain "": the name is empty"#
        );
        let err = Domain::parse("example..com").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid default domain "example..com": empty label"#
        );
        let err = Domain::parse("example.com.").unwrap_err();
        assert!(err.to_string().contains("may not end with a dot"));
        let err = Domain::parse("ex_ample.com").unwrap_err();
        assert!(matches!(err, NameError::DefaultDomain { .. }));
        assert!(Domain::parse("bad domain").is_err());
        // The number and "prev" rules are about site names only.
        assert!(SiteName::parse("blog", &d("prev.example.com")).is_ok());
        assert!(SiteName::parse("blog", &d("127")).is_ok());
        assert_eq!(Domain::parse("LocalHost").unwrap().as_str(), "localhost");
    }

    #[test]
    fn full_names_read_back_as_full_names_only() {
        let name = SiteName::parse_full("blog.example.com").unwrap();
        assert_eq!(name.as_str(), "blog.example.com");
        assert!(SiteName::parse_full("blog").is_err());
        let back: SiteName = toml::from_str::<std::collections::BTreeMap<String, SiteName>>(
            "s = \"blog.example.com\"",
        )
        .unwrap()["s"]
            .clone();
        assert_eq!(back, name);
    }

    #[test]
    fn site_names_order_and_compare() {
        let a = site("a").unwrap();
        let b = site("b").unwrap();
        assert!(a < b);
        assert_eq!(site("A").unwrap(), a);
    }

    #[test]
    fn release_id_basics() {
        let one = ReleaseId::new(1);
        assert_eq!(one.get(), 1);
        assert_eq!(one.to_string(), "1");
        assert!(one < ReleaseId::new(2));
    }

    #[test]
    fn release_id_parse() {
        assert_eq!(ReleaseId::parse("1"), Ok(ReleaseId::new(1)));
        assert_eq!(ReleaseId::parse("4294967295"), Ok(ReleaseId::new(u32::MAX)));
        let msg = |s: &str| ReleaseId::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("0"),
            r#"invalid release id "0": must be greater than 0"#
        );
        assert_eq!(
            msg("000"),
            r#"invalid release id "000": must be greater than 0"#
        );
        assert_eq!(
            msg("07"),
            r#"invalid release id "07": leading zeros are not allowed"#
        );
        assert_eq!(
            msg(""),
            r#"invalid release id "": must be a whole number greater than 0"#
        );
        for bad in ["-1", "+1", " 1", "1 ", "1.0", "x", "1e3", "٣"] {
            assert_eq!(
                msg(bad),
                format!("invalid release id {bad:?}: must be a whole number greater than 0")
            );
        }
        assert_eq!(
            msg("4294967296"),
            r#"invalid release id "4294967296": the number is too large"#
        );
    }

    #[test]
    fn release_id_serde_is_the_number() {
        let json = serde_json::to_string(&ReleaseId::new(7)).unwrap();
        assert_eq!(json, "7");
        let back: ReleaseId = serde_json::from_str("12").unwrap();
        assert_eq!(back, ReleaseId::new(12));
    }

    #[test]
    fn host_names_refuse_wildcards_ips_and_dots() {
        assert_eq!(
            HostName::parse("WWW.Blog.Example.com").unwrap().as_str(),
            "www.blog.example.com"
        );
        for (input, why) in [
            ("*.example.com", "wildcards are not supported"),
            ("*", "wildcards are not supported"),
            ("a..example.com", "empty label"),
            ("..", "empty label"),
            ("127.0.0.1", "an IP address"),
            ("::1", "an IP address"),
            ("blog", "a full host name"),
            ("x.invalid", "reserved"),
            ("bl og.example.com", "not allowed"),
        ] {
            let e = HostName::parse(input).unwrap_err().to_string();
            assert!(e.contains(why), "{input}: {e}");
        }
    }
}
