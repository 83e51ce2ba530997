//! Who may push where. The node's `authorized_keys` file (OpenSSH format)
//! names each key (its comment) and may limit it to some sites with a
//! `sites="blog.example.com,*.example.org"` option, to some source
//! addresses with `from="10.0.0.0/8,!10.0.0.1"` and in time with
//! `expiry-time="20301231"`. The file is read at every authentication, so
//! `toppcloud node keys` changes take effect at once. An identity comes only
//! from a key whose signature was verified.
//!
//! A line whose options ask for something the node does not do
//! (`command=`, `environment=`, `permitopen=`, `pty`...) is refused, loudly:
//! silently ignoring a restriction would give its key more than the line
//! says, so that key authenticates nobody until the line is fixed.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use russh::keys::{HashAlg, PublicKey};
use sha2::{Digest, Sha256};

use crate::names::{Domain, SiteName};

/// One key line of authorized_keys.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// 1-based, for messages that point at the line.
    pub line: usize,
    pub name: String,
    pub key: PublicKey,
    /// What the line's options grant, or why the line is refused.
    pub grant: Result<Grant, String>,
}

/// What a key may do, from its line's options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// None: every site. Patterns are full names or `*.domain`.
    pub sites: Option<Vec<String>>,
    /// `from=`: the source addresses the key may connect from.
    pub from: Option<FromList>,
    /// `expiry-time=`: when the key stops working.
    pub expires: Option<Expiry>,
}

/// The user behind an authenticated SSH connection.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub fingerprint: String,
    sites: Option<Vec<String>>,
}

impl Identity {
    pub fn may_use(&self, site: &SiteName) -> bool {
        match &self.sites {
            None => true,
            Some(patterns) => patterns.iter().any(|p| site_matches(p, site.as_str())),
        }
    }

    /// What a site that is not there is refused with, in the same words as
    /// one this key may not use: a key learns nothing of other sites.
    pub fn not_found(&self, site: &SiteName) -> String {
        format!(
            "site {site} not found, or this key ({}) may not use it",
            self.name
        )
    }

    /// None when this key may use `site`; else the refusal, logged.
    pub fn refusal(&self, site: &SiteName) -> Option<String> {
        if self.may_use(site) {
            return None;
        }
        tracing::info!(key = %self.name, site = %site, "refused: key not allowed on site");
        Some(self.not_found(site))
    }
}

fn site_matches(pattern: &str, site: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => site
            .strip_suffix(domain)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == site,
    }
}

/// The text of the file last reported, by hash: the file is read at every
/// authentication, and its problems should be logged once per change, not
/// once per connection.
static REPORTED: Mutex<Option<[u8; 32]>> = Mutex::new(None);

/// Reads the file: a missing file is an empty list. A line that is not a
/// key is skipped and a line with options the node does not implement is
/// kept as refused; both are logged at error level (once per version of the
/// file), naming file:line, since one bad line must not lock everyone out
/// but must not go unnoticed either.
pub fn load(path: &Path) -> Result<Vec<AuthorizedKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (keys, unreadable) = parse_file(&text);
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    if *reported != Some(digest) {
        *reported = Some(digest);
        for (line, e) in unreadable {
            tracing::error!("{}:{line}: {e} (line ignored)", path.display());
        }
        for k in &keys {
            if let Err(why) = &k.grant {
                tracing::error!(
                    "{}:{}: {why}; the key {} ({}) authenticates nobody until the line is fixed",
                    path.display(),
                    k.line,
                    k.name,
                    k.key.fingerprint(HashAlg::Sha256)
                );
            }
        }
    }
    Ok(keys)
}

/// The key lines of a file, and the lines that are not keys (with why).
fn parse_file(text: &str) -> (Vec<AuthorizedKey>, Vec<(usize, String)>) {
    let mut keys = Vec::new();
    let mut unreadable = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(mut k) => {
                k.line = i + 1;
                keys.push(k);
            }
            Err(e) => unreadable.push((i + 1, format!("{e:#}"))),
        }
    }
    (keys, unreadable)
}

