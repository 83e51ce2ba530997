//! The original upload path, `toppcloud update DIR --host=SITE`: the client
//! runs the real rsync over ssh, and the node accepts one form of
//! `rsync --server` only: a receiver, writing into a fresh upload area that
//! is seeded with the live release (so only what changed crosses the wire).
//!
//! The exec line is parsed into values ([`Upload`]: the site and
//! [`ReceiverFlags`]), and rsync's argument list is then built from those
//! values alone ([`Upload::argv`]). No word the client sent reaches rsync:
//! a bare word before `.` would otherwise be taken by rsync's receiver as
//! its destination, and an option with a path (`--log-file`, `--temp-dir`,
//! `--link-dest`...) would reach outside the upload area.

use std::ffi::OsString;
use std::path::Path;

use crate::names::{Domain, SiteName};

/// rsync's own client never sends more than nine `v` (it caps them so).
const MAX_VERBOSE: u8 = 9;
/// `-xx` also skips mount points' contents; more mean nothing more.
const MAX_ONE_FILE_SYSTEM: u8 = 2;
/// `-ii` asks for every item, unchanged ones too; more mean nothing more.
const MAX_ITEMIZE: u8 = 2;
/// The largest level any of rsync's compressors takes (zstd's 22).
const MAX_COMPRESS_LEVEL: u8 = 22;
/// rsync reads `--timeout` into a C int.
const MAX_TIMEOUT: u32 = i32::MAX as u32;
/// rsync's client builds its whole short-option word in 64 bytes; what
/// follows `e` is a few characters in practice.
const MAX_CLIENT_INFO_LEN: usize = 32;
/// How much of a refused word a message quotes.
const MAX_SHOWN: usize = 60;

/// A validated upload: the site, and the receiver's options as values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub site: SiteName,
    pub flags: ReceiverFlags,
}

/// The options a receiver into the upload area may be given, one field per
/// option. What is not here is refused: perms (`-p`: the upload area holds
/// hard links to the live release, whose files must never be changed in
/// place; staging sets permissions), owners, groups and devices, secluded
/// arguments (`-s`: paths would arrive unseen), `--sender`, and every option
/// that names a path or a program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverFlags {
    /// `-v`, counted.
    pub verbose: u8,
    /// `-q`.
    pub quiet: bool,
    /// `-u`, `--update`.
    pub update: bool,
    /// `-n`, `--dry-run`.
    pub dry_run: bool,
    /// `-l`, `--links`.
    pub links: bool,
    /// `-O`, `--omit-dir-times`.
    pub omit_dir_times: bool,
    /// `-W`, `--whole-file`.
    pub whole_file: bool,
    /// `-t`, `--times`.
    pub times: bool,
    /// `-r`, `--recursive`.
    pub recursive: bool,
    /// `-c`, `--checksum`.
    pub checksum: bool,
    /// `-C`, `--cvs-exclude`.
    pub cvs_exclude: bool,
    /// `-I`, `--ignore-times`.
    pub ignore_times: bool,
    /// `-x`, `--one-file-system`, counted.
    pub one_file_system: u8,
    /// `-z`, `--compress`.
    pub compress: bool,
    /// `-h`, `--human-readable`.
    pub human_readable: bool,
    /// `-i`, `--itemize-changes`, counted.
    pub itemize: u8,
    /// What the client put after `e` in its short options.
    pub client_info: Option<ClientInfo>,
    /// `--compress-level=N`.
    pub compress_level: Option<u8>,
    /// `--timeout=N`, in seconds.
    pub timeout: Option<u32>,
    /// `--log-format=...`: one of the fixed values rsync's client sends.
    pub log_format: Option<LogFormat>,
    /// `--delete` and its `--delete-WHEN` forms.
    pub delete: Option<DeleteWhen>,
    /// `--delete-excluded` (implies `--delete`).
    pub delete_excluded: bool,
    /// `--ignore-errors`.
    pub ignore_errors: bool,
    /// `--force`.
    pub force: bool,
    /// `--safe-links`.
    pub safe_links: bool,
    /// `--no-implied-dirs`.
    pub no_implied_dirs: bool,
    /// `--size-only`.
    pub size_only: bool,
    /// `--existing`.
    pub existing: bool,
    /// `--ignore-existing`.
    pub ignore_existing: bool,
}

