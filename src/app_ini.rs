//! Reads an app's `app.ini` and interprets its `[production]` section.
//!
//! The original toppcloud used Python's RawConfigParser; this is a small reader of the same
//! dialect of our own, because every error has to point at a line of the file and the INI
//! crates don't keep line numbers.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "app.ini";
const SECTION: &str = "production";
const DEFAULT_RUNNER: &str = "main.py";
const DEFAULT_PYTHON_OBJECT: &str = "application";
const MAX_APP_NAME_LEN: usize = 64;

/// What `[production]` says about the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIni {
    pub app_name: String,
    pub version: Option<u32>,
    pub runner: Runner,
    /// The path checked before every switch (`health_check`, default `/`):
    /// it must answer 2xx or 3xx with the site's real Host.
    pub health_check: String,
    /// URL paths requested after each update, e.g. "/update".
    pub update_fetch: Vec<String>,
    /// `update_fetch` lines of the form `script:FILE ARGS...`: commands run
    /// in the release's environment before any request reaches it.
    pub release_tasks: Vec<ReleaseTask>,
    /// Not checked here: the caller knows the default domain to validate it against.
    pub default_host: Option<String>,
    pub packages: Vec<String>,
    pub services: Vec<Service>,
}

/// How the app is served. Paths are relative to the app directory and known to exist there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// A WSGI object in a Python file: "app/wsgi.py#app"; the object defaults to "application".
    Python { file: String, object: String },
    /// A Paste Deploy configuration file, optionally naming its section: "prod.ini#main".
    PasteDeploy {
        file: String,
        section: Option<String>,
    },
    /// Files only, no code.
    Static,
}

/// One `script:` entry of `update_fetch` (Silver Lining's form): a file of
/// the app and its arguments, split as a shell would, run by no shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTask {
    pub line: usize,
    /// The file, relative to the app (checked to exist), then its arguments.
    pub argv: Vec<String>,
}

impl ReleaseTask {
    /// How app.ini spells it, for messages.
    pub fn shown(&self) -> String {
        format!("script:{}", self.argv.join(" "))
    }
}

/// One `service.NAME = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Often empty: most services need no settings.
    pub value: String,
    pub line: usize,
}

/// Something in app.ini that is ignored but probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FILE_NAME}:{}: {}", self.line, self.message)
    }
}

/// Why app.ini was refused. `line` is missing only for problems with no place in the file,
/// such as a section or key that isn't there at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AppIniError {
    pub line: Option<usize>,
    pub message: String,
}

impl AppIniError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        AppIniError {
            line: Some(line),
            message: message.into(),
        }
    }

    fn whole_file(message: impl Into<String>) -> Self {
        AppIniError {
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for AppIniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{FILE_NAME}:{line}: {}", self.message),
            None => write!(f, "{FILE_NAME}: {}", self.message),
        }
    }
}

impl AppIni {
    /// Reads DIR/app.ini. Resolves the runner: when `runner` is missing, "main.py" if DIR/main.py exists,
    /// else error `app.ini: no runner set in [production] and no main.py in the app`.
    /// The runner file must exist as a regular file inside DIR: `app.ini:LINE: runner: no file "x.py" in the app`.
    /// A missing app.ini: `app.ini: not found in the app directory`.
    pub fn load(dir: &Path) -> Result<(AppIni, Vec<Warning>), AppIniError> {
        let root = dir.canonicalize().map_err(|e| {
            AppIniError::whole_file(format!(
                "cannot read the app directory {}: {e}",
                dir.display()
            ))
        })?;
        if !is_regular_file_inside(&root, FILE_NAME) {
            // A symlink pointing out of the app is refused like a directory would be, so
            // that error messages quoting values cannot show another file's contents.
            return Err(match fs::symlink_metadata(root.join(FILE_NAME)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    AppIniError::whole_file("not found in the app directory")
                }
                _ => AppIniError::whole_file("not a regular file inside the app directory"),
            });
        }
        let bytes = fs::read(root.join(FILE_NAME))
            .map_err(|e| AppIniError::whole_file(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            AppIniError::at(line, "not valid UTF-8")
        })?;
        AppIni::parse(&text, &|rel| is_regular_file_inside(&root, rel))
    }

    /// Parses text; `file_exists(relative_path)` answers whether a runner file exists (used by load).
    pub fn parse(
        text: &str,
        file_exists: &dyn Fn(&str) -> bool,
    ) -> Result<(AppIni, Vec<Warning>), AppIniError> {
        let sections = parse_sections(text)?;
        let production = sections
            .iter()
            .find(|s| s.name == SECTION)
            .ok_or_else(|| AppIniError::whole_file(format!("no [{SECTION}] section")))?;
        interpret(production, file_exists)
    }
}

/// `rel` has already been checked to be a plain relative path. Resolving symlinks and then
/// requiring the result to stay under `root` keeps links inside the app working while
/// refusing ones that lead out of it.
fn is_regular_file_inside(root: &Path, rel: &str) -> bool {
    match root.join(rel).canonicalize() {
        Ok(path) => path.starts_with(root) && path.is_file(),
        Err(_) => false,
    }
}

struct Section {
    name: String,
    line: usize,
    entries: Vec<Entry>,
}

struct Entry {
    key: String,
    line: usize,
    /// The text after the separator, then each continuation line, all trimmed and with
    /// their line numbers, so that errors about one list item can point at its own line.
    value_lines: Vec<(usize, String)>,
}

impl Entry {
    fn value(&self) -> String {
        let lines: Vec<&str> = self.value_lines.iter().map(|(_, v)| v.as_str()).collect();
        lines.join("\n").trim().to_owned()
    }

    /// A value that must be one line of text, with the line it is on.
    fn single(&self) -> Result<(usize, &str), AppIniError> {
        let mut lines = self.value_lines.iter().filter(|(_, v)| !v.is_empty());
        match (lines.next(), lines.next()) {
            (None, _) => Err(AppIniError::at(self.line, format!("{} is empty", self.key))),
            (Some((line, value)), None) => Ok((*line, value.as_str())),
            (Some(_), Some((line, _))) => Err(AppIniError::at(
                *line,
                format!("{} must be on one line", self.key),
            )),
        }
    }

