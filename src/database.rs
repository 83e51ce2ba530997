//! The database an app is given, as it is given to it: the original
//! toppcloud's `CONFIG_PG_*` variables and `DATABASE_URL`, made from a
//! database's address and credentials (a site's database on a node, the
//! one `[devel] postgresql` names for `toppcloud serve`), and read back
//! from a connection URL. One contract, written once for both.

use anyhow::{Context, Result, bail};

/// A PostgreSQL connection URL as libpq reads it:
/// `postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME`, or `postgres://`;
/// each part percent-encoded; the port 5432 by default; the host a socket
/// directory with `postgresql://USER@/DBNAME?host=/var/run/postgresql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub user: String,
    pub password: String,
    /// A name or address, or a socket directory (starting with `/`).
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

const PG_SHAPE: &str = "postgresql://USER:PASSWORD@HOST:PORT/DBNAME";

impl Database {
    pub fn parse(url: &str) -> Result<Database> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .with_context(|| format!("must look like {PG_SHAPE}"))?;
        if rest.contains('#') {
            bail!("a #fragment is not understood");
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let Some((authority, path)) = rest.split_once('/') else {
            bail!("names no database: {PG_SHAPE}");
        };
        let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
            bail!("names no user: {PG_SHAPE}");
        };
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, percent_decode(p).context("the password")?),
            None => (userinfo, String::new()),
        };
        let user = percent_decode(user).context("the user")?;
        if user.is_empty() {
            bail!("names no user: {PG_SHAPE}");
        }
        if path.contains('/') {
            bail!("the path is one database name: {PG_SHAPE}");
        }
        let dbname = percent_decode(path).context("the database name")?;
        if dbname.is_empty() {
            bail!("names no database: {PG_SHAPE}");
        }
        let (mut host, port) = split_host_port(hostport)?;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("host", dir)) => {
                    if !host.is_empty() {
                        bail!("names its host twice (before the path and in ?host=)");
                    }
                    host = percent_decode(dir).context("?host=")?;
                    if !host.starts_with('/') {
                        bail!("?host= is for a socket directory (an absolute path)");
                    }
                }
                _ => bail!("{pair:?} is not understood (only ?host=/SOCKET/DIRECTORY is)"),
            }
        }
        if host.is_empty() {
            bail!(
                "names no host: {PG_SHAPE}, or postgresql://USER@/DBNAME?host=/var/run/postgresql \
                 for a socket directory"
            );
        }
        Ok(Database {
            user,
            password,
            host,
            port,
            dbname,
        })
    }

    /// `scheme://user:password@host:port/dbname`, every part
    /// percent-encoded (no `:password` when there is none); a socket
    /// directory goes in `?host=`, as libpq and SQLAlchemy read it.
    pub fn url(&self, scheme: &str) -> String {
        let mut userinfo = percent_encode(&self.user);
        if !self.password.is_empty() {
            userinfo.push(':');
            userinfo.push_str(&percent_encode(&self.password));
        }
        let db = percent_encode(&self.dbname);
        if self.host.starts_with('/') {
            format!(
                "{scheme}://{userinfo}@:{}/{db}?host={}",
                self.port,
                percent_encode(&self.host)
            )
        } else if self.host.contains(':') {
            format!("{scheme}://{userinfo}@[{}]:{}/{db}", self.host, self.port)
        } else {
            format!("{scheme}://{userinfo}@{}:{}/{db}", self.host, self.port)
        }
    }

    /// What the app sees: the original toppcloud's `CONFIG_PG_*` names,
    /// and `DATABASE_URL` (what dj-database-url and most frameworks read).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CONFIG_PG_DBNAME", self.dbname.clone()),
            ("CONFIG_PG_USER", self.user.clone()),
            ("CONFIG_PG_PASSWORD", self.password.clone()),
            ("CONFIG_PG_HOST", self.host.clone()),
            ("CONFIG_PG_PORT", self.port.to_string()),
            // SQLAlchemy 1.4 and later refuse the `postgres://` scheme.
            ("CONFIG_PG_SQLALCHEMY", self.url("postgresql")),
            ("DATABASE_URL", self.url("postgres")),
        ]
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or empty (a socket directory
/// given in `?host=`); the port defaults to 5432.
fn split_host_port(hostport: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .context("an IPv6 address is missing its ']'")?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ":.".contains(c))
        {
            bail!("[{host}] is not an IPv6 address");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').context("junk after the IPv6 address")?),
        };
        (host.to_owned(), port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        let host = percent_decode(host).context("the host")?;
        // libpq also takes a socket directory there, percent-encoded.
        if !host.starts_with('/') && host.contains(['/', ':', '@', ' ']) {
            bail!("{host:?} is not a host name");
        }
        (host, port)
    };
    let port = match port {
        None | Some("") => 5432,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => bail!("{p:?} is not a port"),
        },
    };
    Ok((host, port))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so the
/// result is safe in any part of a URL.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .context("a '%' is not followed by two hex digits")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).context("not UTF-8 once decoded")?;
    if text.chars().any(char::is_control) {
        bail!("control characters are not allowed");
    }
    Ok(text)
}