/// When deletions happen: `--delete` alone lets rsync choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteWhen {
    Default,
    Before,
    During,
    Delay,
    After,
}

impl DeleteWhen {
    fn option(self) -> &'static str {
        match self {
            DeleteWhen::Default => "--delete",
            DeleteWhen::Before => "--delete-before",
            DeleteWhen::During => "--delete-during",
            DeleteWhen::Delay => "--delete-delay",
            DeleteWhen::After => "--delete-after",
        }
    }
}

/// The `--log-format` values rsync's client (3.0 to 3.4 alike) sends a
/// server: it tells the receiver whether to itemize, never a format to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `%i`, for `-i`.
    Itemize,
    /// `%i%I`, for `-ii`.
    ItemizeAll,
    /// `%o`, for an `--out-format` with `%o` but no `%i`.
    Operation,
    /// `X`, for any other `--out-format`.
    Other,
}

impl LogFormat {
    fn value(self) -> &'static str {
        match self {
            LogFormat::Itemize => "%i",
            LogFormat::ItemizeAll => "%i%I",
            LogFormat::Operation => "%o",
            LogFormat::Other => "X",
        }
    }

    fn parse(value: &str) -> Option<LogFormat> {
        [
            LogFormat::Itemize,
            LogFormat::ItemizeAll,
            LogFormat::Operation,
            LogFormat::Other,
        ]
        .into_iter()
        .find(|f| f.value() == value)
    }
}

/// The letters rsync's client puts after its protocol version in `-e`, in
/// the order it writes them: incremental recursion, symlink times, symlink
/// iconv, safe file lists, no xattr hard-link optimization, the checksum
/// seed fix, inplace-partial, varint flags, id-0 names, and a pre-release
/// varint form (`V`) still read by servers.
const CLIENT_INFO_LETTERS: &str = "iLsfxCIvuV";

/// What follows `e` in the client's short options: `.` (or a pre-release
/// client's `PROTOCOL.SUB`) and the protocol features it supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// A pre-release client's protocol and sub-protocol; None for `.`.
    pub pre_release: Option<(u16, u16)>,
    /// One bit per letter of [`CLIENT_INFO_LETTERS`].
    letters: u16,
}

impl ClientInfo {
    fn parse(text: &str) -> Result<ClientInfo, String> {
        let refused = |why: &str| {
            format!(
                "rsync's protocol details -e{} are refused: {why}",
                shown(text)
            )
        };
        if text.len() > MAX_CLIENT_INFO_LEN {
            return Err(refused(&format!(
                "longer than {MAX_CLIENT_INFO_LEN} characters"
            )));
        }
        let (pre_release, rest) = if let Some(rest) = text.strip_prefix('.') {
            (None, rest)
        } else {
            let (version, rest) = text
                .split_once('.')
                .ok_or_else(|| refused("expected \".\" or PROTOCOL.SUB first"))?;
            let sub_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (sub, rest) = rest.split_at(sub_len);
            match (number::<u16>(version, 3), number::<u16>(sub, 3)) {
                (Some(v), Some(s)) => (Some((v, s)), rest),
                _ => return Err(refused("expected \".\" or PROTOCOL.SUB first")),
            }
        };
        let mut letters = 0;
        for c in rest.chars() {
            let Some(bit) = CLIENT_INFO_LETTERS.find(c) else {
                return Err(refused(&format!(
                    "{} is not one of rsync's ({CLIENT_INFO_LETTERS})",
                    shown(&c.to_string())
                )));
            };
            letters |= 1 << bit;
        }
        Ok(ClientInfo {
            pre_release,
            letters,
        })
    }

    /// Whether the client sent this letter.
    pub fn has(&self, letter: char) -> bool {
        CLIENT_INFO_LETTERS
            .find(letter)
            .is_some_and(|bit| self.letters & (1 << bit) != 0)
    }

