//! `toppcloud init`: a new app directory that deploys as it is. It holds an
//! `app.ini`, a plain WSGI `main.py` (or, with `--config`, a Paste Deploy
//! `config.ini` and the module it names), `requirements.txt`, `static/`,
//! `.gitignore`, and a local virtualenv `.venv` for `toppcloud serve`, built
//! the way the node builds one (uv on Debian's /usr/bin/python3).
//!
//! It never overwrites anything: every file is checked first, and one that
//! exists already stops the command before anything is written.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The interpreter mod_wsgi embeds on a node: the app's venv is built on it
/// locally too, so that what runs in `serve` is what runs on the node.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

const MAX_APP_NAME_LEN: usize = 64;
const TAIL_LINES: usize = 15;

/// Which kind of app `init` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `runner = main.py`: a WSGI `application` in plain Python.
    Main,
    /// `runner = config.ini`: Paste Deploy builds the app from config.ini.
    Config,
}

const APP_INI: &str = "\
# How toppcloud runs this app; only [production] is read. runner is what
# serves it: file.py[#object], file.ini[#section] (Paste Deploy) or static.
[production]
app_name = {{NAME}}
runner = {{RUNNER}}
";

const MAIN_PY: &str = r#""""{{NAME}}: a WSGI app for toppcloud.

app.ini says `runner = main.py`: the node (and `toppcloud serve`) call the
global `application` below. Files under static/ are served before it is.
"""
import html
import os


def application(environ, start_response):
    body = (
        "<!DOCTYPE html>\n"
        "<title>{{NAME}}</title>\n"
        "<h1>Hello from {{NAME}}</h1>\n"
        "<p>Served at %s by %s.</p>\n"
        % (
            html.escape(os.environ.get("CANONICAL_HOST", "?")),
            html.escape(os.environ.get("TOPPCLOUD", "?")),
        )
    ).encode("utf-8")
    start_response("200 OK", [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ])
    return [body]
"#;

const CONFIG_INI: &str = "\
# Paste Deploy configuration. app.ini says `runner = config.ini`: the node
# (and `toppcloud serve`) load [app:main] below, with the app's environment
# (SITE, CANONICAL_HOST, TOPPCLOUD, CONFIG_*) as the global configuration,
# and the site's secret as SECRET (a setting may say `secret = %(SECRET)s`).
[app:main]
use = call:app:make_app
greeting = Hello from {{NAME}}
";

const APP_PY: &str = r#""""{{NAME}}: a WSGI app for toppcloud, built by Paste Deploy from config.ini."""
import html


def make_app(global_conf, greeting="Hello", **settings):
    """Paste Deploy calls this with the global configuration (the app's
    environment) and [app:main]'s settings as keyword arguments."""
    where = html.escape(global_conf.get("CANONICAL_HOST", "?"))
    by = html.escape(global_conf.get("TOPPCLOUD", "?"))

    def application(environ, start_response):
        body = (
            "<!DOCTYPE html>\n"
            "<title>{{NAME}}</title>\n"
            "<h1>%s</h1>\n"
            "<p>Served at %s by %s.</p>\n" % (html.escape(greeting), where, by)
        ).encode("utf-8")
        start_response("200 OK", [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ])
        return [body]

    return application
"#;

const REQUIREMENTS: &str = "\
# The app's Python packages, one per line as pip reads them. The node installs
# them at every deploy (and reuses its environment while this file does not
# change). For `toppcloud serve`, install them into .venv after an edit:
#   uv pip install --python .venv/bin/python -r requirements.txt
";

const ROBOTS_TXT: &str = "User-agent: *\nDisallow:\n";

const GITIGNORE: &str = ".venv/\n__pycache__/\n*.pyc\n";

/// One file `init` writes: its path relative to the app and its contents.
struct NewFile {
    rel: &'static str,
    contents: String,
}

