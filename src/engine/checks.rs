//! What a release must answer before it is switched live: its health check
//! path (app.ini `health_check`, default `/`) with a 2xx or 3xx, and each
//! `update_fetch` path with a 2xx. A 4xx is not healthy: a framework that
//! refuses the site's Host (Django's ALLOWED_HOSTS) answers 400 to every
//! user, and a site that does so must not go live.

use std::path::Path;

use crate::app_ini::AppIni;
use crate::names::SiteName;

/// The paths a release is checked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    pub health: String,
    pub fetch: Vec<String>,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            health: "/".to_owned(),
            fetch: Vec::new(),
        }
    }
}

impl Checks {
    pub fn of(ini: &AppIni) -> Checks {
        Checks {
            health: ini.health_check.clone(),
            fetch: ini.update_fetch.clone(),
        }
    }
}

/// What an answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The health check: 2xx or 3xx.
    Healthy,
    /// A health path that Apache serves from static/: the app behind it
    /// need only have loaded (anything but a 5xx).
    Loaded,
    /// An `update_fetch` path: 2xx.
    Fetched,
}

impl Expect {
    /// Why `status` at `path` fails the check, or None when it passes.
    pub fn refusal(self, status: u16, path: &str, site: &SiteName) -> Option<String> {
        match self {
            Expect::Healthy if !(200..400).contains(&status) => {
                let hint = match status {
                    400 => format!(
                        "; a 400 is often a framework refusing the Host header: \
                         the app must accept {site}"
                    ),
                    404 => " (set app.ini health_check = PATH to check another path)".to_owned(),
                    _ => String::new(),
                };
                Some(format!(
                    "health check: GET {path} (Host: {site}) answered {status}, \
                     expected 2xx or 3xx{hint}"
                ))
            }
            Expect::Loaded if status >= 500 => {
                Some(format!("the app answered GET {path} with {status}"))
            }
            Expect::Fetched if !(200..300).contains(&status) => Some(format!(
                "update_fetch {path} answered {status} (expected 2xx)"
            )),
            _ => None,
        }
    }
}

/// Whether Apache answers `path` (query dropped) from the app's static/
/// directory, by the same rules as the generated configuration: the file
/// itself, or `index.html` of a directory path ending in `/`.
pub fn static_serves(app_dir: &Path, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let rel = path.trim_start_matches('/');
    // health_check is validated at the edge; this keeps it so for any caller.
    if rel.split('/').any(|seg| seg == "..") {
        return false;
    }
    let static_dir = app_dir.join("static");
    let file = if rel.is_empty() || path.ends_with('/') {
        static_dir.join(rel).join("index.html")
    } else {
        static_dir.join(rel)
    };
    file.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Domain;

    fn site() -> SiteName {
        SiteName::parse("blog", &Domain::parse("localhost").unwrap()).unwrap()
    }

    #[test]
    fn health_needs_2xx_or_3xx() {
        assert_eq!(Expect::Healthy.refusal(200, "/", &site()), None);
        assert_eq!(Expect::Healthy.refusal(302, "/", &site()), None);
        let bad_host = Expect::Healthy.refusal(400, "/", &site()).unwrap();
        assert!(bad_host.contains("answered 400"), "{bad_host}");
        assert!(
            bad_host.contains("must accept blog.localhost"),
            "{bad_host}"
        );
        assert!(
            Expect::Healthy
                .refusal(404, "/", &site())
                .unwrap()
                .contains("health_check = PATH")
        );
        assert!(Expect::Healthy.refusal(500, "/", &site()).is_some());
    }

    #[test]
    fn loaded_accepts_anything_below_500() {
        assert_eq!(Expect::Loaded.refusal(404, "/", &site()), None);
        assert!(Expect::Loaded.refusal(502, "/", &site()).is_some());
    }

    #[test]
    fn fetch_needs_2xx() {
        assert_eq!(Expect::Fetched.refusal(204, "/update", &site()), None);
        assert!(Expect::Fetched.refusal(301, "/update", &site()).is_some());
    }

    #[test]
    fn static_paths_follow_apaches_rules() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("static/docs")).unwrap();
        std::fs::write(dir.path().join("static/index.html"), "x").unwrap();
        std::fs::write(dir.path().join("static/docs/index.html"), "x").unwrap();
        std::fs::write(dir.path().join("static/robots.txt"), "x").unwrap();
        assert!(static_serves(dir.path(), "/"));
        assert!(static_serves(dir.path(), "/?x=1"));
        assert!(static_serves(dir.path(), "/docs/"));
        assert!(static_serves(dir.path(), "/robots.txt"));
        assert!(!static_serves(dir.path(), "/docs"));
        assert!(!static_serves(dir.path(), "/healthz"));
        assert!(!static_serves(dir.path(), "/../static/index.html"));
    }
}