/// Finds the identity of a key whose ownership was verified (or, for an
/// offered key, would be), connecting from `peer`. As in OpenSSH, the first
/// line with the key whose `from=` and `expiry-time=` let it in decides
/// (its `sites=` apply); but a key that is on any refused line is refused,
/// since that line meant to restrict it.
pub fn identify(path: &Path, key: &PublicKey, peer: IpAddr) -> Option<Identity> {
    identify_at(path, key, peer, unix_now())
}

fn identify_at(path: &Path, key: &PublicKey, peer: IpAddr, now: i64) -> Option<Identity> {
    let keys = match load(path) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("{e:#}");
            return None;
        }
    };
    let lines: Vec<AuthorizedKey> = keys
        .into_iter()
        .filter(|k| k.key.key_data() == key.key_data())
        .collect();
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let at = |k: &AuthorizedKey| format!("{}:{}", path.display(), k.line);
    for k in &lines {
        if let Err(why) = &k.grant {
            tracing::error!(
                "refused key {} ({fingerprint}) from {peer}: {}: {why}",
                k.name,
                at(k)
            );
            return None;
        }
    }
    let name = lines.first().map(|k| k.name.clone())?;
    let mut refusals = Vec::new();
    for k in lines {
        let Ok(grant) = &k.grant else { continue };
        if let Some(e) = &grant.expires
            && e.passed(now)
        {
            refusals.push(format!("it expired at {} ({})", e.shown(), at(&k)));
            continue;
        }
        if let Some(from) = &grant.from
            && !from.allows(peer)
        {
            refusals.push(format!(
                "it may not connect from {peer} (from=\"{}\" at {})",
                from.text,
                at(&k)
            ));
            continue;
        }
        return Some(Identity {
            fingerprint,
            sites: grant.sites.clone(),
            name: k.name,
        });
    }
    tracing::warn!(
        "refused key {name} ({fingerprint}) from {peer}: {}",
        refusals.join("; ")
    );
    None
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

/// Splits off the options field: up to the first blank outside double
/// quotes, where `\"` inside quotes is a quote (OpenSSH's rules).
fn split_options(line: &str) -> Result<(Option<&str>, &str)> {
    let first = line.split_whitespace().next().unwrap_or_default();
    if is_key_type(first) {
        return Ok((None, line));
    }
    let mut quoted = false;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quoted && chars.peek().is_some_and(|&(_, n)| n == '"') => {
                chars.next();
            }
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                return Ok((Some(&line[..i]), line[i..].trim_start()));
            }
            _ => {}
        }
    }
    if quoted {
        bail!("unterminated quote in the options");
    }
    Ok((Some(line), ""))
}

/// One option of the options field: a lower-cased name and, for `name="..."`,
/// the value without its quotes.
#[derive(Debug, PartialEq)]
struct RawOption {
    name: String,
    value: Option<String>,
}

