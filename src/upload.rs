//! The original upload path, `toppcloud update DIR --host=SITE`: the client
//! runs the real rsync over ssh, and the node accepts one form of
//! `rsync --server` only: a receiver, writing into a fresh upload area that
//! is seeded with the live release (so only what changed crosses the wire),
//! with a whitelist of options. The exec line is rebuilt from validated
//! parts; nothing the client sent reaches a shell or names a path.

use crate::names::SiteName;

/// rsync's single-letter options a receiver may be given (before the `e`
/// that carries protocol details): recursion, links, times, compression,
/// verbosity and comparison modes. No perms (`p`: the upload area holds
/// hard links to the live release, whose files must never be changed in
/// place; the release gets its own permissions when staged), no owners,
/// groups or devices (`o`, `g`, `D`), no secluded args (`s`: paths would
/// arrive unseen), no `--sender`.
const SHORT_OK: &str = "rltzvqcuIWxhinC";

const LONG_OK: &[&str] = &[
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
];

/// A validated upload: the site and the options to hand rsync's receiver.
#[derive(Debug, PartialEq, Eq)]
pub struct Upload {
    pub site: SiteName,
    pub options: Vec<String>,
}

/// Parses `rsync --server OPTIONS . SITE/` as split from the exec line.
pub fn parse(words: &[String], domain: &str) -> Result<Upload, String> {
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
    for o in rest.iter().filter(|w| w.starts_with('-')) {
        check_option(o)?;
    }
    let [options @ .., dot, dest] = rest else {
        return Err("rsync upload without a destination".into());
    };
    if dot != "." {
        return Err(
            "rsync upload in an unexpected form (secluded arguments are refused; drop -s)".into(),
        );
    }
    let name = dest.trim_end_matches('/');
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.contains('/') || name.contains("..") {
        return Err(format!(
            "the destination {dest:?} leaves the upload area: give the site only (HOST:SITE/)"
        ));
    }
    let site = SiteName::parse(name, domain).map_err(|e| e.to_string())?;
    Ok(Upload {
        site,
        options: options.to_vec(),
    })
}

fn check_option(o: &str) -> Result<(), String> {
    if let Some(long) = o.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        let ok = LONG_OK.contains(&format!("--{name}").as_str())
            || (name == "compress-level" && long[name.len()..].trim_start_matches('=').parse::<u8>().is_ok())
            || (name == "timeout" && long[name.len()..].trim_start_matches('=').parse::<u32>().is_ok())
            // What the receiver reports per file (`-i` sends `%i`); no file.
            || name == "log-format";
        return if ok {
            Ok(())
        } else {
            Err(format!("rsync option {o} is refused by this node"))
        };
    }
    let Some(cluster) = o.strip_prefix('-') else {
        return Err(format!("unexpected rsync argument {o:?}"));
    };
    // `e` carries the client's protocol details; what follows it is data.
    let flags = cluster.split_once('e').map_or(cluster, |(f, _)| f);
    match flags.chars().find(|c| !SHORT_OK.contains(*c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "rsync option -{c} is refused by this node (owners, groups, devices and secluded arguments are not accepted)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        shell_words::split(line).unwrap()
    }

    #[test]
    fn the_clients_form_is_accepted() {
        let u = parse(
            &words("rsync --server -ltrze.iLsfxCIvu --delete . blog/"),
            "localhost",
        )
        .unwrap();
        assert_eq!(u.site.as_str(), "blog.localhost");
        assert_eq!(u.options, vec!["-ltrze.iLsfxCIvu", "--delete"]);
    }

    #[test]
    fn refusals_name_the_problem() {
        let d = "localhost";
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
        let e = parse(&words("rsync --server -logDtpre.iLsfxCIvu . blog/"), d).unwrap_err();
        assert!(e.contains("-o"), "{e}");
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
}