/// The files of a new app called `name`.
fn files(template: Template, name: &str) -> Vec<NewFile> {
    let fill = |text: &str| text.replace("{{NAME}}", name);
    let (runner, requirements) = match template {
        Template::Main => ("main.py", REQUIREMENTS.to_owned()),
        Template::Config => ("config.ini", format!("{REQUIREMENTS}PasteDeploy\n")),
    };
    let mut out = vec![NewFile {
        rel: "app.ini",
        contents: fill(APP_INI).replace("{{RUNNER}}", runner),
    }];
    match template {
        Template::Main => out.push(NewFile {
            rel: "main.py",
            contents: fill(MAIN_PY),
        }),
        Template::Config => {
            out.push(NewFile {
                rel: "config.ini",
                contents: fill(CONFIG_INI),
            });
            out.push(NewFile {
                rel: "app.py",
                contents: fill(APP_PY),
            });
        }
    }
    out.push(NewFile {
        rel: "requirements.txt",
        contents: requirements,
    });
    out.push(NewFile {
        rel: "static/robots.txt",
        contents: ROBOTS_TXT.to_owned(),
    });
    out.push(NewFile {
        rel: ".gitignore",
        contents: GITIGNORE.to_owned(),
    });
    out
}

/// An app_name (1 to 64 of A-Z a-z 0-9 _ -, the rule app.ini enforces) from
/// a directory name: lower case, anything else becomes "-", runs of "-" and
/// leading or trailing ones go. "My Blog.example" gives "my-blog-example".
pub fn app_name_from(dir_name: &str) -> String {
    let mut name = String::new();
    for c in dir_name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if c == '-' && (name.is_empty() || name.ends_with('-')) {
            continue;
        }
        name.push(c);
    }
    name.truncate(MAX_APP_NAME_LEN);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "app".to_owned()
    } else {
        name.to_owned()
    }
}

/// The name of the directory `dir` is, or will be.
fn dir_name(dir: &Path) -> Result<String> {
    let abs = if dir.exists() {
        dir.canonicalize()
    } else {
        std::path::absolute(dir)
    }
    .with_context(|| format!("cannot resolve {}", dir.display()))?;
    Ok(abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// `dir` as the user would type it in a shell.
fn shell_path(dir: &Path) -> String {
    shell_words::quote(&dir.to_string_lossy()).into_owned()
}

pub fn run(dir: &Path, template: Template) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    let name = app_name_from(&dir_name(dir)?);
    let files = files(template, &name);

    // Everything is checked before anything is written.
    let mut taken: Vec<String> = files
        .iter()
        .filter(|f| dir.join(f.rel).symlink_metadata().is_ok())
        .map(|f| dir.join(f.rel).display().to_string())
        .collect();
    let static_dir = dir.join("static");
    if static_dir.symlink_metadata().is_ok() && !static_dir.is_dir() {
        taken.push(static_dir.display().to_string());
    }
    if !taken.is_empty() {
        bail!(
            "{} already exist{}: init never overwrites a file, and wrote nothing\n\
             hint: move {} away, or init a new directory",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            if taken.len() == 1 { "it" } else { "them" },
        );
    }

    std::fs::create_dir_all(&static_dir)
        .with_context(|| format!("cannot create {}", static_dir.display()))?;
    for f in &files {
        let path = dir.join(f.rel);
        // create_new: a file that appeared since the check is still not overwritten.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        out.write_all(f.contents.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let runner = match template {
        Template::Main => "main.py",
        Template::Config => "config.ini",
    };
    println!(
        "created app {name} in {} (runner = {runner}):",
        dir.display()
    );
    for f in &files {
        println!("  {}", f.rel);
    }

    let venv = dir.join(".venv");
    let has_requirements = matches!(template, Template::Config);
    if venv.symlink_metadata().is_ok() {
        println!("  .venv (already there: left as it was)");
        if has_requirements {
            println!(
                "hint: install the requirements into it: uv pip install --python {}/bin/python -r {}",
                shell_path(&venv),
                shell_path(&dir.join("requirements.txt"))
            );
        }
    } else {
        println!(
            "building .venv for toppcloud serve{}...",
            if has_requirements {
                ", with requirements.txt"
            } else {
                ""
            }
        );
        match make_venv(dir, has_requirements) {
            Ok(how) => println!("  .venv (built with {how})"),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&venv);
                eprintln!(
                    "warning: no .venv: {e:#}\n\
                     `toppcloud serve` will use {SYSTEM_PYTHON} without the app's requirements"
                );
            }
        }
    }
    print_next_steps(dir, &name);
    Ok(())
}