/// Splits an options field into options, as OpenSSH reads it: names are
/// case-insensitive, values are double-quoted (`\"` is a quote inside).
fn parse_options(field: &str) -> Result<Vec<RawOption>, String> {
    let mut out = Vec::new();
    let mut rest = field;
    loop {
        let end = rest.find([',', '=']).unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() {
            return Err(format!("empty option in {:?}", shorten(field)));
        }
        rest = &rest[end..];
        let mut value = None;
        if let Some(after) = rest.strip_prefix('=') {
            let Some(quoted) = after.strip_prefix('"') else {
                return Err(format!(
                    "option {name}= needs a double-quoted value ({name}=\"...\")"
                ));
            };
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut closed = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if quoted[i + 1..].starts_with('"') => {
                        chars.next();
                        v.push('"');
                    }
                    '"' => {
                        closed = Some(i);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let Some(i) = closed else {
                return Err(format!("option {name}= has no closing quote"));
            };
            rest = &quoted[i + 1..];
            value = Some(v);
        }
        out.push(RawOption {
            name: name.to_ascii_lowercase(),
            value,
        });
        match rest.strip_prefix(',') {
            Some("") => return Err(format!("trailing comma in {:?}", shorten(field))),
            Some(more) => rest = more,
            None if rest.is_empty() => return Ok(out),
            None => {
                return Err(format!(
                    "unexpected {:?} after option {name}",
                    shorten(rest)
                ));
            }
        }
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Restrictions the node enforces on every key anyway (it has no ptys, no
/// forwarding of any kind and no rc files), so a line may ask for them.
const ALWAYS_ENFORCED: &[&str] = &[
    "restrict",
    "no-pty",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-user-rc",
];

/// What a line's options grant, or, for an option the node does not
/// implement, why the line is refused (naming the option).
fn interpret(options: &[RawOption]) -> Result<Grant, String> {
    let mut grant = Grant::default();
    for opt in options {
        let name = opt.name.as_str();
        let twice = || format!("option {name}= is given twice");
        match (name, &opt.value) {
            ("sites", Some(v)) => {
                if grant.sites.is_some() {
                    return Err(twice());
                }
                grant.sites = Some(v.split(',').map(|s| s.trim().to_string()).collect());
            }
            ("from", Some(v)) => {
                if grant.from.is_some() {
                    return Err(twice());
                }
                grant.from =
                    Some(FromList::parse(v).map_err(|e| format!("option from=\"{v}\": {e}"))?);
            }
            ("expiry-time", Some(v)) => {
                if grant.expires.is_some() {
                    return Err(twice());
                }
                grant.expires =
                    Some(Expiry::parse(v).map_err(|e| format!("option expiry-time=\"{v}\": {e}"))?);
            }
            (n, None) if ALWAYS_ENFORCED.contains(&n) => {}
            (n, value) => {
                let shown = if value.is_some() {
                    format!("{n}=")
                } else {
                    n.to_string()
                };
                return Err(format!(
                    "option {shown} is not supported by this node (it takes sites=, from=, \
                     expiry-time= and the restrictions it always enforces: {})",
                    ALWAYS_ENFORCED.join(", ")
                ));
            }
        }
    }
    Ok(grant)
}

/// Parses one line: Err if it is not a key line at all; a key line whose
/// options are refused is Ok, with the refusal in `grant`.
pub fn parse_line(line: &str) -> Result<AuthorizedKey> {
    let (options, rest) = split_options(line)?;
    let key =
        PublicKey::from_openssh(rest).map_err(|e| anyhow::anyhow!("not a public key: {e}"))?;
    let name = key.comment().to_string();
    let grant = match options {
        None => Ok(Grant::default()),
        Some(field) => parse_options(field).and_then(|o| interpret(&o)),
    };
    Ok(AuthorizedKey {
        line: 0,
        name: if name.is_empty() {
            "unnamed".into()
        } else {
            name
        },
        key,
        grant,
    })
}

/// `from="pattern-list"`, with OpenSSH's semantics for addresses: entries
/// are addresses, CIDR networks or `*`/`?` wildcards over the address's
/// text, any of them negated with `!`; the key may connect from an address
/// some entry matches and no negated entry matches. Host names would need
/// DNS lookups the node does not do, so name patterns are refused.
#[derive(Debug, Clone, PartialEq)]
pub struct FromList {
    /// As written, for messages and for writing the line back.
    pub text: String,
    entries: Vec<(bool, AddressPattern)>,
}

#[derive(Debug, Clone, PartialEq)]
enum AddressPattern {
    Network(IpAddr, u8),
    /// Lower case; matched against the address as text.
    Wildcard(String),
}

impl FromList {
    pub fn parse(text: &str) -> Result<FromList, String> {
        let mut entries = Vec::new();
        for entry in text.split(',') {
            let (negated, pattern) = match entry.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, entry),
            };
            if pattern.is_empty() {
                return Err("an entry of the list is empty".into());
            }
            entries.push((negated, AddressPattern::parse(pattern)?));
        }
        Ok(FromList {
            text: text.to_string(),
            entries,
        })
    }

    /// Whether a connection from `peer` is allowed.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        let text = peer.to_string();
        let mut allowed = false;
        for (negated, pattern) in &self.entries {
            if pattern.matches(peer, &text) {
                if *negated {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }
}

impl AddressPattern {
    fn parse(p: &str) -> Result<AddressPattern, String> {
        if let Some((addr, len)) = p.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!("{p:?}: {addr:?} is not an IP address (a network is ADDRESS/LENGTH)")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{p:?}: the prefix length must be 0 to {max}"))?;
            let network = mask(addr, len);
            if network != addr {
                // OpenSSH refuses these too ("inconsistent mask length").
                return Err(format!(
                    "{p:?} has bits set outside its /{len} prefix; write {network}/{len}"
                ));
            }
            return Ok(AddressPattern::Network(addr.to_canonical(), len));
        }
        if let Ok(addr) = p.parse::<IpAddr>() {
            let addr = addr.to_canonical();
            let len = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(AddressPattern::Network(addr, len));
        }
        let wild = p.contains(['*', '?']);
        let v4 = p.chars().all(|c| c.is_ascii_digit() || "*?.".contains(c));
        let v6 = p.contains(':')
            && p.chars()
                .all(|c| c.is_ascii_hexdigit() || "*?.:".contains(c));
        if wild && (v4 || v6) {
            return Ok(AddressPattern::Wildcard(p.to_ascii_lowercase()));
        }
        if v4 || v6 {
            return Err(format!("{p:?} is not an IP address"));
        }
        Err(format!(
            "{p:?} is a host name pattern; the node does not look names up, so from= takes only \
             addresses (192.0.2.7), networks (10.0.0.0/8) and address wildcards (192.168.1.*)"
        ))
    }

    fn matches(&self, peer: IpAddr, text: &str) -> bool {
        match self {
            AddressPattern::Network(net, len) => {
                net.is_ipv4() == peer.is_ipv4() && mask(peer, *len) == *net
            }
            AddressPattern::Wildcard(w) => wildcard(w.as_bytes(), text.as_bytes()),
        }
    }
}

/// `addr` with all but its first `len` bits cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// `*` (any run of characters, none included) and `?` (one character)
/// over the whole text; linear backtracking on the last `*`.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `expiry-time="YYYYMMDD[HHMM[SS]]"` (an optional trailing `Z` is
/// accepted): the key works up to and including that second. The node reads
/// the time as UTC, with or without the `Z` (OpenSSH reads a time without
/// it in the server's local time zone).
#[derive(Debug, Clone, PartialEq)]
pub struct Expiry {
    /// As written, for writing the line back.
    pub text: String,
    unix: i64,
}

impl Expiry {
    pub fn parse(text: &str) -> Result<Expiry, String> {
        let digits = text.strip_suffix('Z').unwrap_or(text);
        let form = "the form is YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (UTC)";
        if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
            return Err(form.into());
        }
        let num = |r: std::ops::Range<usize>| -> u16 {
            digits.get(r).map_or(0, |s| s.parse().unwrap_or(0))
        };
        let month = time::Month::try_from(num(4..6) as u8).map_err(|_| "no such month")?;
        let date = time::Date::from_calendar_date(i32::from(num(0..4)), month, num(6..8) as u8)
            .map_err(|_| format!("no such date ({form})"))?;
        let at = time::Time::from_hms(num(8..10) as u8, num(10..12) as u8, num(12..14) as u8)
            .map_err(|_| format!("no such time of day ({form})"))?;
        Ok(Expiry {
            text: text.to_string(),
            unix: time::PrimitiveDateTime::new(date, at)
                .assume_utc()
                .unix_timestamp(),
        })
    }

    /// Whether the key no longer works at `now` (Unix seconds).
    pub fn passed(&self, now: i64) -> bool {
        now > self.unix
    }

    /// "2030-12-31 00:00:00 UTC".
    pub fn shown(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp(self.unix)
            .ok()
            .and_then(|t| {
                t.format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
                ))
                .ok()
            })
            .unwrap_or_else(|| self.text.clone())
    }
}