    fn render(&self, out: &mut String) {
        match self.pre_release {
            Some((protocol, sub)) => out.push_str(&format!("{protocol}.{sub}")),
            None => out.push('.'),
        }
        out.extend(CLIENT_INFO_LETTERS.chars().filter(|c| self.has(*c)));
    }
}

/// Parses `rsync --server OPTIONS . SITE/` as split from the exec line.
pub fn parse(words: &[String], domain: &Domain) -> Result<Upload, String> {
    let [rsync, server, rest @ ..] = words else {
        return Err("not an rsync upload".into());
    };
    if rsync != "rsync" || server != "--server" {
        return Err("not an rsync upload".into());
    }
    if rest.iter().any(|w| w == "--sender") {
        return Err(
            "downloads are refused: this node only receives uploads (rsync --sender)".into(),
        );
    }
    // Options come first; the first word that is not one must be `.`.
    let end = rest
        .iter()
        .position(|w| !w.starts_with('-') || w == "-")
        .unwrap_or(rest.len());
    let mut flags = ReceiverFlags::default();
    for word in &rest[..end] {
        flags.add(word)?;
    }
    if flags.delete_excluded && flags.delete.is_none() {
        flags.delete = Some(DeleteWhen::Default);
    }
    let dest = match &rest[end..] {
        [] => {
            return Err(
                "rsync upload without a destination (secluded arguments are refused; drop -s)"
                    .into(),
            );
        }
        [word, ..] if word != "." => {
            return Err(format!(
                "unexpected rsync argument \"{}\": an upload is options, then \".\", then the site (HOST:SITE/)",
                shown(word)
            ));
        }
        [_] => return Err("rsync upload without a destination".into()),
        [_, dest] => dest,
        [_, _, extra, ..] => {
            return Err(format!(
                "unexpected rsync argument \"{}\" after the destination: an upload has one destination, the site (HOST:SITE/)",
                shown(extra)
            ));
        }
    };
    let name = dest.trim_end_matches('/');
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.contains('/') || name.contains("..") {
        return Err(format!(
            "the destination \"{}\" leaves the upload area: give the site only (HOST:SITE/)",
            shown(dest)
        ));
    }
    let site = SiteName::parse(name, domain).map_err(|e| e.to_string())?;
    Ok(Upload { site, flags })
}

impl Upload {
    /// rsync's arguments (after the program name) for a receiver writing
    /// into `dest`, built from the parsed values alone, in the order
    /// rsync's own client sends them.
    pub fn argv(&self, dest: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--server".into()];
        args.extend(self.flags.words().into_iter().map(OsString::from));
        args.push(".".into());
        args.push(dest.as_os_str().to_owned());
        args
    }
}

impl ReceiverFlags {
    /// Adds one option word, or says why it is refused.
    fn add(&mut self, word: &str) -> Result<(), String> {
        match (word.strip_prefix("--"), word.strip_prefix('-')) {
            (Some(long), _) => self.add_long(long),
            (None, Some(cluster)) => self.add_short(cluster),
            (None, None) => Err(format!(
                "unexpected rsync argument \"{}\" among the options",
                shown(word)
            )),
        }
    }