/// Builds DIR/.venv with uv (as the node does), else with Python's venv
/// module and pip; says which.
fn make_venv(dir: &Path, install: bool) -> Result<String> {
    let venv = dir.join(".venv");
    let python = venv.join("bin/python");
    let requirements = dir.join("requirements.txt");
    let with_uv = (|| {
        let mut c = uv();
        c.arg("venv").arg("--python").arg(SYSTEM_PYTHON).arg(&venv);
        run_quietly(c, "uv venv")?;
        if install {
            let mut c = uv();
            c.args(["pip", "install", "--python"])
                .arg(&python)
                .arg("-r")
                .arg(&requirements);
            run_quietly(c, "uv pip install")?;
        }
        anyhow::Ok(format!("uv, on {SYSTEM_PYTHON}"))
    })();
    let uv_error = match with_uv {
        Ok(how) => return Ok(how),
        Err(e) => e,
    };
    let _ = std::fs::remove_dir_all(&venv);
    eprintln!("warning: {uv_error:#}\ntrying {SYSTEM_PYTHON} -m venv instead");
    let mut c = Command::new(SYSTEM_PYTHON);
    c.args(["-m", "venv"]).arg(&venv);
    run_quietly(c, &format!("{SYSTEM_PYTHON} -m venv"))?;
    if install {
        let mut c = Command::new(&python);
        c.args(["-m", "pip", "install", "-q", "-r"])
            .arg(&requirements);
        run_quietly(c, "pip install")?;
    }
    Ok(format!("{SYSTEM_PYTHON} -m venv"))
}

fn uv() -> Command {
    let mut c = Command::new("uv");
    c.env("UV_PYTHON_DOWNLOADS", "never")
        .env("UV_NO_PROGRESS", "1")
        .env("NO_COLOR", "1");
    c
}

/// Runs `cmd`, showing its output only when it fails.
fn run_quietly(mut cmd: Command, program: &str) -> Result<()> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("{program}: command not found"),
            _ => anyhow::anyhow!("cannot run {program}: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    bail!("{program} failed ({}):\n{tail}", out.status)
}

fn print_next_steps(dir: &Path, name: &str) {
    let d = shell_path(dir);
    let steps = [
        (
            format!("toppcloud serve {d}"),
            "# try it at http://127.0.0.1:8000/; reloads on every change",
        ),
        (
            format!("cd {d} && git init -b main && git add -A && git commit -m \"New app\""),
            "",
        ),
        (
            "git remote add toppcloud ssh://toppcloud@NODE:2222/SITE".to_owned(),
            "",
        ),
        (
            "git push toppcloud main".to_owned(),
            "# deploys; returns once the site is live",
        ),
    ];
    let width = steps
        .iter()
        .filter(|(_, note)| !note.is_empty())
        .map(|(cmd, _)| cmd.len())
        .max()
        .unwrap_or(0);
    println!("\nNext steps:");
    for (cmd, note) in &steps {
        if note.is_empty() {
            println!("  {cmd}");
        } else {
            println!("  {cmd:width$}   {note}");
        }
    }
    println!(
        "or, without git:\n  toppcloud update {d} --host=SITE\n\
         (NODE: your node's host name; SITE: the site, e.g. {name}, or {name}.example.com)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_ini::{AppIni, Runner};

    #[test]
    fn app_names_follow_app_ini_rules() {
        assert_eq!(app_name_from("blog"), "blog");
        assert_eq!(app_name_from("My Blog.example"), "my-blog-example");
        assert_eq!(app_name_from("--a__b--"), "a__b");
        assert_eq!(app_name_from("blög"), "bl-g");
        assert_eq!(app_name_from("..."), "app");
        assert_eq!(app_name_from(""), "app");
        assert_eq!(app_name_from(&"x".repeat(80)).len(), 64);
        assert_eq!(
            app_name_from(&format!("{}-y", "x".repeat(63))),
            "x".repeat(63)
        );
    }

    #[test]
    fn both_templates_pass_app_ini() {
        for (template, runner) in [
            (
                Template::Main,
                Runner::Python {
                    file: "main.py".into(),
                    object: "application".into(),
                },
            ),
            (
                Template::Config,
                Runner::PasteDeploy {
                    file: "config.ini".into(),
                    section: None,
                },
            ),
        ] {
            let files = files(template, "my-app");
            let ini = &files.iter().find(|f| f.rel == "app.ini").unwrap().contents;
            let names: Vec<&str> = files.iter().map(|f| f.rel).collect();
            let (app, warnings) = AppIni::parse(ini, &|rel| names.contains(&rel)).unwrap();
            assert_eq!(app.app_name, "my-app");
            assert_eq!(app.runner, runner);
            assert!(warnings.is_empty());
        }
    }
}