    /// A whitespace-separated list that may go over several lines, with each item's line.
    fn list(&self) -> Result<Vec<(usize, &str)>, AppIniError> {
        if self.value_lines.iter().all(|(_, v)| v.is_empty()) {
            return Err(AppIniError::at(self.line, format!("{} is empty", self.key)));
        }
        Ok(self
            .value_lines
            .iter()
            .filter(|(_, v)| !v.starts_with('#'))
            .flat_map(|(line, v)| v.split_whitespace().map(|item| (*line, item)))
            .collect())
    }
}

/// The INI syntax, for the whole file: a syntax error in any section is an error.
fn parse_sections(text: &str) -> Result<Vec<Section>, AppIniError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if raw.starts_with(char::is_whitespace) {
            // Comments and blank lines in between don't end the value being continued,
            // but a section header does, since the new section has no entries yet.
            match sections.last_mut().and_then(|s| s.entries.last_mut()) {
                Some(entry) => entry.value_lines.push((line, trimmed.to_owned())),
                None => {
                    return Err(AppIniError::at(
                        line,
                        "indented line with no option to continue",
                    ));
                }
            }
            continue;
        }
        if trimmed.starts_with('[') {
            let name = section_name(trimmed, line)?;
            if let Some(first) = sections.iter().find(|s| s.name == name) {
                return Err(AppIniError::at(
                    line,
                    format!("duplicate section [{name}] (first on line {})", first.line),
                ));
            }
            sections.push(Section {
                name: name.to_owned(),
                line,
                entries: Vec::new(),
            });
            continue;
        }
        let Some(at) = trimmed.find(['=', ':']) else {
            return Err(AppIniError::at(
                line,
                "expected \"key = value\" or \"[section]\"",
            ));
        };
        let key = trimmed[..at].trim().to_lowercase();
        let value = trimmed[at + 1..].trim();
        if key.is_empty() {
            let separator = &trimmed[at..at + 1];
            return Err(AppIniError::at(
                line,
                format!("missing key before {separator:?}"),
            ));
        }
        let Some(section) = sections.last_mut() else {
            return Err(AppIniError::at(
                line,
                format!("option {key:?} before any [section]"),
            ));
        };
        if let Some(first) = section.entries.iter().find(|e| e.key == key) {
            return Err(AppIniError::at(
                line,
                format!(
                    "duplicate key {key:?} in [{}] (first on line {})",
                    section.name, first.line
                ),
            ));
        }
        section.entries.push(Entry {
            key,
            line,
            value_lines: vec![(line, value.to_owned())],
        });
    }
    Ok(sections)
}

/// `header` is a trimmed line starting with '['.
fn section_name(header: &str, line: usize) -> Result<&str, AppIniError> {
    let Some(inner) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else {
        let message = if header.contains(']') {
            "text after \"]\" in a section header".to_owned()
        } else {
            format!("unterminated section header {header:?}")
        };
        return Err(AppIniError::at(line, message));
    };
    let name = inner.trim();
    if name.is_empty() {
        return Err(AppIniError::at(line, "empty section name"));
    }
    Ok(name)
}

fn interpret(
    section: &Section,
    file_exists: &dyn Fn(&str) -> bool,
) -> Result<(AppIni, Vec<Warning>), AppIniError> {
    let mut app_name = None;
    let mut version = None;
    let mut runner = None;
    let mut health_check = None;
    let mut update_fetch = Vec::new();
    let mut release_tasks = Vec::new();
    let mut default_host = None;
    let mut packages = Vec::new();
    let mut services = Vec::new();
    let mut warnings = Vec::new();

    for entry in &section.entries {
        match entry.key.as_str() {
            "app_name" => {
                let (line, value) = entry.single()?;
                app_name = Some(parse_app_name(value, line)?);
            }
            "version" => {
                let (line, value) = entry.single()?;
                version = Some(parse_version(value, line)?);
            }
            "runner" => {
                let (line, value) = entry.single()?;
                runner = Some(parse_runner(value, line, file_exists)?);
            }
            "health_check" => {
                let (line, value) = entry.single()?;
                health_check = Some(parse_health_check(value, line)?);
            }
            "update_fetch" => {
                (update_fetch, release_tasks) = parse_update_fetch(entry, file_exists)?;
            }
            "default_host" => default_host = Some(entry.single()?.1.to_owned()),
            "packages" => {
                packages = entry
                    .list()?
                    .into_iter()
                    .map(|(_, p)| p.to_owned())
                    .collect();
            }
            key => match key.strip_prefix("service.") {
                Some("") => {
                    return Err(AppIniError::at(
                        entry.line,
                        format!("service name missing in {key:?}"),
                    ));
                }
                // Unlike other keys, a service may have an empty value: "service.mysql ="
                // is how an app asks for a service that needs no settings.
                Some(name) => services.push(Service {
                    name: name.to_owned(),
                    value: entry.value(),
                    line: entry.line,
                }),
                None => warnings.push(Warning {
                    line: entry.line,
                    message: format!("unknown key {key:?} (ignored)"),
                }),
            },
        }
    }

    let app_name = app_name.ok_or_else(|| {
        AppIniError::whole_file(format!("app_name is required in [{}]", section.name))
    })?;
    let runner = match runner {
        Some(runner) => runner,
        None if file_exists(DEFAULT_RUNNER) => Runner::Python {
            file: DEFAULT_RUNNER.to_owned(),
            object: DEFAULT_PYTHON_OBJECT.to_owned(),
        },
        None => {
            return Err(AppIniError::whole_file(format!(
                "no runner set in [{}] and no {DEFAULT_RUNNER} in the app",
                section.name
            )));
        }
    };
    let app = AppIni {
        app_name,
        version,
        runner,
        health_check: health_check.unwrap_or_else(|| "/".to_owned()),
        update_fetch,
        release_tasks,
        default_host,
        packages,
        services,
    };
    Ok((app, warnings))
}