    fn add_short(&mut self, cluster: &str) -> Result<(), String> {
        if cluster.is_empty() {
            return Err("unexpected rsync argument \"-\"".into());
        }
        for (i, c) in cluster.char_indices() {
            match c {
                'v' => count(&mut self.verbose, MAX_VERBOSE, "-v")?,
                'q' => self.quiet = true,
                'u' => self.update = true,
                'n' => self.dry_run = true,
                'l' => self.links = true,
                'O' => self.omit_dir_times = true,
                'W' => self.whole_file = true,
                't' => self.times = true,
                'r' => self.recursive = true,
                'c' => self.checksum = true,
                'C' => self.cvs_exclude = true,
                'I' => self.ignore_times = true,
                'x' => count(&mut self.one_file_system, MAX_ONE_FILE_SYSTEM, "-x")?,
                'z' => self.compress = true,
                'h' => self.human_readable = true,
                'i' => count(&mut self.itemize, MAX_ITEMIZE, "-i")?,
                'e' => {
                    // rsync takes the rest of the word as -e's value.
                    let info = &cluster[i + 1..];
                    if info.is_empty() {
                        return Err(
                            "rsync option -e without protocol details in the same word is refused"
                                .into(),
                        );
                    }
                    if self.client_info.is_some() {
                        return Err("rsync option -e is given twice".into());
                    }
                    self.client_info = Some(ClientInfo::parse(info)?);
                    return Ok(());
                }
                's' => {
                    return Err(
                        "rsync option -s is refused by this node (secluded arguments would arrive unseen)"
                            .into(),
                    );
                }
                'p' | 'E' | 'A' | 'X' => {
                    return Err(format!(
                        "rsync option -{c} is refused by this node (permissions, ACLs and xattrs: the upload shares files with the live release, and staging sets permissions)"
                    ));
                }
                'o' | 'g' | 'D' => {
                    return Err(format!(
                        "rsync option -{c} is refused by this node (owners, groups, devices and secluded arguments are not accepted)"
                    ));
                }
                c => {
                    return Err(format!(
                        "rsync option -{} is refused by this node",
                        shown(&c.to_string())
                    ));
                }
            }
        }
        Ok(())
    }