/// Validates site patterns given on the command line: a site name (bare
/// names get the domain) or `*.domain`.
pub fn parse_patterns(list: &str, domain: &Domain) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(d) = p.strip_prefix("*.") {
            let d = SiteName::parse(d, domain).map_err(|e| anyhow::anyhow!("--sites {p}: {e}"))?;
            out.push(format!("*.{d}"));
        } else {
            out.push(SiteName::parse(p, domain)?.to_string());
        }
    }
    if out.is_empty() {
        bail!("--sites needs at least one site");
    }
    Ok(out)
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !ok {
        bail!("invalid key name {name:?}: use letters, digits, '.', '_', '@' and '-'");
    }
    Ok(())
}

/// The line `keys add` writes: the restrictions the node implements, in a
/// fixed order, then the key with its name as the comment.
pub fn render_line(name: &str, key: &PublicKey, grant: &Grant) -> Result<String> {
    let mut key = key.clone();
    key.set_comment(name);
    let text = key.to_openssh().context("cannot encode the key")?;
    let quote = |v: &str| v.replace('"', "\\\"");
    let mut options = Vec::new();
    if let Some(s) = &grant.sites {
        options.push(format!("sites=\"{}\"", quote(&s.join(","))));
    }
    if let Some(f) = &grant.from {
        options.push(format!("from=\"{}\"", quote(&f.text)));
    }
    if let Some(e) = &grant.expires {
        options.push(format!("expiry-time=\"{}\"", quote(&e.text)));
    }
    Ok(if options.is_empty() {
        text
    } else {
        format!("{} {text}", options.join(","))
    })
}

