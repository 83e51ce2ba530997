//! What `toppcloud status` and `toppcloud releases SITE` show: the engine's
//! records of each site turned into two reports, as JSON for scripts
//! (`--json`) and as plain-text tables for people. Building and rendering
//! are pure; only [`Engine::status_report`] looks at the sites (a GET of
//! each live host through Apache).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::Engine;
use super::queue::Deploy;
use super::state::SiteState;
use crate::names::SiteName;

/// How long a site's live host has to answer before it counts as failing.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// One release as the reports name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    pub id: u32,
    pub version: Option<u32>,
    /// The commit it was built from (12 hex digits), when it came from git.
    pub commit: Option<String>,
    pub created: Option<String>,
    /// Who or what made it: `push by KEY`, `node deploy DIR`, ...
    pub source: Option<String>,
}

/// The site's newest deploy this node run remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastDeploy {
    pub id: String,
    /// queued, running, live or failed.
    pub state: String,
    /// When it finished, else started, else was queued.
    pub when: String,
    pub release: Option<u32>,
}

/// What a GET of the site's live host through Apache said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 2xx or 3xx within [`HEALTH_TIMEOUT`].
    Ok,
    /// The status code, or why there was none (`timeout`, `no answer`).
    Failing(String),
    NoLive,
    /// `toppcloud disable`: the hosts answer the maintenance page.
    Disabled,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Ok => f.write_str("ok"),
            Health::Failing(why) => write!(f, "failing ({why})"),
            Health::NoLive => f.write_str("no live release"),
            Health::Disabled => f.write_str("disabled (maintenance page)"),
        }
    }
}