    fn add_long(&mut self, long: &str) -> Result<(), String> {
        let (name, value) = match long.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (long, None),
        };
        let no_value = || match value {
            Some(_) => Err(format!("rsync option --{name} takes no value")),
            None => Ok(()),
        };
        let when = match name {
            "delete" => Some(DeleteWhen::Default),
            "delete-before" => Some(DeleteWhen::Before),
            "delete-during" => Some(DeleteWhen::During),
            "delete-delay" => Some(DeleteWhen::Delay),
            "delete-after" => Some(DeleteWhen::After),
            _ => None,
        };
        if let Some(when) = when {
            no_value()?;
            return self.set_delete(when);
        }
        let flag = match name {
            "delete-excluded" => Some(&mut self.delete_excluded),
            "ignore-errors" => Some(&mut self.ignore_errors),
            "force" => Some(&mut self.force),
            "safe-links" => Some(&mut self.safe_links),
            "omit-dir-times" => Some(&mut self.omit_dir_times),
            "no-implied-dirs" => Some(&mut self.no_implied_dirs),
            "size-only" => Some(&mut self.size_only),
            "existing" => Some(&mut self.existing),
            "ignore-existing" => Some(&mut self.ignore_existing),
            _ => None,
        };
        if let Some(flag) = flag {
            no_value()?;
            *flag = true;
            return Ok(());
        }
        let takes_value = ["compress-level", "timeout", "log-format"].contains(&name);
        let Some(value) = value.filter(|_| takes_value) else {
            // The path or program an option names is left out of the message.
            return Err(if takes_value {
                format!("rsync option --{name} needs its value in the same word (--{name}=...)")
            } else {
                format!("rsync option --{} is refused by this node", shown(name))
            });
        };
        let refused = |what: &str| {
            format!(
                "rsync option --{name}={} is refused by this node: {what}",
                shown(value)
            )
        };
        match name {
            "compress-level" => {
                let level = number::<u8>(value, 2)
                    .filter(|l| *l <= MAX_COMPRESS_LEVEL)
                    .ok_or_else(|| refused(&format!("a level is 0 to {MAX_COMPRESS_LEVEL}")))?;
                self.compress_level = Some(level);
            }
            "timeout" => {
                let seconds = number::<u32>(value, 10)
                    .filter(|s| *s <= MAX_TIMEOUT)
                    .ok_or_else(|| refused("a timeout is a number of seconds"))?;
                self.timeout = Some(seconds);
            }
            _ => {
                let format = LogFormat::parse(value).ok_or_else(|| {
                    refused("only the values rsync's client sends (%i, %i%I, %o, X)")
                })?;
                self.log_format = Some(format);
            }
        }
        Ok(())
    }

    /// rsync refuses more than one `--delete-WHEN`; so does the node, rather
    /// than pick one for the client.
    fn set_delete(&mut self, when: DeleteWhen) -> Result<(), String> {
        match self.delete {
            Some(old)
                if old != when && old != DeleteWhen::Default && when != DeleteWhen::Default =>
            {
                Err(format!(
                    "rsync options {} and {} may not be combined",
                    old.option(),
                    when.option()
                ))
            }
            Some(old) if when == DeleteWhen::Default => {
                self.delete = Some(old);
                Ok(())
            }
            _ => {
                self.delete = Some(when);
                Ok(())
            }
        }
    }

    /// The option words, in the order rsync's client sends them.
    fn words(&self) -> Vec<String> {
        let mut short = String::from("-");
        let mut put = |on: bool, c: char| {
            if on {
                short.push(c);
            }
        };
        for _ in 0..self.verbose {
            put(true, 'v');
        }
        put(self.quiet, 'q');
        put(self.update, 'u');
        put(self.dry_run, 'n');
        put(self.links, 'l');
        put(self.omit_dir_times, 'O');
        put(self.whole_file, 'W');
        put(self.times, 't');
        put(self.recursive, 'r');
        put(self.checksum, 'c');
        put(self.cvs_exclude, 'C');
        put(self.ignore_times, 'I');
        for _ in 0..self.one_file_system {
            put(true, 'x');
        }
        put(self.compress, 'z');
        put(self.human_readable, 'h');
        for _ in 0..self.itemize {
            put(true, 'i');
        }
        if let Some(info) = &self.client_info {
            short.push('e');
            info.render(&mut short);
        }
        let mut words = Vec::new();
        if short.len() > 1 {
            words.push(short);
        }
        if let Some(level) = self.compress_level {
            words.push(format!("--compress-level={level}"));
        }
        if let Some(format) = self.log_format {
            words.push(format!("--log-format={}", format.value()));
        }
        if let Some(seconds) = self.timeout {
            words.push(format!("--timeout={seconds}"));
        }
        match self.delete {
            // rsync's client leaves --delete out when --delete-excluded
            // (which implies it) is sent.
            Some(DeleteWhen::Default) if self.delete_excluded => {}
            Some(when) => words.push(when.option().into()),
            None => {}
        }
        for (on, option) in [
            (self.delete_excluded, "--delete-excluded"),
            (self.force, "--force"),
            (self.size_only, "--size-only"),
            (self.ignore_errors, "--ignore-errors"),
            (self.safe_links, "--safe-links"),
            (self.ignore_existing, "--ignore-existing"),
            (self.existing, "--existing"),
            (self.no_implied_dirs, "--no-implied-dirs"),
        ] {
            if on {
                words.push(option.into());
            }
        }
        words
    }
}

/// Counts a repeatable short option, refusing more than `max`.
fn count(n: &mut u8, max: u8, option: &str) -> Result<(), String> {
    if *n >= max {
        return Err(format!(
            "rsync option {option} is given more than {max} times"
        ));
    }
    *n += 1;
    Ok(())
}

/// A decimal number of at most `digits` digits, and nothing else (no sign,
/// no spaces).
fn number<T: std::str::FromStr>(text: &str, digits: usize) -> Option<T> {
    let ok = !text.is_empty() && text.len() <= digits && text.bytes().all(|b| b.is_ascii_digit());
    if ok { text.parse().ok() } else { None }
}