fn parse_app_name(value: &str, line: usize) -> Result<String, AppIniError> {
    let valid = value.len() <= MAX_APP_NAME_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(AppIniError::at(
            line,
            format!(
                "app_name must be 1 to {MAX_APP_NAME_LEN} characters of A-Z, a-z, 0-9, '_' and '-', got {value:?}"
            ),
        ));
    }
    Ok(value.to_owned())
}

fn parse_version(value: &str, line: usize) -> Result<u32, AppIniError> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppIniError::at(
            line,
            format!("version must be a whole number, got {value:?}"),
        ));
    }
    value
        .parse()
        .map_err(|_| AppIniError::at(line, format!("version is too large, got {value:?}")))
}

fn parse_runner(
    value: &str,
    line: usize,
    file_exists: &dyn Fn(&str) -> bool,
) -> Result<Runner, AppIniError> {
    if value == "static" {
        return Ok(Runner::Static);
    }
    let (file, fragment) = match value.split_once('#') {
        Some((file, fragment)) => (file, Some(fragment)),
        None => (value, None),
    };
    let is_python = file.ends_with(".py");
    if !is_python && !file.ends_with(".ini") {
        return Err(AppIniError::at(
            line,
            format!("runner must be a .py file, a .ini file or \"static\", got {value:?}"),
        ));
    }
    check_relative_path(file)
        .map_err(|reason| AppIniError::at(line, format!("runner: {reason}, got {value:?}")))?;
    if fragment == Some("") {
        return Err(AppIniError::at(
            line,
            format!("runner: nothing after \"#\" in {value:?}"),
        ));
    }
    let runner = if is_python {
        let object = fragment.unwrap_or(DEFAULT_PYTHON_OBJECT);
        if !is_python_dotted_name(object) {
            return Err(AppIniError::at(
                line,
                format!("runner: {object:?} is not a Python name (identifiers joined by dots)"),
            ));
        }
        Runner::Python {
            file: file.to_owned(),
            object: object.to_owned(),
        }
    } else {
        Runner::PasteDeploy {
            file: file.to_owned(),
            section: fragment.map(str::to_owned),
        }
    };
    if !file_exists(file) {
        return Err(AppIniError::at(
            line,
            format!("runner: no file {file:?} in the app"),
        ));
    }
    Ok(runner)
}

/// The runner path ends up joined to the app directory and written into the web server's
/// configuration, so it must stay inside the app and be free of anything needing quoting.
fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.starts_with('/') {
        return Err("the path must be relative to the app");
    }
    if path.contains('\\') {
        return Err("backslashes are not allowed in the path");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("spaces and control characters are not allowed in the path");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("empty component in the path"),
            "." | ".." => return Err("\".\" and \"..\" are not allowed in the path"),
            _ => {}
        }
    }
    Ok(())
}