/// `toppcloud node keys add`: appends a named key, refusing duplicates. The
/// input may carry options (an authorized_keys line): `from=` and
/// `expiry-time=` are kept, `sites=` too unless `sites` is given, and any
/// option the node does not implement refuses the key, naming it.
pub fn add(path: &Path, name: &str, key_text: &str, sites: Option<&[String]>) -> Result<String> {
    validate_name(name)?;
    let text = key_text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .context("no public key in the input")?;
    let line = parse_line(text).map_err(|e| {
        anyhow::anyhow!("{e:#} (expected a line like `ssh-ed25519 AAAA... comment`)")
    })?;
    let mut grant = match line.grant {
        Ok(g) => g,
        Err(why) => bail!("{why}; the key was not added"),
    };
    if let Some(s) = sites {
        if grant.sites.is_some() {
            bail!("the key line has a sites= option and --sites was given too; use one");
        }
        grant.sites = Some(s.to_vec());
    }
    let key = line.key;
    let existing = load(path)?;
    if existing.iter().any(|k| k.name == name) {
        bail!("a key named {name:?} exists already; remove it first");
    }
    if let Some(k) = existing.iter().find(|k| k.key.key_data() == key.key_data()) {
        bail!("this key is authorized already, as {:?}", k.name);
    }
    let mut out = std::fs::read_to_string(path).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&render_line(name, &key, &grant)?);
    out.push('\n');
    write_private(path, &out)?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

/// `toppcloud node keys remove`: drops every line whose key has that name
/// (refused lines included).
pub fn remove(path: &Path, name: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut removed = false;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let named = parse_line(line.trim()).is_ok_and(|k| k.name == name);
            removed |= named;
            !named
        })
        .collect();
    if !removed {
        bail!("no key named {name:?}");
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    write_private(path, &out)
}