/// A word as a message quotes it: escaped, and cut if long.
fn shown(word: &str) -> String {
    let mut out: String = word.chars().take(MAX_SHOWN).collect();
    if out.len() < word.len() {
        out.push_str("...");
    }
    out.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        shell_words::split(line).unwrap()
    }

    fn argv_text(u: &Upload, dest: &str) -> Vec<String> {
        u.argv(Path::new(dest))
            .into_iter()
            .map(|w| w.into_string().unwrap())
            .collect()
    }

    #[test]
    fn the_clients_form_is_accepted() {
        let u = parse(
            &words("rsync --server -ltrze.iLsfxCIvu --log-format=%i --delete . blog/"),
            &crate::names::Domain::localhost(),
        )
        .unwrap();
        assert_eq!(u.site.as_str(), "blog.localhost");
        let f = &u.flags;
        assert!(f.links && f.times && f.recursive && f.compress);
        assert!(!f.checksum && !f.update);
        assert_eq!(f.log_format, Some(LogFormat::Itemize));
        assert_eq!(f.delete, Some(DeleteWhen::Default));
        let info = f.client_info.unwrap();
        assert_eq!(info.pre_release, None);
        assert!("iLsfxCIvu".chars().all(|c| info.has(c)));
        assert!(!info.has('V'));
        assert_eq!(
            argv_text(&u, "/srv/area"),
            [
                "--server",
                "-ltrze.iLsfxCIvu",
                "--log-format=%i",
                "--delete",
                ".",
                "/srv/area"
            ]
        );
    }

    /// What rsync's client sends for these command lines (captured from a
    /// real client); the node rebuilds exactly those words.
    #[test]
    fn argv_reproduces_what_real_clients_send() {
        for line in [
            "rsync --server -ltrze.iLsfxCIvu --log-format=%i --delete . blog/",
            "rsync --server -ltre.iLsfxCIvu . blog/",
            "rsync --server -vvltrze.iLsfxCIvu . blog/",
            "rsync --server -ltrcze.iLsfxCIvu --timeout=30 --delete-after . blog/",
            "rsync --server -ltrze.iLsfxCIvu --log-format=%i --delete-excluded . blog/",
            "rsync --server -ltre.iLsfxCIvu --compress-level=3 . blog/",
            "rsync --server -unlOWtrCIxe.iLsfxCIvu --force --size-only --ignore-errors --safe-links --ignore-existing --existing . blog/",
            "rsync --server -ltre.iLsfxCIvu --delete-during . blog/",
            "rsync --server -ltre.iLsfxCIvu --delete-delay . blog/",
            "rsync --server -ltre.iLsfxCIvu --delete-before . blog/",
            "rsync --server -qltre.iLsfxCIvu . blog/",
            "rsync --server -ltrze.iLsfxCIvu --compress-level=5 . blog/",
            "rsync --server -ltre.iLsfxCIvu --log-format=%i%I . blog/",
            "rsync --server -ltre.iLsfxCIvu --log-format=X . blog/",
            "rsync --server -vltre.iLsfxCIvu --log-format=%i . blog/",
            "rsync --server -ltre31.14iLsfxCIvu . blog/",
            "rsync --server -ltr . blog/",
        ] {
            let w = words(line);
            let u = parse(&w, &crate::names::Domain::localhost())
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            let mut expected = w[1..w.len() - 1].to_vec();
            expected.push("blog/".into());
            assert_eq!(argv_text(&u, "blog/"), expected, "{line}");
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let d = &crate::names::Domain::localhost();
        let e = parse(
            &words("rsync --server --sender -lptre.iLsfxCIvu . blog/"),
            d,
        )
        .unwrap_err();
        assert!(e.contains("--sender"), "{e}");
        let e = parse(&words("rsync --server -slptre.iLsfxCIvu"), d).unwrap_err();
        assert!(e.contains("secluded") || e.contains("-s"), "{e}");
        let e = parse(&words("rsync --server -logDtpre.iLsfxCIvu . blog/"), d).unwrap_err();
        assert!(e.contains("-o"), "{e}");
        let e = parse(&words("rsync --server -lptre.iLsfxCIvu . blog/"), d).unwrap_err();
        assert!(e.contains("-p"), "{e}");
        let e = parse(
            &words("rsync --server -ltre.iLsfxCIvu --inplace . blog/"),
            d,
        )
        .unwrap_err();
        assert!(e.contains("--inplace"), "{e}");
        let e = parse(&words("rsync --server -ltre.iLsfxCIvu . ../etc/"), d).unwrap_err();
        assert!(e.contains("leaves the upload area"), "{e}");
        let e = parse(&words("rsync --server -ltre.iLsfxCIvu . blog/sub/"), d).unwrap_err();
        assert!(e.contains("leaves the upload area"), "{e}");
        let e = parse(
            &words("rsync --server -ltre.iLsfxCIvu --log-file=/etc/x . blog/"),
            d,
        )
        .unwrap_err();
        assert!(e.contains("--log-file"), "{e}");
        let e = parse(&words("rsync --server -ltre.iLsfxCIvu . prev.blog/"), d).unwrap_err();
        assert!(e.contains("prev"), "{e}");
    }

    #[test]
    fn options_with_paths_or_programs_are_refused_by_name() {
        let d = &crate::names::Domain::localhost();
        for (option, named) in [
            ("--log-file=/tmp/x", "--log-file"),
            ("--inplace", "--inplace"),
            ("--partial-dir=/tmp", "--partial-dir"),
            ("--temp-dir=/tmp", "--temp-dir"),
            ("--backup-dir=/tmp", "--backup-dir"),
            ("--files-from=/etc/passwd", "--files-from"),
            ("--filter=merge /etc/x", "--filter"),
            ("--exclude=/x", "--exclude"),
            ("--compare-dest=/var/lib", "--compare-dest"),
            ("--link-dest=/var/lib", "--link-dest"),
            ("--copy-dest=/var/lib", "--copy-dest"),
            ("--rsync-path=/bin/sh", "--rsync-path"),
            ("--chmod=u+s", "--chmod"),
            ("--perms", "--perms"),
            ("--owner", "--owner"),
            ("--group", "--group"),
            ("--devices", "--devices"),
            ("--log-format=%f", "--log-format=%f"),
            ("--timeout=-1", "--timeout=-1"),
            ("--compress-level=99", "--compress-level=99"),
            ("--delete=x", "--delete takes no value"),
            ("--timeout", "--timeout needs its value"),
            ("-S", "-S"),
            ("-R", "-R"),
            ("-b", "-b"),
            ("-L", "-L"),
            ("-k", "-k"),
            ("-H", "-H"),
            ("-g", "-g"),
            ("-D", "-D"),
        ] {
            let line = format!("rsync --server -ltre.iLsfxCIvu {option} . blog/");
            let e = parse(&words(&line), d).unwrap_err();
            assert!(e.contains(named), "{option}: {e}");
        }
        for (bad, named) in [
            ("-ltre", "-e without protocol details"),
            ("-ltre.iLq", "q"),
            ("-ltre.", ""),
            ("-ltre32.iL", "PROTOCOL.SUB"),
            ("-ltrex.iL", "PROTOCOL.SUB"),
            ("-ltre.iLsfxCIvuiLsfxCIvuiLsfxCIvuiLsfxCIvu", "longer than"),
            ("-vvvvvvvvvv", "-v is given more than 9"),
        ] {
            let line = format!("rsync --server {bad} . blog/");
            match parse(&words(&line), d) {
                Ok(u) if named.is_empty() => assert!(u.flags.client_info.is_some()),
                Ok(u) => panic!("{bad}: accepted as {u:?}"),
                Err(e) => assert!(e.contains(named), "{bad}: {e}"),
            }
        }
        let e = parse(
            &words("rsync --server -ltr --delete-before --delete-after . blog/"),
            d,
        )
        .unwrap_err();
        assert!(e.contains("--delete-before and --delete-after"), "{e}");
        let e = parse(&words("rsync --server -ltr . blog/ /etc/"), d).unwrap_err();
        assert!(e.contains("\"/etc/\" after the destination"), "{e}");
        let e = parse(&words("rsync --server -ltr ."), d).unwrap_err();
        assert!(e.contains("without a destination"), "{e}");
    }

    /// The attack: a key limited to one site named another directory
    /// before `.`, and rsync's receiver wrote into it.
    #[test]
    fn rsync_bare_words_never_reach_rsync() {
        let line = "rsync --server -rlte.iLsfxCIvu /var/lib/toppcloud . blog/";
        let e = parse(&words(line), &crate::names::Domain::localhost()).unwrap_err();
        assert!(e.contains("\"/var/lib/toppcloud\""), "{e}");
        for line in [
            "rsync --server /var/lib/toppcloud . blog/",
            "rsync --server -rlt /tmp -e.iL . blog/",
            "rsync --server -rlt - . blog/",
            "rsync --server -rlt . blog/ /var/lib/toppcloud",
            "rsync --server -rlt . /var/lib/toppcloud blog/",
            "rsync --server -rlt blog/",
        ] {
            assert!(
                parse(&words(line), &crate::names::Domain::localhost()).is_err(),
                "{line}"
            );
        }
    }

    /// A small deterministic generator (xorshift), so the property runs in
    /// `cargo test` without a dependency; `fuzz/` runs it at length.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// For every accepted input, the built argv holds no word of the input
    /// except those the parse reproduces: `--server`, option words rebuilt
    /// from values, `.` and the destination given to argv; and parsing the
    /// built words again gives the same upload.
    #[test]
    fn argv_holds_only_what_the_parse_reproduces() {
        const SHORT: &str = "vqunlOWtrcCIxzhievopgDsSRLkHb.0123V/";
        const WORDS: &[&str] = &[
            "--delete",
            "--delete-before",
            "--delete-during",
            "--delete-delay",
            "--delete-after",
            "--delete-excluded",
            "--ignore-errors",
            "--force",
            "--safe-links",
            "--omit-dir-times",
            "--no-implied-dirs",
            "--size-only",
            "--existing",
            "--ignore-existing",
            "--compress-level=9",
            "--compress-level=x",
            "--timeout=30",
            "--timeout=",
            "--log-format=%i",
            "--log-format=%i%I",
            "--log-format=%n",
            "--log-file=/tmp/log",
            "--temp-dir=/tmp",
            "/var/lib/toppcloud",
            "/tmp",
            "blog/",
            ".",
            "-",
            "--",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut input = vec!["rsync".to_string(), "--server".to_string()];
            for _ in 0..rng.next() % 5 {
                if rng.next().is_multiple_of(2) {
                    let len = rng.next() % 8;
                    let cluster: String = (0..len)
                        .map(|_| {
                            let i = (rng.next() % SHORT.len() as u64) as usize;
                            SHORT.as_bytes()[i] as char
                        })
                        .collect();
                    input.push(format!("-{cluster}"));
                } else {
                    input.push(rng.pick(WORDS).to_string());
                }
            }
            if !rng.next().is_multiple_of(8) {
                input.push(".".into());
            }
            input.push(
                rng.pick(&["blog/", "/blog", "blog", "x.example.com/"])
                    .into(),
            );
            if rng.next().is_multiple_of(8) {
                input.push(rng.pick(WORDS).into());
            }
            let Ok(upload) = parse(&input, &crate::names::Domain::localhost()) else {
                continue;
            };
            accepted += 1;
            let dest = "/srv/upload-area";
            let argv = argv_text(&upload, dest);
            assert_eq!(argv.first().map(String::as_str), Some("--server"));
            assert_eq!(&argv[argv.len() - 2..], [".", dest], "{input:?}");
            let reproduced = upload.flags.words();
            for word in &argv[1..argv.len() - 2] {
                assert!(reproduced.contains(word), "{word:?} from {input:?}");
                assert!(word.starts_with('-'), "{word:?} from {input:?}");
            }
            for word in &input[2..] {
                let bare = !word.starts_with('-') && word != ".";
                assert!(
                    !(bare && argv.contains(word)),
                    "{word:?} reached rsync from {input:?}"
                );
            }
            let mut again = vec!["rsync".to_string()];
            again.extend(argv_text(&upload, &format!("{}/", upload.site)));
            assert_eq!(
                parse(&again, &crate::names::Domain::localhost()),
                Ok(upload),
                "{input:?}"
            );
        }
        assert!(accepted > 1000, "only {accepted} inputs were accepted");
    }
}