fn is_python_dotted_name(name: &str) -> bool {
    name.split('.').all(|part| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// `health_check = /healthz`: one URL path, possibly with a query. It goes
/// into a request line, so nothing that could end or bend one is allowed.
fn parse_health_check(value: &str, line: usize) -> Result<String, AppIniError> {
    let refuse = |why: &str| {
        AppIniError::at(
            line,
            format!("health_check: {value:?} {why} (health_check = /healthz)"),
        )
    };
    if !value.starts_with('/') {
        return Err(refuse("must be a URL path starting with \"/\""));
    }
    if value.len() > 1024 {
        return Err(refuse("is longer than 1024 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '#' || *c == '\\')
    {
        return Err(refuse(&format!("may not contain {c:?}")));
    }
    let path = value.split('?').next().unwrap_or(value);
    if path.split('/').any(|seg| seg == "..") {
        return Err(refuse("may not contain a \"..\" segment"));
    }
    Ok(value.to_owned())
}

/// `update_fetch`: URL paths, and `script:` lines (each a whole line).
fn parse_update_fetch(
    entry: &Entry,
    file_exists: &dyn Fn(&str) -> bool,
) -> Result<(Vec<String>, Vec<ReleaseTask>), AppIniError> {
    if entry.value_lines.iter().all(|(_, v)| v.is_empty()) {
        return Err(AppIniError::at(entry.line, "update_fetch is empty"));
    }
    let mut paths = Vec::new();
    let mut tasks = Vec::new();
    for (line, value) in &entry.value_lines {
        let value = value.trim();
        if value.is_empty() || value.starts_with('#') {
            continue;
        }
        if let Some(command) = value.strip_prefix("script:") {
            let argv = shell_words::split(command)
                .map_err(|e| AppIniError::at(*line, format!("update_fetch: {value:?}: {e}")))?;
            let Some(file) = argv.first() else {
                return Err(AppIniError::at(
                    *line,
                    "update_fetch: script: names no file (script:manage.py migrate)",
                ));
            };
            let path = Path::new(file);
            let inside = path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if !inside {
                return Err(AppIniError::at(
                    *line,
                    format!("update_fetch: script:{file}: the file must be inside the app"),
                ));
            }
            if !file_exists(file) {
                return Err(AppIniError::at(
                    *line,
                    format!("update_fetch: script:{file}: no such file in the app"),
                ));
            }
            tasks.push(ReleaseTask { line: *line, argv });
            continue;
        }
        for item in value.split_whitespace() {
            if !item.starts_with('/') {
                return Err(AppIniError::at(
                    *line,
                    format!(
                        "update_fetch: {item:?} must be a URL path starting with \"/\" or script:FILE"
                    ),
                ));
            }
            paths.push(item.to_owned());
        }
    }
    Ok((paths, tasks))
}

/// What is never part of an app: version control, local virtualenvs,
/// compiled files and editor leftovers (the original toppcloud's list, plus
/// `.venv` and swap files). `name/` matches directories only; `*` stands
/// at one end of a pattern. One list for every place that asks: staging a
/// release, `toppcloud update`'s rsync, `toppcloud serve`'s reloads.
pub const EXCLUDED: &[&str] = &[
    ".git/",
    ".svn/",
    ".hg/",
    ".bzr/",
    "CVS/",
    "__pycache__/",
    ".venv/",
    "*~",
    "#*",
    ".#*",
    ",*",
    "*$",
    "cvslog.*",
    ".del-*",
    "*.pyc",
    "*.pyo",
    "*.old",
    "*.bak",
    "*.BAK",
    "*.orig",
    "*.rej",
    "*.elc",
    "*.swp",
    "*.swx",
    "pip-log.txt",
    ".make.state",
    ".nse_depinfo",
];

/// Whether a file or directory named `name` is left out of an app.
pub fn excluded(name: &str, is_dir: bool) -> bool {
    EXCLUDED.iter().any(|p| match p.strip_suffix('/') {
        Some(dir) => is_dir && name == dir,
        None if is_dir => false,
        None => match (p.strip_prefix('*'), p.strip_suffix('*')) {
            (Some(tail), _) => name.ends_with(tail),
            (_, Some(head)) => name.starts_with(head),
            _ => name == *p,
        },
    })
}

/// The services a node offers, by their app.ini names.
pub const SERVICES: &[&str] = &["files", "postgresql", "postgis"];

/// What the app asks of the node beyond running its code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    /// `service.files`: a persistent directory (`CONFIG_FILES`), and
    /// `Some(path)` when the app also wants it linked at that path.
    pub files: Option<Option<String>>,
    /// `service.postgresql` or `service.postgis`: a database of the site's
    /// own; `true` with PostGIS enabled in it.
    pub postgres: Option<bool>,
}

impl AppIni {
    /// The services the app asks for, checked against what a node offers;
    /// an error names the line. `packages` is refused here too: installing
    /// system packages is the node admin's job, not a deploy's.
    pub fn services(&self) -> Result<Services, AppIniError> {
        if !self.packages.is_empty() {
            return Err(AppIniError {
                line: None,
                message: format!(
                    "packages = {}: a deploy cannot install system packages; ask the node's admin to install them, then remove the line",
                    self.packages.join(" ")
                ),
            });
        }
        let mut out = Services::default();
        for s in &self.services {
            match s.name.as_str() {
                "files" => {
                    let value = s.value.trim();
                    out.files = Some(if value.is_empty() {
                        None
                    } else {
                        Some(files_link(value).map_err(|m| AppIniError::at(s.line, m))?)
                    });
                }
                "postgresql" => {
                    out.postgres = Some(out.postgres.unwrap_or(false));
                }
                "postgis" => out.postgres = Some(true),
                other => {
                    return Err(AppIniError::at(
                        s.line,
                        format!(
                            "service.{other} is not offered by this node (it offers {})",
                            SERVICES.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Checks `service.files = PATH`: a relative path inside the app, not under
/// `static/` (Apache would serve the app's data), normalised.
fn files_link(value: &str) -> Result<String, String> {
    let path = Path::new(value);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            std::path::Component::CurDir => {}
            _ => {
                return Err(format!(
                    "service.files = {value}: the path must stay inside the app (relative, no ..)"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "service.files = {value}: names no path inside the app"
        ));
    }
    if parts[0] == "static" {
        return Err(format!(
            "service.files = {value}: not under static/ (Apache serves everything there to anyone)"
        ));
    }
    if parts
        .iter()
        .any(|p| excluded(p, true) || p.starts_with('.'))
    {
        return Err(format!(
            "service.files = {value}: a hidden or excluded name cannot hold the app's files"
        ));
    }
    Ok(parts.join("/"))
}

/// How the shim finds the app's WSGI callable (the shape tomllib reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunnerSpec {
    Python {
        file: String,
        object: String,
    },
    Paste {
        file: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        section: Option<String>,
    },
    Static,
}

impl From<&Runner> for RunnerSpec {
    fn from(r: &Runner) -> RunnerSpec {
        match r {
            Runner::Python { file, object } => RunnerSpec::Python {
                file: file.clone(),
                object: object.clone(),
            },
            Runner::PasteDeploy { file, section } => RunnerSpec::Paste {
                file: file.clone(),
                section: section.clone(),
            },
            Runner::Static => RunnerSpec::Static,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluded_names_follow_the_original_list() {
        for (name, dir) in [
            ("main.pyc", false),
            ("notes.txt~", false),
            ("#draft#", false),
            (".#lock", false),
            (".main.py.swp", false),
            (".git", true),
            (".venv", true),
            ("__pycache__", true),
        ] {
            assert!(excluded(name, dir), "{name}");
        }
        for (name, dir) in [
            ("main.py", false),
            ("static", true),
            (".git", false),
            ("venv", true),
        ] {
            assert!(!excluded(name, dir), "{name}");
        }
    }

    fn parse_with(text: &str, files: &[&str]) -> Result<(AppIni, Vec<Warning>), String> {
        AppIni::parse(text, &|path| files.contains(&path)).map_err(|e| e.to_string())
    }

    fn ok(text: &str) -> AppIni {
        let (app, warnings) = parse_with(text, &["main.py"]).unwrap();
        assert_eq!(warnings, vec![]);
        app
    }

    fn err(text: &str) -> String {
        match parse_with(text, &["main.py"]) {
            Ok(app) => panic!("accepted: {app:?}"),
            Err(message) => message,
        }
    }

    fn minimal() -> AppIni {
        AppIni {
            app_name: "blog".to_owned(),
            version: None,
            runner: Runner::Python {
                file: "main.py".to_owned(),
                object: "application".to_owned(),
            },
            health_check: "/".to_owned(),
            update_fetch: vec![],
            release_tasks: vec![],
            default_host: None,
            packages: vec![],
            services: vec![],
        }
    }

    #[test]
    fn health_check_path() {
        let app = ok("[production]\napp_name = blog\nhealth_check = /healthz?full=1\n");
        assert_eq!(app.health_check, "/healthz?full=1");
        assert_eq!(
            err("[production]\napp_name = blog\nhealth_check = healthz\n"),
            "app.ini:3: health_check: \"healthz\" must be a URL path starting with \"/\" (health_check = /healthz)"
        );
        assert_eq!(
            err("[production]\napp_name = blog\nhealth_check = /a/../b\n"),
            "app.ini:3: health_check: \"/a/../b\" may not contain a \"..\" segment (health_check = /healthz)"
        );
        assert_eq!(
            err("[production]\napp_name = blog\nhealth_check = /a b\n"),
            "app.ini:3: health_check: \"/a b\" may not contain ' ' (health_check = /healthz)"
        );
    }

    /// The path goes into the node's own request line: nothing in it may
    /// end that line, add a header or change the target.
    #[test]
    fn health_check_cannot_bend_the_nodes_request_line() {
        for value in ["/a\rX-Evil: 1", "/a\tb", "/a#frag", "/a\\b", "/\u{e9}"] {
            let text = format!("[production]\napp_name = blog\nhealth_check = {value}\n");
            let e = err(&text);
            assert!(e.starts_with("app.ini:3: health_check:"), "{value:?}: {e}");
            assert!(e.contains("may not contain"), "{value:?}: {e}");
        }
    }

    #[test]
    fn minimal_file() {
        assert_eq!(ok("[production]\napp_name = blog\n"), minimal());
    }

    #[test]
    fn full_file() {
        let text = "\
# the blog
[production]
app_name = my-Blog_2
version = 3
runner = app/wsgi.py#app
update_fetch = /update
default_host = blog.example.com
packages = libxml2 libxslt1.1
service.mysql =
service.files = size=10M
";
        let (app, warnings) = parse_with(text, &["app/wsgi.py"]).unwrap();
        assert_eq!(warnings, vec![]);
        assert_eq!(
            app,
            AppIni {
                app_name: "my-Blog_2".to_owned(),
                version: Some(3),
                runner: Runner::Python {
                    file: "app/wsgi.py".to_owned(),
                    object: "app".to_owned(),
                },
                health_check: "/".to_owned(),
                update_fetch: vec!["/update".to_owned()],
                release_tasks: vec![],
                default_host: Some("blog.example.com".to_owned()),
                packages: vec!["libxml2".to_owned(), "libxslt1.1".to_owned()],
                services: vec![
                    Service {
                        name: "mysql".to_owned(),
                        value: String::new(),
                        line: 9,
                    },
                    Service {
                        name: "files".to_owned(),
                        value: "size=10M".to_owned(),
                        line: 10,
                    },
                ],
            }
        );
    }

    #[test]
    fn error_display_forms() {
        let with_line = AppIniError::at(7, "bad");
        assert_eq!(with_line.to_string(), "app.ini:7: bad");
        let without = AppIniError::whole_file("bad");
        assert_eq!(without.to_string(), "app.ini: bad");
        let warning = Warning {
            line: 4,
            message: "careful".to_owned(),
        };
        assert_eq!(warning.to_string(), "app.ini:4: careful");
    }

    #[test]
    fn colon_separator() {
        let app = ok("[production]\napp_name: blog\nversion : 2\n");
        assert_eq!(app.app_name, "blog");
        assert_eq!(app.version, Some(2));
    }

    #[test]
    fn splits_at_first_separator() {
        let app = ok("[production]\napp_name = blog\ndefault_host = a=b:c\n");
        assert_eq!(app.default_host.as_deref(), Some("a=b:c"));
        let app = ok("[production]\napp_name = blog\ndefault_host: a=b\n");
        assert_eq!(app.default_host.as_deref(), Some("a=b"));
        // ':' comes before '=', so the key is "foo".
        let (_, warnings) =
            parse_with("[production]\napp_name=blog\nfoo:bar=baz\n", &["main.py"]).unwrap();
        assert_eq!(warnings[0].message, "unknown key \"foo\" (ignored)");
    }

    #[test]
    fn keys_are_trimmed_and_lowered_values_trimmed() {
        let app = ok("[production]\n  \nAPP_Name   =    blog   \n");
        assert_eq!(app.app_name, "blog");
    }

    #[test]
    fn hash_inside_value_is_not_a_comment() {
        let text = "[production]\napp_name = blog\nrunner = main.py#name\n";
        let app = ok(text);
        assert_eq!(
            app.runner,
            Runner::Python {
                file: "main.py".to_owned(),
                object: "name".to_owned(),
            }
        );
        let app = ok("[production]\napp_name = blog\ndefault_host = a ; b\n");
        assert_eq!(app.default_host.as_deref(), Some("a ; b"));
    }

    #[test]
    fn full_line_comments() {
        let text = "# top\n; semi\n[production]\n  # indented comment\napp_name = blog\n;x = y\n";
        assert_eq!(ok(text), minimal());
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        assert_eq!(ok("\u{feff}[production]\napp_name = blog\n"), minimal());
        // Line numbers don't move because of it.
        assert_eq!(
            err("\u{feff}[production]\napp_name = blog\nversion = x\n"),
            "app.ini:3: version must be a whole number, got \"x\""
        );
    }

    #[test]
    fn crlf_line_endings() {
        let app = ok("[production]\r\napp_name = blog\r\nversion = 4\r\n");
        assert_eq!(app.version, Some(4));
    }

    #[test]
    fn update_fetch_over_indented_lines() {
        let text = "\
[production]
app_name = blog
update_fetch =
    /update
    /warm-cache
\t/other /and-this
version = 2
";
        let app = ok(text);
        assert_eq!(
            app.update_fetch,
            vec!["/update", "/warm-cache", "/other", "/and-this"]
        );
        assert_eq!(app.version, Some(2));
    }

    #[test]
    fn comment_and_blank_line_inside_a_continued_value() {
        let text = "\
[production]
app_name = blog
packages = one

    # not a package
    two
; neither
\tthree
";
        assert_eq!(ok(text).packages, vec!["one", "two", "three"]);
    }

    #[test]
    fn list_value_hash_lines_ignored() {
        let app = ok("[production]\napp_name = blog\npackages = #none yet\n");
        assert_eq!(app.packages, Vec::<String>::new());
    }

    #[test]
    fn script_entries_are_release_tasks() {
        let (app, _) = AppIni::parse(
            "[production]\napp_name = blog\nupdate_fetch = script:manage.py migrate --noinput\n  /warmup /other\n  script:tasks/seed.py \"a b\"\n",
            &|f: &str| f == "manage.py" || f == "tasks/seed.py" || f == DEFAULT_RUNNER,
        )
        .unwrap();
        assert_eq!(app.update_fetch, ["/warmup", "/other"]);
        assert_eq!(app.release_tasks.len(), 2);
        assert_eq!(
            app.release_tasks[0].argv,
            ["manage.py", "migrate", "--noinput"]
        );
        assert_eq!(app.release_tasks[0].line, 3);
        assert_eq!(app.release_tasks[1].argv, ["tasks/seed.py", "a b"]);
        let missing = AppIni::parse(
            "[production]\napp_name = blog\nupdate_fetch = script:nope.py\n",
            &|f: &str| f == DEFAULT_RUNNER,
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "app.ini:3: update_fetch: script:nope.py: no such file in the app"
        );
        let outside = AppIni::parse(
            "[production]\napp_name = blog\nupdate_fetch = script:../x.py\n",
            &|_: &str| true,
        )
        .unwrap_err();
        assert!(
            outside.to_string().contains("must be inside the app"),
            "{outside}"
        );
    }

    #[test]
    fn multi_line_service_value_is_kept() {
        let text = "[production]\napp_name = blog\nservice.x = a\n  b\n";
        let app = ok(text);
        assert_eq!(app.services[0].value, "a\nb");
        assert_eq!(app.services[0].line, 3);
    }

    #[test]
    fn scalar_with_value_on_continuation_line() {
        let app = ok("[production]\napp_name =\n    blog\n");
        assert_eq!(app.app_name, "blog");
    }

    #[test]
    fn scalar_over_two_lines_is_refused() {
        assert_eq!(
            err("[production]\napp_name = blog\ndefault_host = a\n  b\n"),
            "app.ini:4: default_host must be on one line"
        );
    }

    #[test]
    fn option_before_any_section() {
        assert_eq!(
            err("# hi\napp_name = blog\n[production]\n"),
            "app.ini:2: option \"app_name\" before any [section]"
        );
    }

    #[test]
    fn indented_line_with_nothing_to_continue() {
        assert_eq!(
            err("  stray\n[production]\napp_name = blog\n"),
            "app.ini:1: indented line with no option to continue"
        );
        // A section header ends the option before it.
        assert_eq!(
            err("[other]\na = b\n[production]\n  stray\napp_name = blog\n"),
            "app.ini:4: indented line with no option to continue"
        );
    }

    #[test]
    fn line_that_is_nothing() {
        assert_eq!(
            err("[production]\napp_name = blog\njust words\n"),
            "app.ini:3: expected \"key = value\" or \"[section]\""
        );
        assert_eq!(
            err("[production]\n= blog\n"),
            "app.ini:2: missing key before \"=\""
        );
        assert_eq!(
            err("[production]\n  : blog\n"),
            "app.ini:2: indented line with no option to continue"
        );
    }

    #[test]
    fn section_header_errors() {
        assert_eq!(
            err("[production\napp_name = blog\n"),
            "app.ini:1: unterminated section header \"[production\""
        );
        assert_eq!(
            err("[production] x\napp_name = blog\n"),
            "app.ini:1: text after \"]\" in a section header"
        );
        assert_eq!(err("[ ]\n"), "app.ini:1: empty section name");
    }

    #[test]
    fn section_name_is_trimmed() {
        assert_eq!(ok("[ production ]\napp_name = blog\n"), minimal());
    }

    #[test]
    fn duplicate_section() {
        assert_eq!(
            err("[production]\napp_name = blog\n\n[production]\n"),
            "app.ini:4: duplicate section [production] (first on line 1)"
        );
    }

    #[test]
    fn duplicate_key() {
        assert_eq!(
            err("[production]\napp_name = blog\nversion = 1\nVersion: 2\n"),
            "app.ini:4: duplicate key \"version\" in [production] (first on line 3)"
        );
    }

    #[test]
    fn syntax_errors_in_other_sections_count() {
        assert_eq!(
            err("[production]\napp_name = blog\n[devel]\nbroken\n"),
            "app.ini:4: expected \"key = value\" or \"[section]\""
        );
        assert_eq!(
            err("[devel]\na = 1\na = 2\n[production]\napp_name = blog\n"),
            "app.ini:3: duplicate key \"a\" in [devel] (first on line 2)"
        );
    }

    #[test]
    fn other_sections_are_ignored() {
        let text = "[devel]\nrunner = nothing.txt\nwhatever = 1\n[production]\napp_name = blog\n";
        assert_eq!(ok(text), minimal());
    }

    #[test]
    fn missing_production_section() {
        assert_eq!(
            err("[devel]\napp_name = blog\n"),
            "app.ini: no [production] section"
        );
        assert_eq!(err(""), "app.ini: no [production] section");
        // Section names are case-sensitive, as in RawConfigParser.
        assert_eq!(
            err("[Production]\napp_name = blog\n"),
            "app.ini: no [production] section"
        );
    }

    #[test]
    fn app_name_rules() {
        assert_eq!(
            err("[production]\nversion = 1\n"),
            "app.ini: app_name is required in [production]"
        );
        assert_eq!(
            err("[production]\napp_name =\n"),
            "app.ini:2: app_name is empty"
        );
        assert_eq!(
            err("[production]\napp_name = my blog\n"),
            "app.ini:2: app_name must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-', got \"my blog\""
        );
        assert!(err("[production]\napp_name = a.b\n").contains("got \"a.b\""));
        assert!(err("[production]\napp_name = blög\n").contains("got \"blög\""));
        let longest = "a".repeat(64);
        assert_eq!(
            ok(&format!("[production]\napp_name = {longest}\n")).app_name,
            longest
        );
        let too_long = "a".repeat(65);
        assert!(
            err(&format!("[production]\napp_name = {too_long}\n"))
                .starts_with("app.ini:2: app_name must be")
        );
    }

    #[test]
    fn version_rules() {
        let text = "[production]\napp_name = blog\n\n# a comment\n\n\nversion = 1.0\n";
        assert_eq!(
            err(text),
            "app.ini:7: version must be a whole number, got \"1.0\""
        );
        for bad in ["-1", "+1", "one", "1 2"] {
            assert_eq!(
                err(&format!("[production]\napp_name = blog\nversion = {bad}\n")),
                format!("app.ini:3: version must be a whole number, got {bad:?}")
            );
        }
        assert_eq!(
            err("[production]\napp_name = blog\nversion = 4294967296\n"),
            "app.ini:3: version is too large, got \"4294967296\""
        );
        assert_eq!(
            err("[production]\napp_name = blog\nversion =\n"),
            "app.ini:3: version is empty"
        );
        assert_eq!(
            ok("[production]\napp_name = blog\nversion = 0\n").version,
            Some(0)
        );
    }

    #[test]
    fn runner_defaults_to_main_py() {
        let (app, _) = parse_with("[production]\napp_name = blog\n", &["main.py"]).unwrap();
        assert_eq!(app.runner, minimal().runner);
    }

    #[test]
    fn runner_missing_and_no_main_py() {
        assert_eq!(
            parse_with("[production]\napp_name = blog\n", &[]).unwrap_err(),
            "app.ini: no runner set in [production] and no main.py in the app"
        );
    }

    #[test]
    fn runner_python_file() {
        let text = "[production]\napp_name = blog\nrunner = app/wsgi.py\n";
        let (app, _) = parse_with(text, &["app/wsgi.py"]).unwrap();
        assert_eq!(
            app.runner,
            Runner::Python {
                file: "app/wsgi.py".to_owned(),
                object: "application".to_owned(),
            }
        );
        let text = "[production]\napp_name = blog\nrunner = app/wsgi.py#pkg.mod._app2\n";
        let (app, _) = parse_with(text, &["app/wsgi.py"]).unwrap();
        assert_eq!(
            app.runner,
            Runner::Python {
                file: "app/wsgi.py".to_owned(),
                object: "pkg.mod._app2".to_owned(),
            }
        );
    }

    #[test]
    fn runner_python_object_must_be_a_name() {
        for bad in ["2app", "a..b", "a.", ".a", "a-b", "a b", "a#b"] {
            let text = format!("[production]\napp_name = blog\nrunner = main.py#{bad}\n");
            assert_eq!(
                err(&text),
                format!(
                    "app.ini:3: runner: {bad:?} is not a Python name (identifiers joined by dots)"
                )
            );
        }
        assert_eq!(
            err("[production]\napp_name = blog\nrunner = main.py#\n"),
            "app.ini:3: runner: nothing after \"#\" in \"main.py#\""
        );
    }

    #[test]
    fn runner_paste_deploy() {
        let text = "[production]\napp_name = blog\nrunner = config.ini\n";
        let (app, _) = parse_with(text, &["config.ini"]).unwrap();
        assert_eq!(
            app.runner,
            Runner::PasteDeploy {
                file: "config.ini".to_owned(),
                section: None,
            }
        );
        let text = "[production]\napp_name = blog\nrunner = conf/prod.ini#main\n";
        let (app, _) = parse_with(text, &["conf/prod.ini"]).unwrap();
        assert_eq!(
            app.runner,
            Runner::PasteDeploy {
                file: "conf/prod.ini".to_owned(),
                section: Some("main".to_owned()),
            }
        );
    }

    #[test]
    fn runner_static() {
        let (app, _) = parse_with("[production]\napp_name = blog\nrunner = static\n", &[]).unwrap();
        assert_eq!(app.runner, Runner::Static);
    }

    #[test]
    fn runner_file_must_exist() {
        assert_eq!(
            parse_with(
                "[production]\napp_name = blog\nrunner = x.py\n",
                &["main.py"]
            )
            .unwrap_err(),
            "app.ini:3: runner: no file \"x.py\" in the app"
        );
        assert_eq!(
            parse_with("[production]\napp_name = blog\nrunner = p.ini#main\n", &[]).unwrap_err(),
            "app.ini:3: runner: no file \"p.ini\" in the app"
        );
    }

    #[test]
    fn runner_kind_must_be_known() {
        for bad in ["main.rb", "main", "Static", "main.py.bak", "/bin/sh"] {
            assert_eq!(
                err(&format!("[production]\napp_name = blog\nrunner = {bad}\n")),
                format!(
                    "app.ini:3: runner must be a .py file, a .ini file or \"static\", got {bad:?}"
                )
            );
        }
        assert_eq!(
            err("[production]\napp_name = blog\nrunner =\n"),
            "app.ini:3: runner is empty"
        );
    }

    #[test]
    fn runner_path_rules() {
        let cases = [
            ("/srv/main.py", "the path must be relative to the app"),
            ("../main.py", "\".\" and \"..\" are not allowed in the path"),
            (
                "app/../main.py",
                "\".\" and \"..\" are not allowed in the path",
            ),
            ("./main.py", "\".\" and \"..\" are not allowed in the path"),
            ("app\\main.py", "backslashes are not allowed in the path"),
            ("app//main.py", "empty component in the path"),
            (
                "my app.py",
                "spaces and control characters are not allowed in the path",
            ),
        ];
        for (path, reason) in cases {
            let text = format!("[production]\napp_name = blog\n\nrunner = {path}\n");
            assert_eq!(
                AppIni::parse(&text, &|_| true).unwrap_err().to_string(),
                format!("app.ini:4: runner: {reason}, got {path:?}")
            );
        }
    }

    #[test]
    fn update_fetch_rules() {
        assert_eq!(
            err("[production]\napp_name = blog\nupdate_fetch =\n  /ok\n  update\n"),
            "app.ini:5: update_fetch: \"update\" must be a URL path starting with \"/\" or script:FILE"
        );
        assert_eq!(
            err("[production]\napp_name = blog\nupdate_fetch =\n\n"),
            "app.ini:3: update_fetch is empty"
        );
        // A later #-line of the value is an INI comment, not an entry.
        let app = ok("[production]\napp_name = blog\nupdate_fetch = /a\n  #/b\n");
        assert_eq!(app.update_fetch, vec!["/a"]);
    }

    #[test]
    fn empty_known_keys() {
        for key in [
            "default_host",
            "packages",
            "update_fetch",
            "runner",
            "version",
        ] {
            let text = format!("[production]\napp_name = blog\n{key} =   \n");
            assert_eq!(err(&text), format!("app.ini:3: {key} is empty"));
        }
        assert_eq!(
            err("[production]\ndefault_host =\napp_name = blog\n"),
            "app.ini:2: default_host is empty"
        );
    }

    #[test]
    fn default_host_is_raw() {
        let app = ok("[production]\napp_name = blog\ndefault_host = Not_Checked.Here\n");
        assert_eq!(app.default_host.as_deref(), Some("Not_Checked.Here"));
    }

    #[test]
    fn unknown_keys_warn() {
        let text = "[production]\napp_name = blog\nfoo = 1\nRunnerr = main.py\n";
        let (app, warnings) = parse_with(text, &["main.py"]).unwrap();
        assert_eq!(app, minimal());
        let shown: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "app.ini:3: unknown key \"foo\" (ignored)",
                "app.ini:4: unknown key \"runnerr\" (ignored)",
            ]
        );
    }

    #[test]
    fn services_with_lines() {
        let text = "\
[production]
app_name = blog
service.mysql =

Service.Files = /data
service.redis: maxmemory=10m
";
        let app = ok(text);
        let got: Vec<(&str, &str, usize)> = app
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str(), s.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("mysql", "", 3),
                ("files", "/data", 5),
                ("redis", "maxmemory=10m", 6)
            ]
        );
        assert_eq!(
            err("[production]\napp_name = blog\nservice. = x\n"),
            "app.ini:3: service name missing in \"service.\""
        );
        assert_eq!(
            err("[production]\napp_name = blog\nservice.a = 1\nservice.A = 2\n"),
            "app.ini:4: duplicate key \"service.a\" in [production] (first on line 3)"
        );
    }

    mod load {
        use super::super::*;
        use tempfile::TempDir;

        fn write(dir: &TempDir, rel: &str, contents: &[u8]) {
            let path = dir.path().join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(path, contents).unwrap();
        }

        fn load_err(dir: &TempDir) -> String {
            AppIni::load(dir.path()).unwrap_err().to_string()
        }

        #[test]
        fn reads_the_file_and_finds_main_py() {
            let dir = TempDir::new().unwrap();
            write(&dir, "app.ini", b"[production]\napp_name = blog\nfoo = 1\n");
            write(&dir, "main.py", b"");
            let (app, warnings) = AppIni::load(dir.path()).unwrap();
            assert_eq!(app.app_name, "blog");
            assert_eq!(
                app.runner,
                Runner::Python {
                    file: "main.py".to_owned(),
                    object: "application".to_owned(),
                }
            );
            assert_eq!(warnings.len(), 1);
        }

        #[test]
        fn no_main_py() {
            let dir = TempDir::new().unwrap();
            write(&dir, "app.ini", b"[production]\napp_name = blog\n");
            assert_eq!(
                load_err(&dir),
                "app.ini: no runner set in [production] and no main.py in the app"
            );
            // A directory called main.py is not a runner.
            fs::create_dir(dir.path().join("main.py")).unwrap();
            assert_eq!(
                load_err(&dir),
                "app.ini: no runner set in [production] and no main.py in the app"
            );
        }

        #[test]
        fn runner_in_a_subdirectory() {
            let dir = TempDir::new().unwrap();
            write(
                &dir,
                "app.ini",
                b"[production]\napp_name = blog\nrunner = conf/prod.ini#main\n",
            );
            write(&dir, "conf/prod.ini", b"");
            let (app, _) = AppIni::load(dir.path()).unwrap();
            assert_eq!(
                app.runner,
                Runner::PasteDeploy {
                    file: "conf/prod.ini".to_owned(),
                    section: Some("main".to_owned()),
                }
            );
            write(
                &dir,
                "app.ini",
                b"[production]\napp_name = blog\nrunner = conf/other.ini\n",
            );
            assert_eq!(
                load_err(&dir),
                "app.ini:3: runner: no file \"conf/other.ini\" in the app"
            );
        }

        #[test]
        fn missing_app_ini() {
            let dir = TempDir::new().unwrap();
            assert_eq!(load_err(&dir), "app.ini: not found in the app directory");
        }

        #[test]
        fn app_ini_that_is_a_directory() {
            let dir = TempDir::new().unwrap();
            fs::create_dir(dir.path().join("app.ini")).unwrap();
            assert_eq!(
                load_err(&dir),
                "app.ini: not a regular file inside the app directory"
            );
        }

        #[test]
        fn not_utf8_names_the_line() {
            let dir = TempDir::new().unwrap();
            write(
                &dir,
                "app.ini",
                b"[production]\napp_name = blog\nx = \xff\xfe\n",
            );
            assert_eq!(load_err(&dir), "app.ini:3: not valid UTF-8");
        }

        #[test]
        fn byte_order_mark_from_disk() {
            let dir = TempDir::new().unwrap();
            write(
                &dir,
                "app.ini",
                b"\xef\xbb\xbf[production]\napp_name = blog\nrunner = static\n",
            );
            let (app, _) = AppIni::load(dir.path()).unwrap();
            assert_eq!(app.runner, Runner::Static);
        }

        #[cfg(unix)]
        #[test]
        fn symlinks_must_stay_inside_the_app() {
            use std::os::unix::fs::symlink;
            let outside = TempDir::new().unwrap();
            write(&outside, "secret.py", b"");
            write(&outside, "app.ini", b"[production]\napp_name = blog\n");
            let dir = TempDir::new().unwrap();
            symlink(outside.path().join("app.ini"), dir.path().join("app.ini")).unwrap();
            assert_eq!(
                load_err(&dir),
                "app.ini: not a regular file inside the app directory"
            );

            fs::remove_file(dir.path().join("app.ini")).unwrap();
            write(
                &dir,
                "app.ini",
                b"[production]\napp_name = blog\nrunner = lib/secret.py\n",
            );
            symlink(outside.path(), dir.path().join("lib")).unwrap();
            assert_eq!(
                load_err(&dir),
                "app.ini:3: runner: no file \"lib/secret.py\" in the app"
            );

            // A link that stays inside the app is fine.
            write(&dir, "real/wsgi.py", b"");
            symlink(dir.path().join("real/wsgi.py"), dir.path().join("wsgi.py")).unwrap();
            write(
                &dir,
                "app.ini",
                b"[production]\napp_name = blog\nrunner = wsgi.py\n",
            );
            assert!(AppIni::load(dir.path()).is_ok());
        }
    }
}