/// `toppcloud node keys list`: name, fingerprint, and what the key may do
/// (or why its line is refused).
pub fn list(path: &Path) -> Result<Vec<(String, String, String)>> {
    Ok(load(path)?
        .into_iter()
        .map(|k| {
            let what = match &k.grant {
                Err(why) => format!("REFUSED (line {}): {why}", k.line),
                Ok(g) => {
                    let mut w = g
                        .sites
                        .as_ref()
                        .map(|s| s.join(","))
                        .unwrap_or_else(|| "all sites".into());
                    if let Some(f) = &g.from {
                        w.push_str(&format!(", from {}", f.text));
                    }
                    if let Some(e) = &g.expires {
                        let verb = if e.passed(unix_now()) {
                            "expired"
                        } else {
                            "expires"
                        };
                        w.push_str(&format!(", {verb} {}", e.shown()));
                    }
                    w
                }
            };
            (k.name, k.key.fingerprint(HashAlg::Sha256).to_string(), what)
        })
        .collect())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::atomic::write(path, text.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDCO5zfppmYtqu6BYvmPzcAIytcOfewhJksAo6ohm5AL laptop";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl other";

    fn grant(line: &str) -> Result<Grant, String> {
        parse_line(line).unwrap().grant
    }

    fn refusal(line: &str) -> String {
        grant(line).unwrap_err()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_plain_and_restricted_lines() {
        let k = parse_line(KEY).unwrap();
        assert_eq!(k.name, "laptop");
        assert_eq!(k.grant.unwrap(), Grant::default());
        let g = grant(&format!(
            "no-pty,sites=\"blog.example.com,*.example.org\" {KEY}"
        ))
        .unwrap();
        assert_eq!(
            g.sites.unwrap(),
            vec!["blog.example.com".to_string(), "*.example.org".to_string()]
        );
    }

    #[test]
    fn restrictions_the_node_always_enforces_are_accepted() {
        let g = grant(&format!(
            "restrict,no-pty,No-Port-Forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc {KEY}"
        ))
        .unwrap();
        assert_eq!(g, Grant::default());
    }

    #[test]
    fn options_the_node_does_not_implement_refuse_the_line_naming_them() {
        for (option, named) in [
            ("command=\"ls\"", "command="),
            ("environment=\"A=b\"", "environment="),
            ("permitopen=\"localhost:80\"", "permitopen="),
            ("permitlisten=\"8080\"", "permitlisten="),
            ("principals=\"root\"", "principals="),
            ("tunnel=\"0\"", "tunnel="),
            ("cert-authority", "cert-authority"),
            ("restrict,pty", "pty"),
            ("port-forwarding", "port-forwarding"),
            ("agent-forwarding", "agent-forwarding"),
            ("no-touch-required", "no-touch-required"),
            ("verify-required", "verify-required"),
            ("frobnicate", "frobnicate"),
            ("COMMAND=\"ls\"", "command="),
        ] {
            let why = refusal(&format!("{option} {KEY}"));
            assert!(
                why.contains(&format!("option {named} is not supported")),
                "{option}: {why}"
            );
        }
    }

    #[test]
    fn malformed_options_refuse_the_line() {
        for (options, says) in [
            ("sites=blog", "double-quoted value"),
            ("sites=\"a\",,no-pty", "empty option"),
            ("no-pty,", "trailing comma"),
            ("sites=\"a\"x", "unexpected"),
            ("sites=\"a\",sites=\"b\"", "given twice"),
        ] {
            let why = refusal(&format!("{options} {KEY}"));
            assert!(why.contains(says), "{options}: {why}");
        }
        // An unterminated quote leaves no key to read.
        assert!(parse_line(&format!("sites=\"a {KEY}")).is_err());
    }

    #[test]
    fn quoted_values_may_hold_blanks_commas_and_escaped_quotes() {
        let opts = parse_options(r#"sites="a, b",command="echo \"hi\" there""#).unwrap();
        assert_eq!(opts[0].value.as_deref(), Some("a, b"));
        assert_eq!(opts[1].name, "command");
        assert_eq!(opts[1].value.as_deref(), Some(r#"echo "hi" there"#));
        let line = format!(r#"command="echo \"x y\"",no-pty {KEY}"#);
        let (field, rest) = split_options(&line).unwrap();
        assert_eq!(field, Some(r#"command="echo \"x y\"",no-pty"#));
        assert_eq!(rest, KEY);
    }

    #[test]
    fn from_matches_addresses_networks_and_wildcards() {
        let f = FromList::parse("127.0.0.1").unwrap();
        assert!(f.allows(ip("127.0.0.1")));
        assert!(!f.allows(ip("127.0.0.2")));
        // A mapped IPv4 peer is its IPv4 address.
        assert!(f.allows(ip("::ffff:127.0.0.1")));

        let f = FromList::parse("10.0.0.0/8,192.168.1.*,2001:db8::/32").unwrap();
        assert!(f.allows(ip("10.1.2.3")));
        assert!(!f.allows(ip("11.0.0.1")));
        assert!(f.allows(ip("192.168.1.77")));
        assert!(!f.allows(ip("192.168.10.1")));
        assert!(f.allows(ip("2001:db8:ffff::1")));
        assert!(!f.allows(ip("2001:db9::1")));
        assert!(!f.allows(ip("127.0.0.1")));

        let f = FromList::parse("192.168.?.1,FE80::*").unwrap();
        assert!(f.allows(ip("192.168.5.1")));
        assert!(!f.allows(ip("192.168.55.1")));
        assert!(f.allows(ip("fe80::abcd")));

        assert!(FromList::parse("*").unwrap().allows(ip("203.0.113.9")));
        assert!(
            FromList::parse("0.0.0.0/0")
                .unwrap()
                .allows(ip("203.0.113.9"))
        );
        assert!(!FromList::parse("0.0.0.0/0").unwrap().allows(ip("::1")));
    }

    #[test]
    fn from_negations_win() {
        let f = FromList::parse("127.0.0.0/8,!127.0.0.2").unwrap();
        assert!(f.allows(ip("127.0.0.1")));
        assert!(!f.allows(ip("127.0.0.2")));
        // The order does not matter: a negated match refuses.
        let f = FromList::parse("!127.0.0.2,127.0.0.0/8").unwrap();
        assert!(!f.allows(ip("127.0.0.2")));
        assert!(f.allows(ip("127.0.0.3")));
        // Only negations: nothing matches positively, so nothing is allowed.
        let f = FromList::parse("!10.0.0.1").unwrap();
        assert!(!f.allows(ip("127.0.0.1")));
        let f = FromList::parse("*,!10.*").unwrap();
        assert!(f.allows(ip("127.0.0.1")));
        assert!(!f.allows(ip("10.9.9.9")));
    }

    #[test]
    fn from_refuses_names_and_malformed_entries() {
        for (list, says) in [
            ("*.example.com", "host name pattern"),
            ("laptop", "host name pattern"),
            ("10.0.0.1,gateway.lan", "host name pattern"),
            ("10.0.0.1/8", "write 10.0.0.0/8"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/x", "0 to 32"),
            ("ten/8", "not an IP address"),
            ("127.1", "not an IP address"),
            ("10.0.0.1,", "empty"),
            ("!", "empty"),
        ] {
            let err = FromList::parse(list).unwrap_err();
            assert!(err.contains(says), "{list}: {err}");
        }
        let why = refusal(&format!("from=\"*.example.com\" {KEY}"));
        assert!(why.contains("option from=\"*.example.com\""), "{why}");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*", b""));
        assert!(wildcard(b"a*c", b"abbbc"));
        assert!(wildcard(b"a*c", b"ac"));
        assert!(!wildcard(b"a*c", b"acb"));
        assert!(wildcard(b"*.1", b"10.0.0.1"));
        assert!(!wildcard(b"?", b""));
        assert!(wildcard(b"**a", b"xya"));
        assert!(wildcard(b"1?.*.*.?", b"10.0.0.1"));
    }

    #[test]
    fn expiry_times_are_utc() {
        let e = Expiry::parse("20300101").unwrap();
        assert_eq!(e.unix, 1_893_456_000);
        assert_eq!(e.shown(), "2030-01-01 00:00:00 UTC");
        assert!(!e.passed(1_893_456_000));
        assert!(e.passed(1_893_456_001));
        assert_eq!(
            Expiry::parse("203001011230").unwrap().unix,
            1_893_456_000 + 45_000
        );
        assert_eq!(
            Expiry::parse("20300101123005Z").unwrap().unix,
            1_893_456_000 + 45_005
        );
        for bad in [
            "2030010",
            "2030-01-01",
            "20301301",
            "20300230",
            "203001012460",
            "",
            "Z",
        ] {
            assert!(Expiry::parse(bad).is_err(), "{bad}");
        }
        let why = refusal(&format!("expiry-time=\"2030\" {KEY}"));
        assert!(why.contains("option expiry-time=\"2030\""), "{why}");
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn public(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    #[test]
    fn identify_checks_expiry_and_source() {
        let local = ip("127.0.0.1");
        let (_d, path) = file(&format!(
            "expiry-time=\"20300101\",from=\"127.0.0.0/8,!127.0.0.2\" {KEY}\n"
        ));
        let key = public(KEY);
        let now = 1_800_000_000;
        assert_eq!(identify_at(&path, &key, local, now).unwrap().name, "laptop");
        assert!(identify_at(&path, &key, ip("127.0.0.2"), now).is_none());
        assert!(identify_at(&path, &key, ip("10.0.0.1"), now).is_none());
        assert!(identify_at(&path, &key, local, 1_893_456_001).is_none());
        assert!(identify_at(&path, &public(OTHER), local, now).is_none());
    }

    #[test]
    fn the_first_line_that_lets_the_key_in_decides() {
        let (_d, path) = file(&format!(
            "from=\"10.0.0.0/8\",sites=\"a.localhost\" {KEY}\n\
             expiry-time=\"20200101\",sites=\"b.localhost\" {KEY}\n\
             from=\"127.0.0.1\",sites=\"c.localhost\" {KEY}\n"
        ));
        let id = identify_at(&path, &public(KEY), ip("127.0.0.1"), 1_800_000_000).unwrap();
        let site = |s: &str| SiteName::parse(s, &crate::names::Domain::localhost()).unwrap();
        assert!(id.may_use(&site("c")));
        assert!(!id.may_use(&site("a")) && !id.may_use(&site("b")));
        let id = identify_at(&path, &public(KEY), ip("10.1.1.1"), 1_800_000_000).unwrap();
        assert!(id.may_use(&site("a")) && !id.may_use(&site("c")));
        assert!(identify_at(&path, &public(KEY), ip("192.0.2.1"), 1_800_000_000).is_none());
    }

    #[test]
    fn a_refused_line_refuses_its_key_everywhere_in_the_file() {
        let local = ip("127.0.0.1");
        let (_d, path) = file(&format!(
            "{OTHER}\ncommand=\"/bin/false\" {KEY}\n{KEY}\nnot a key line\n"
        ));
        assert!(identify(&path, &public(KEY), local).is_none());
        // Other keys in the file still work.
        assert_eq!(
            identify(&path, &public(OTHER), local).unwrap().name,
            "other"
        );
        let keys = load(&path).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[1].line, 2);
        assert!(keys[1].grant.as_ref().unwrap_err().contains("command="));
        let listed = list(&path).unwrap();
        assert!(listed[1].2.starts_with("REFUSED (line 2)"), "{listed:?}");
    }

    #[test]
    fn patterns_match_sites() {
        assert!(site_matches("blog.example.com", "blog.example.com"));
        assert!(site_matches("*.example.org", "a.example.org"));
        assert!(!site_matches("*.example.org", "example.org"));
        assert!(!site_matches("*.example.org", "aexample.org"));
        assert!(!site_matches("blog.example.com", "blog.example.com.evil"));
    }

    #[test]
    fn cli_patterns_are_validated() {
        assert_eq!(
            parse_patterns("blog,*.example.org", &crate::names::Domain::localhost()).unwrap(),
            vec!["blog.localhost", "*.example.org"]
        );
        assert!(parse_patterns("../x", &crate::names::Domain::localhost()).is_err());
    }

    #[test]
    fn render_round_trips() {
        let k = parse_line(KEY).unwrap();
        let g = Grant {
            sites: Some(vec!["blog.localhost".into()]),
            from: Some(FromList::parse("10.0.0.0/8,!10.0.0.1").unwrap()),
            expires: Some(Expiry::parse("20300101").unwrap()),
        };
        let line = render_line("work", &k.key, &g).unwrap();
        assert!(
            line.starts_with(
                "sites=\"blog.localhost\",from=\"10.0.0.0/8,!10.0.0.1\",expiry-time=\"20300101\" "
            ),
            "{line}"
        );
        let back = parse_line(&line).unwrap();
        assert_eq!(back.name, "work");
        assert_eq!(back.grant.unwrap(), g);
    }

    #[test]
    fn add_keeps_restrictions_and_refuses_unsupported_options() {
        let (_d, path) = file("");
        let err = add(&path, "ci", &format!("command=\"deploy\" {KEY}"), None).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("option command= is not supported"), "{text}");
        assert!(text.contains("not added"), "{text}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");

        add(
            &path,
            "ci",
            &format!("no-pty,from=\"10.0.0.0/8\",expiry-time=\"20300101\" {KEY}"),
            Some(&["blog.localhost".to_string()]),
        )
        .unwrap();
        let keys = load(&path).unwrap();
        let g = keys[0].grant.as_ref().unwrap();
        assert_eq!(g.from.as_ref().unwrap().text, "10.0.0.0/8");
        assert_eq!(g.expires.as_ref().unwrap().text, "20300101");
        assert_eq!(g.sites.as_deref().unwrap(), ["blog.localhost"]);

        let err = add(
            &path,
            "other",
            &format!("sites=\"a.localhost\" {OTHER}"),
            Some(&["b.localhost".to_string()]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("use one"), "{err:#}");
    }
}