impl Serialize for Health {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Health {
    /// The verdict on an answer's status code.
    pub fn of_status(status: u16) -> Health {
        if (200..400).contains(&status) {
            Health::Ok
        } else {
            Health::Failing(status.to_string())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub url: String,
    pub live: Option<ReleaseInfo>,
    pub prev: Option<ReleaseInfo>,
    pub last_deploy: Option<LastDeploy>,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub sites: Vec<SiteStatus>,
}

/// One kept release and what it is to the site now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRow {
    #[serde(flatten)]
    pub release: ReleaseInfo,
    /// live, prev or kept.
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleasesReport {
    pub site: String,
    /// Newest first.
    pub releases: Vec<ReleaseRow>,
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// Release `id` of the site, with what its record says (a release whose
/// record is missing still has its id).
pub fn release_info(st: &SiteState, id: crate::names::ReleaseId) -> ReleaseInfo {
    let r = st.record(id);
    ReleaseInfo {
        id: id.get(),
        version: r.and_then(|r| r.version),
        commit: r.and_then(|r| r.sha.as_deref()).map(short),
        created: r.map(|r| r.created.clone()),
        source: r.map(|r| r.source.clone()),
    }
}

pub fn last_deploy(d: &Deploy) -> LastDeploy {
    let state = serde_json::to_value(d.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    LastDeploy {
        id: d.id.clone(),
        state,
        when: d
            .finished_at
            .clone()
            .or_else(|| d.started_at.clone())
            .unwrap_or_else(|| d.queued_at.clone()),
        release: d.release,
    }
}

/// One site's line of the status report; `health` is the caller's probe
/// (ignored when nothing is live).
pub fn site_status(
    site: &SiteName,
    url: String,
    st: Option<&SiteState>,
    last: Option<&Deploy>,
    health: Health,
) -> SiteStatus {
    let live = st.and_then(|st| st.live.as_ref().map(|p| release_info(st, p.release)));
    let prev = st.and_then(|st| st.prev.as_ref().map(|p| release_info(st, p.release)));
    SiteStatus {
        site: site.to_string(),
        url,
        health: if st.is_some_and(|st| st.disabled) {
            Health::Disabled
        } else if live.is_some() {
            health
        } else {
            Health::NoLive
        },
        live,
        prev,
        last_deploy: last.map(last_deploy),
    }
}

/// The site's kept releases, newest first, each marked live, prev or kept.
pub fn releases(site: &SiteName, st: &SiteState) -> ReleasesReport {
    let live = st.live.as_ref().map(|p| p.release);
    let prev = st.prev.as_ref().map(|p| p.release);
    let mut rows: Vec<ReleaseRow> = st
        .releases
        .iter()
        .map(|r| ReleaseRow {
            release: release_info(st, r.id),
            state: if Some(r.id) == live {
                "live"
            } else if Some(r.id) == prev {
                "prev"
            } else {
                "kept"
            },
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.release.id));
    ReleasesReport {
        site: site.to_string(),
        releases: rows,
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column
/// is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An RFC 3339 time to the second, for a table.
fn when(t: &str) -> String {
    match t.split_once('.') {
        Some((secs, rest)) => {
            let zone = rest.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{secs}{zone}")
        }
        None => t.to_string(),
    }
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// For people: one line per site.
pub fn render_status(report: &StatusReport) -> String {
    if report.sites.is_empty() {
        return "no sites\n".to_string();
    }
    let rows: Vec<Vec<String>> = report
        .sites
        .iter()
        .map(|s| {
            let live = s.live.as_ref();
            vec![
                s.site.clone(),
                or_dash(live.map(|r| r.id)),
                or_dash(live.and_then(|r| r.version)),
                or_dash(live.and_then(|r| r.created.as_deref().map(when))),
                or_dash(live.and_then(|r| r.source.clone())),
                or_dash(s.prev.as_ref().map(|r| r.id)),
                or_dash(
                    s.last_deploy
                        .as_ref()
                        .map(|d| format!("{} {} {}", d.id, d.state, when(&d.when))),
                ),
                s.health.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SITE",
            "LIVE",
            "VERSION",
            "DEPLOYED",
            "BY",
            "PREV",
            "LAST DEPLOY",
            "HEALTH",
        ],
        &rows,
    )
}

/// For people: one line per kept release, newest first.
pub fn render_releases(report: &ReleasesReport) -> String {
    if report.releases.is_empty() {
        return format!("{} has no releases\n", report.site);
    }
    let rows: Vec<Vec<String>> = report
        .releases
        .iter()
        .map(|r| {
            let i = &r.release;
            vec![
                i.id.to_string(),
                r.state.to_string(),
                or_dash(i.version),
                or_dash(i.commit.clone()),
                or_dash(i.created.as_deref().map(when)),
                or_dash(i.source.clone()),
            ]
        })
        .collect();
    table(
        &["RELEASE", "STATE", "VERSION", "COMMIT", "CREATED", "BY"],
        &rows,
    )
}

/// A report as the client asked for it: JSON (one line) or a table.
pub fn render<T: Serialize>(report: &T, json: bool, text: impl Fn(&T) -> String) -> String {
    if json {
        let mut s = serde_json::to_string(report).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    } else {
        text(report)
    }
}

impl Engine {
    /// The sites the node knows (configured or deployed) that `visible`
    /// lets through.
    pub fn report_sites(&self, visible: impl Fn(&SiteName) -> bool) -> Vec<SiteName> {
        let mut all: Vec<SiteName> = self.cfg.sites.keys().cloned().collect();
        all.extend(self.sites().into_keys());
        all.sort();
        all.dedup();
        all.retain(|s| visible(s));
        all
    }

    /// The status of each site `visible` lets through, its live host
    /// probed through Apache (all at once, [`HEALTH_TIMEOUT`] each).
    pub async fn status_report(
        self: &Arc<Self>,
        visible: impl Fn(&SiteName) -> bool,
    ) -> StatusReport {
        let sites = self.sites();
        let mut probes = tokio::task::JoinSet::new();
        let names = self.report_sites(visible);
        for (i, site) in names.iter().enumerate() {
            if sites
                .get(site)
                .is_some_and(|st| st.live.is_some() && !st.disabled)
            {
                let engine = self.clone();
                let host = site.to_string();
                probes.spawn(async move { (i, engine.health(&host).await) });
            }
        }
        let mut health = vec![Health::NoLive; names.len()];
        while let Some(done) = probes.join_next().await {
            if let Ok((i, h)) = done {
                health[i] = h;
            }
        }
        let report = names
            .iter()
            .zip(health)
            .map(|(site, h)| {
                let last = self.deploys.recent(site, 1);
                site_status(
                    site,
                    self.url(site.as_str()),
                    sites.get(site),
                    last.first(),
                    h,
                )
            })
            .collect();
        StatusReport { sites: report }
    }

    /// A GET of `/` at `host` through Apache, as a visitor would.
    pub async fn health(&self, host: &str) -> Health {
        match self.apache.get(host, "/", HEALTH_TIMEOUT).await {
            Ok(r) => Health::of_status(r.status),
            Err(e) => match e.downcast_ref::<crate::apache::probe::ProbeError>() {
                Some(crate::apache::probe::ProbeError::Timeout(_)) => {
                    Health::Failing("timeout".into())
                }
                _ => Health::Failing("no answer".into()),
            },
        }
    }

    /// The site's kept releases; None for a site with none on record.
    pub fn releases_report(&self, site: &SiteName) -> Option<ReleasesReport> {
        let sites = self.sites();
        let st = sites.get(site)?;
        Some(releases(site, st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apache::Slot;
    use crate::engine::state::{Placed, ReleaseRecord};
    use crate::names::{Domain, ReleaseId};

    fn state() -> SiteState {
        let rec = |id: u32, sha: Option<&str>| ReleaseRecord {
            id: ReleaseId::new(id),
            version: Some(id.min(2)),
            created: format!("2026-11-30T10:0{id}:00Z"),
            source: format!("push by key{id}"),
            sha: sha.map(str::to_string),
        };
        SiteState {
            next_release: 4,
            live: Some(Placed {
                release: ReleaseId::new(3),
                slot: Slot::new(1),
            }),
            prev: Some(Placed {
                release: ReleaseId::new(2),
                slot: Slot::new(0),
            }),
            releases: vec![
                rec(1, None),
                rec(2, Some("0123456789abcdef0123456789abcdef01234567")),
                rec(3, Some("fedcba9876543210fedcba9876543210fedcba98")),
            ],
            disabled: false,
            on_demand: Vec::new(),
        }
    }

    fn blog() -> SiteName {
        SiteName::parse("blog", &Domain::localhost()).unwrap()
    }

    #[test]
    fn releases_are_newest_first_and_marked_live_prev_kept() {
        let r = releases(&blog(), &state());
        let ids: Vec<(u32, &str)> = r.releases.iter().map(|r| (r.release.id, r.state)).collect();
        assert_eq!(ids, [(3, "live"), (2, "prev"), (1, "kept")]);
        assert_eq!(
            r.releases[0].release.commit.as_deref(),
            Some("fedcba987654")
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["site"], "blog.localhost");
        assert_eq!(json["releases"][1]["id"], 2);
        assert_eq!(json["releases"][1]["state"], "prev");
        assert_eq!(json["releases"][1]["version"], 2);
        assert_eq!(json["releases"][1]["source"], "push by key2");
        assert_eq!(json["releases"][2]["commit"], serde_json::Value::Null);

        let text = render_releases(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("RELEASE  STATE  VERSION  COMMIT"),
            "{text}"
        );
        assert!(
            lines[1].starts_with(
                "3        live   2        fedcba987654  2026-11-30T10:03:00Z  push by key3"
            ),
            "{text}"
        );
        assert!(
            lines[3].contains(" kept ") && lines[3].contains(" - "),
            "{text}"
        );
        let empty = releases(&blog(), &SiteState::default());
        assert_eq!(render_releases(&empty), "blog.localhost has no releases\n");
    }

    #[test]
    fn status_names_live_prev_last_deploy_and_health() {
        let st = state();
        let s = site_status(
            &blog(),
            "http://blog.localhost:8080/".into(),
            Some(&st),
            None,
            Health::of_status(500),
        );
        assert_eq!(s.live.as_ref().map(|r| r.id), Some(3));
        assert_eq!(s.prev.as_ref().map(|r| r.id), Some(2));
        assert_eq!(s.health.to_string(), "failing (500)");
        let none = site_status(
            &SiteName::parse("new", &Domain::localhost()).unwrap(),
            "http://new.localhost:8080/".into(),
            None,
            None,
            Health::Ok,
        );
        assert_eq!(none.health, Health::NoLive);
        assert_eq!(Health::of_status(302), Health::Ok);
        let report = StatusReport {
            sites: vec![s, none],
        };
        let json: serde_json::Value =
            serde_json::from_str(&render(&report, true, render_status)).unwrap();
        assert_eq!(json["sites"][0]["live"]["id"], 3);
        assert_eq!(json["sites"][0]["prev"]["id"], 2);
        assert_eq!(json["sites"][0]["health"], "failing (500)");
        assert_eq!(json["sites"][1]["health"], "no live release");
        assert_eq!(json["sites"][1]["live"], serde_json::Value::Null);

        let text = render(&report, false, render_status);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("SITE            LIVE  VERSION"),
            "{text}"
        );
        assert!(
            lines[1].starts_with(
                "blog.localhost  3     2        2026-11-30T10:03:00Z  push by key3  2"
            ),
            "{text}"
        );
        assert!(lines[1].ends_with("failing (500)"), "{text}");
        assert!(lines[2].starts_with("new.localhost   -"), "{text}");
        assert!(lines[2].ends_with("no live release"), "{text}");
        assert_eq!(render_status(&StatusReport { sites: vec![] }), "no sites\n");
    }

    #[test]
    fn tables_show_times_to_the_second() {
        assert_eq!(
            when("2026-11-30T20:28:44.169015445Z"),
            "2026-11-30T20:28:44Z"
        );
        assert_eq!(
            when("2026-11-30T20:28:44+01:00"),
            "2026-11-30T20:28:44+01:00"
        );
        let mut st = state();
        st.releases[2].created = "2026-11-30T10:03:00.123Z".into();
        let text = render_releases(&releases(&blog(), &st));
        assert!(text.contains(" 2026-11-30T10:03:00Z "), "{text}");
        let json = serde_json::to_value(releases(&blog(), &st)).unwrap();
        assert_eq!(json["releases"][0]["created"], "2026-11-30T10:03:00.123Z");
    }

    #[test]
    fn the_last_deploy_says_when_it_last_moved() {
        let d = Deploy {
            id: "abc-1".into(),
            site: blog(),
            status: crate::engine::queue::Status::Failed,
            requested_by: vec!["push by k".into()],
            force: false,
            queued_at: "q".into(),
            started_at: Some("s".into()),
            finished_at: None,
            sha: None,
            release: None,
            message: None,
            log: vec![],
            log_lines_dropped: 0,
        };
        let l = last_deploy(&d);
        assert_eq!((l.state.as_str(), l.when.as_str()), ("failed", "s"));
    }
}
