//! toppcloud: `git push` a Python WSGI app to your own server. This binary is
//! both the node (`toppcloud node run`) and the commands that talk to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use toppcloud::config::NodeConfig;
use toppcloud::laptop::{config as client, init, remote, serve, update};
use toppcloud::layout::Layout;
use toppcloud::node::{self, control, keys as access, push};

#[derive(Parser)]
#[command(
    name = "toppcloud",
    version,
    about = "git push a Python WSGI app to your own server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new app directory: app.ini, a WSGI app, static/ and a .venv.
    #[command(after_help = "Examples:\n  \
        toppcloud init blog            # main.py with a WSGI `application`\n  \
        toppcloud init --config blog   # a Paste Deploy config.ini (and PasteDeploy in requirements.txt)\n\n\
        Existing files are never overwritten: init refuses, naming them, and writes nothing.")]
    Init {
        /// The directory to create (or an existing one without these files).
        dir: PathBuf,
        /// A plain WSGI app: main.py with `application` (the default).
        #[arg(long, conflicts_with = "config")]
        main: bool,
        /// A Paste Deploy app: config.ini with [app:main] and the module it names.
        #[arg(long)]
        config: bool,
    },
    /// Run an app on this machine as a node would, reloading on every change.
    #[command(after_help = "Examples:\n  \
        toppcloud serve blog              # http://127.0.0.1:8000/\n  \
        toppcloud serve blog --port 8001\n\n\
        The app restarts when one of its files changes. Files under static/ are\n\
        served before the app, as on a node. The app gets SITE and CANONICAL_HOST\n\
        (the host:port served on), TOPPCLOUD=devel/VERSION, CONFIG_SECRET, TEMP\n\
        and the variables of the services app.ini asks for (CONFIG_FILES,\n\
        CONFIG_PG_*: a database named by [devel] postgresql in\n\
        ~/.config/toppcloud/config.toml), and runs on the app's\n\
        .venv/bin/python if there is one, else on /usr/bin/python3.")]
    Serve {
        /// The app directory (with its app.ini).
        dir: PathBuf,
        /// The port to listen on.
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
    /// Run or talk to a node (the server side).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Deploy an app directory with rsync, the original toppcloud way.
    #[command(
        after_help = "Examples:\n  toppcloud update blog/ --host=blog.example.com\n  \
        toppcloud update blog/ --node ssh://toppcloud@127.0.0.1:2222   # host from app.ini's default_host"
    )]
    Update {
        /// The app directory (with its app.ini).
        dir: PathBuf,
        /// The site to deploy to; default: app.ini's default_host.
        #[arg(long)]
        host: Option<String>,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
        /// Add the site's names to /etc/hosts when they have no DNS entry.
        #[arg(long)]
        etc_hosts: bool,
    },
    /// List or change a site's config vars on the node (a change is a new release).
    #[command(after_help = "Examples:\n  \
        toppcloud config blog.example.com set SENTRY_DSN=https://... DEBUG=0   # a new release: the same code, the new values\n  \
        toppcloud config blog.example.com              # the names\n  \
        toppcloud config blog.example.com --values     # NAME=VALUE\n  \
        toppcloud config blog.example.com unset DEBUG\n\n\
        A change deploys the live release's code again with the new environment,\n\
        checked before the switch like any deploy (prev.SITE keeps the old one).\n\
        Values are kept on the node, readable by root alone, and never appear in\n\
        its logs, deploy records or API; the names do.")]
    Config {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// List NAME=VALUE instead of the names alone.
        #[arg(long, conflicts_with = "change")]
        values: bool,
        /// `set NAME=VALUE...` or `unset NAME...`; nothing: list the names.
        #[arg(value_name = "CHANGE")]
        change: Vec<String>,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Make a site's previous release live again at once (its daemon is warm).
    #[command(after_help = "Example:\n  \
        toppcloud rollback blog.example.com   # prev becomes live; live becomes prev\n\n\
        Checked before the switch, nothing rebuilt, no request lost. Run it\n\
        again to go back.")]
    Rollback {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Every site this key may use: live and previous release, last deploy, health.
    #[command(after_help = "Examples:\n  \
        toppcloud status\n  \
        toppcloud status --json --node ssh://toppcloud@127.0.0.1:2222\n\n\
        Health is a GET of the site's live host through the node's Apache:\n\
        ok (2xx or 3xx within 5 s), failing (STATUS), or no live release.")]
    Status {
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Make any kept release of a site live again, without rebuilding it.
    #[command(after_help = "Example:\n  \
        toppcloud activate blog.example.com 12   # loaded into a spare, checked, switched\n\n\
        The release that was live becomes prev.SITE.")]
    Activate {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// The release's number (see the deploy summaries or GET /sites/SITE).
        release: String,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Serve a site's maintenance page (503) on all its hosts; releases stay.
    #[command(after_help = "Example:\n  \
        toppcloud disable blog.example.com   # 503 maintenance page\n  \
        toppcloud enable blog.example.com    # the live release back\n\n\
        A deploy to a disabled site still makes its release live, behind\n\
        the maintenance page until `toppcloud enable`.")]
    Disable {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Serve a disabled site's live release again.
    #[command(after_help = "Example:\n  toppcloud enable blog.example.com")]
    Enable {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Remove a site: routes, daemons, releases, repository. Needs --yes.
    #[command(after_help = "Example:\n  \
        toppcloud destroy blog.example.com --yes          # files, secrets, database kept\n  \
        toppcloud destroy blog.example.com --yes --data   # files and secrets too\n\n\
        The site's database is always kept.")]
    Destroy {
        #[command(flatten)]
        destroy: DestroyArgs,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// A site's names (host, prev., aliases, N.), what each serves and its certificate.
    #[command(after_help = "Examples:\n  \
        toppcloud domains blog.example.com                     # names, certificates, expiry\n  \
        toppcloud domains blog.example.com add www.blog.example.com\n  \
        toppcloud domains blog.example.com remove blog.example.org")]
    Domains {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// Nothing (list), `add NAME` or `remove NAME`.
        #[arg(num_args = 0..=2)]
        change: Vec<String>,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// A site's kept releases: id, state (live, prev, kept), version, commit, when, who.
    #[command(after_help = "Examples:\n  \
        toppcloud releases blog.example.com\n  \
        toppcloud releases blog.example.com --json")]
    Releases {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// A site's app errors (its stderr and tracebacks), or its access log.
    #[command(after_help = "Examples:\n  \
        toppcloud logs blog.example.com            # the last 100 lines of its error log\n  \
        toppcloud logs blog.example.com -f         # and what comes after, until Ctrl-C\n  \
        toppcloud logs blog.example.com --access -n 20\n\n\
        Through the node's SSH door, with the key's site rights.")]
    Logs {
        #[command(flatten)]
        logs: LogsArgs,
        /// A configured node's name or an ssh:// URL; default: the default node.
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// Record a node and make it the default for update, config, rollback,
    /// activate and remote.
    #[command(after_help = "Example:\n  toppcloud default-node ssh://toppcloud@127.0.0.1:2222")]
    DefaultNode {
        /// An ssh:// URL, or the name of a node already configured.
        node: String,
        /// The name to give the node (default: its host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// In a git checkout: add the `toppcloud` remote for a site on the node.
    #[command(
        after_help = "Example:\n  toppcloud remote blog.example.com && git push toppcloud main"
    )]
    Remote {
        /// The site; default: app.ini's default_host.
        site: Option<String>,
        #[arg(long, env = "TOPPCLOUD_NODE")]
        node: Option<String>,
    },
    /// What the node's git hooks run; not for people.
    #[command(hide = true, subcommand)]
    Hook(HookCommand),
}

#[derive(Subcommand)]
enum HookCommand {
    /// Hands a push's ref updates (stdin) to the node and relays its verdict.
    PreReceive,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Authorize a public key to push (all sites, or only --sites).
    #[command(
        after_help = "Examples:\n  toppcloud node keys add laptop ~/.ssh/id_ed25519.pub\n  \
        cat key.pub | toppcloud node keys add ci - --sites blog.example.com,*.example.org"
    )]
    Add {
        /// A name for the key, shown in logs and release records.
        name: String,
        /// The public key file, or - for standard input.
        keyfile: PathBuf,
        /// Limit the key to these sites (names or *.domain), comma-separated.
        #[arg(long)]
        sites: Option<String>,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// List authorized keys.
    List {
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Remove a key by name.
    Remove {
        name: String,
        #[command(flatten)]
        flags: NodeFlags,
    },
}

/// What `logs` shows, on the laptop and on the node.
#[derive(clap::Args)]
struct LogsArgs {
    /// The site: a host name, or a bare name that gets the node's domain.
    site: String,
    /// Keep printing lines as they are written, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    /// How many lines from the end (at most 10000).
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
    /// The access log (one line a request) instead of the error log.
    #[arg(long)]
    access: bool,
}

/// What `destroy` removes, on the laptop and on the node.
#[derive(clap::Args)]
struct DestroyArgs {
    /// The site: a host name, or a bare name that gets the node's domain.
    site: String,
    /// Confirm: the site's releases and repository are gone for good.
    #[arg(long)]
    yes: bool,
    /// Remove its files directory, config vars and secret as well.
    #[arg(long)]
    data: bool,
}

#[derive(Args, Clone)]
struct NodeFlags {
    /// The node's config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Built-in defaults for a node on loopback: data in the user's data
    /// directory (/var/lib/toppcloud-dev for root), sites at
    /// http://SITE.localhost:8080/.
    #[arg(long)]
    dev: bool,
    /// Where the node keeps its state (overrides the config's data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl NodeFlags {
    /// The node a command talks to (a running dev node when no flag says).
    fn resolve(&self) -> Result<NodeConfig> {
        NodeConfig::resolve_running(self.config.as_deref(), self.data_dir.as_deref(), self.dev)
    }

    /// The node `node run` starts: exactly what the flags say.
    fn resolve_for_run(&self) -> Result<NodeConfig> {
        NodeConfig::resolve(self.config.as_deref(), self.data_dir.as_deref(), self.dev)
    }
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Start the node: Apache, the deploy engine and the HTTP API.
    #[command(after_help = "Example:\n  toppcloud node run --dev")]
    Run(NodeFlags),
    /// Deploy an app directory to a site on the running node.
    #[command(
        after_help = "Example:\n  toppcloud node deploy blog ./blog   # live at http://blog.localhost:8080/"
    )]
    Deploy {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// The app directory (with its app.ini).
        dir: PathBuf,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// List or change a site's config vars on the running node.
    #[command(after_help = "Examples:\n  \
        toppcloud node config blog set GREETING='hello world' DEBUG=0   # a new release with the new values\n  \
        toppcloud node config blog                     # the names\n  \
        toppcloud node config blog --values            # NAME=VALUE\n  \
        toppcloud node config blog unset DEBUG")]
    Config {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// List NAME=VALUE instead of the names alone.
        #[arg(long, conflicts_with = "change")]
        values: bool,
        /// `set NAME=VALUE...` or `unset NAME...`; nothing: list the names.
        #[arg(value_name = "CHANGE")]
        change: Vec<String>,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Serve a site's maintenance page (503) on the running node.
    #[command(after_help = "Example:\n  toppcloud node disable blog")]
    Disable {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Serve a disabled site's live release again on the running node.
    #[command(after_help = "Example:\n  toppcloud node enable blog")]
    Enable {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Remove a site from the running node. Needs --yes.
    #[command(after_help = "Example:\n  toppcloud node destroy blog --yes")]
    Destroy {
        #[command(flatten)]
        destroy: DestroyArgs,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Make a site's previous release live again on the running node.
    #[command(after_help = "Example:\n  toppcloud node rollback blog")]
    Rollback {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Make a kept release of a site live again on the running node.
    #[command(after_help = "Example:\n  toppcloud node activate blog 12")]
    Activate {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// The release's number.
        release: String,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Every site on the running node: live and previous release, last deploy, health.
    #[command(
        after_help = "Examples:\n  toppcloud node status --dev\n  toppcloud node status --json --config /etc/toppcloud/node.toml"
    )]
    Status {
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// A site's kept releases on the running node, marked live, prev or kept.
    #[command(after_help = "Example:\n  toppcloud node releases blog --json --dev")]
    Releases {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// A site's error log (or --access log) on the running node.
    #[command(
        after_help = "Examples:\n  toppcloud node logs blog -f\n  toppcloud node logs blog --access -n 20 --dev"
    )]
    Logs {
        #[command(flatten)]
        logs: LogsArgs,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// What Apache's access log pipes into: splits lines per site.
    #[command(hide = true)]
    LogPipe {
        /// The node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Daemons per cell of the pool.
        #[arg(long)]
        cell_size: usize,
    },
    /// A site's names on the running node, or one added or removed.
    #[command(
        after_help = "Examples:\n  toppcloud node domains blog --dev\n  toppcloud node domains blog.example.com add www.blog.example.com --config /etc/toppcloud/node.toml"
    )]
    Domains {
        /// The site: a host name, or a bare name that gets the node's domain.
        site: String,
        /// Nothing (list), `add NAME` or `remove NAME`.
        #[arg(num_args = 0..=2)]
        change: Vec<String>,
        #[command(flatten)]
        flags: NodeFlags,
    },
    /// Manage the SSH keys that may push to this node (no restart needed).
    #[command(subcommand)]
    Keys(KeysCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // What Apache pipes its access lines into lives as long as Apache:
    // one thread, no runtime.
    if let Command::Node(NodeCommand::LogPipe {
        data_dir,
        cell_size,
    }) = &cli.command
    {
        let layout = Layout::new(data_dir.clone());
        return match toppcloud::engine::logs::run_pipe(&layout, *cell_size, std::io::stdin().lock())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("toppcloud log-pipe: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOPPCLOUD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("toppcloud: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ExitWith>() {
            Some(ExitWith(code)) => ExitCode::from(u8::try_from(*code).unwrap_or(1)),
            None => {
                eprintln!("toppcloud: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Ends the process with another's exit code (the node's, through ssh),
/// which has said why already.
#[derive(Debug)]
struct ExitWith(i32);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

/// `toppcloud disable|enable|destroy` through the node's SSH door.
/// The node a laptop command talks to: `--node`, else the default one.
fn laptop_node(name: Option<&str>) -> Result<client::Node> {
    client::ClientConfig::load(&client::config_path()?)?.node(name)
}

/// A remote command's exit code, passed on.
fn exit_with(code: i32) -> Result<()> {
    match code {
        0 => Ok(()),
        code => Err(ExitWith(code).into()),
    }
}

/// One request to the running node over its control socket; its answer.
async fn ask_node(flags: &NodeFlags, req: &control::Request) -> Result<String> {
    let socket = Layout::new(flags.resolve()?.data_dir).control_socket();
    control::request(&socket, req).await
}

/// `ask_node`, and the node's answer printed: what most node commands do.
async fn tell_node(flags: &NodeFlags, req: &control::Request) -> Result<()> {
    let done = ask_node(flags, req).await?;
    println!("{done}");
    Ok(())
}

fn lifecycle_remote(words: &[String], node: Option<&str>) -> Result<()> {
    remote::check_lifecycle(words)?;
    let node = laptop_node(node)?;
    exit_with(remote::lifecycle(words, &node)?)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node(NodeCommand::Run(flags)) => node::run(flags.resolve_for_run()?).await,
        Command::Node(NodeCommand::Deploy { site, dir, flags }) => {
            let dir = std::fs::canonicalize(&dir)
                .with_context(|| format!("cannot find the app directory {}", dir.display()))?;
            tell_node(&flags, &control::Request::Deploy { site, dir }).await
        }
        Command::Node(NodeCommand::Config {
            site,
            values,
            change,
            flags,
        }) => {
            let cfg = flags.resolve()?;
            let listing = values || change.is_empty();
            let words = if values {
                vec!["--values".into()]
            } else {
                change
            };
            let socket = Layout::new(cfg.data_dir.clone()).control_socket();
            let shown = toppcloud::names::SiteName::parse(&site, &cfg.domain)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| site.clone());
            let done = control::request(&socket, &control::Request::Config { site, words }).await?;
            if !listing {
                println!("{done}");
            } else if done.is_empty() {
                eprintln!("{shown} has no config vars");
            } else {
                print!("{done}");
            }
            Ok(())
        }
        Command::Node(NodeCommand::Rollback { site, flags }) => {
            tell_node(&flags, &control::Request::Rollback { site }).await
        }
        Command::Node(NodeCommand::Activate {
            site,
            release,
            flags,
        }) => {
            let req = control::Request::Activate { site, release };
            tell_node(&flags, &req).await
        }
        Command::Node(NodeCommand::Disable { site, flags }) => {
            tell_node(&flags, &control::Request::Disable { site }).await
        }
        Command::Node(NodeCommand::Enable { site, flags }) => {
            tell_node(&flags, &control::Request::Enable { site }).await
        }
        Command::Node(NodeCommand::Destroy {
            destroy: DestroyArgs { site, yes, data },
            flags,
        }) => {
            if !yes {
                anyhow::bail!(
                    "destroy removes {site}'s routes, releases and repository for good: add --yes to confirm"
                );
            }
            let req = control::Request::Destroy { site, yes, data };
            tell_node(&flags, &req).await
        }
        Command::Node(NodeCommand::Status { json, flags }) => {
            let done = ask_node(&flags, &control::Request::Status { json }).await?;
            print!("{done}");
            Ok(())
        }
        Command::Node(NodeCommand::Releases { site, json, flags }) => {
            let done = ask_node(&flags, &control::Request::Releases { site, json }).await?;
            print!("{done}");
            Ok(())
        }
        Command::Node(NodeCommand::Logs { logs, flags }) => {
            let req = control::Request::Logs {
                site: logs.site,
                lines: logs.lines,
                follow: logs.follow,
                access: logs.access,
            };
            ask_node(&flags, &req).await?;
            Ok(())
        }
        Command::Node(NodeCommand::LogPipe { .. }) => {
            anyhow::bail!("internal error: the log pipe runs before the runtime starts")
        }
        Command::Node(NodeCommand::Domains {
            site,
            change,
            flags,
        }) => {
            let req = control::Request::Domains {
                site,
                words: change,
            };
            let done = ask_node(&flags, &req).await?;
            println!("{}", done.trim_end());
            Ok(())
        }
        Command::Node(NodeCommand::Keys(cmd)) => keys(cmd),
        Command::Hook(HookCommand::PreReceive) => hook_pre_receive().await,
        Command::Update {
            dir,
            host,
            node,
            etc_hosts,
        } => {
            let node = laptop_node(node.as_deref())?;
            update::run(&dir, host.as_deref(), &node, etc_hosts)
        }
        Command::Config {
            site,
            values,
            change,
            node,
        } => {
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::config(&site, values, &change, &node)?)
        }
        Command::Rollback { site, node } => {
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::make_live(&site, None, &node)?)
        }
        Command::Status { json, node } => {
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::status(json, &node)?)
        }
        Command::Activate {
            site,
            release,
            node,
        } => {
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::make_live(&site, Some(&release), &node)?)
        }
        Command::Disable { site, node } => {
            let words = vec!["disable".to_string(), site];
            lifecycle_remote(&words, node.as_deref())
        }
        Command::Enable { site, node } => {
            let words = vec!["enable".to_string(), site];
            lifecycle_remote(&words, node.as_deref())
        }
        Command::Destroy {
            destroy: DestroyArgs { site, yes, data },
            node,
        } => lifecycle_remote(&remote::destroy_words(&site, yes, data), node.as_deref()),
        Command::Domains { site, change, node } => {
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::domains(&site, &change, &node)?)
        }
        Command::Releases { site, json, node } => {
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::releases(&site, json, &node)?)
        }
        Command::Logs { logs, node } => {
            let words = remote::logs_words(&logs.site, logs.follow, logs.lines, logs.access)?;
            let node = laptop_node(node.as_deref())?;
            exit_with(remote::run(&node, &words)?)
        }
        Command::DefaultNode { node, name } => {
            let chosen = client::set_default(&node, name.as_deref())?;
            println!("default node: {chosen}");
            Ok(())
        }
        Command::Remote { site, node } => {
            let node = laptop_node(node.as_deref())?;
            update::add_remote(site.as_deref(), &node)
        }
        Command::Init { dir, config, .. } => init::run(
            &dir,
            if config {
                init::Template::Config
            } else {
                init::Template::Main
            },
        ),
        Command::Serve { dir, port, host } => {
            serve::run(serve::ServeOptions { dir, host, port }).await
        }
    }
}

fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Add {
            name,
            keyfile,
            sites,
            flags,
        } => {
            let cfg = flags.resolve()?;
            let text = if keyfile.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read the key from stdin")?
            } else {
                std::fs::read_to_string(&keyfile)
                    .with_context(|| format!("cannot read {}", keyfile.display()))?
            };
            let sites = sites
                .map(|s| access::parse_patterns(&s, &cfg.domain))
                .transpose()?;
            let fp = access::add(&cfg.authorized_keys(), &name, &text, sites.as_deref())?;
            println!("added key {name} ({fp})");
            Ok(())
        }
        KeysCommand::List { flags } => {
            let cfg = flags.resolve()?;
            for (name, fp, sites) in access::list(&cfg.authorized_keys())? {
                println!("{name}\t{fp}\t{sites}");
            }
            Ok(())
        }
        KeysCommand::Remove { name, flags } => {
            let cfg = flags.resolve()?;
            access::remove(&cfg.authorized_keys(), &name)?;
            println!("removed key {name}");
            Ok(())
        }
    }
}

/// The pre-receive hook: git runs it (through hooks/pre-receive) inside the
/// receive-pack the node started, with the node's token in the environment.
async fn hook_pre_receive() -> Result<()> {
    let var = |name: &str| {
        std::env::var(name)
            .with_context(|| format!("{name} is not set: this hook runs inside a toppcloud push"))
    };
    let token = var("TOPPCLOUD_PUSH")?;
    let socket = PathBuf::from(var("TOPPCLOUD_CONTROL")?);
    let quarantine = std::env::var_os("GIT_QUARANTINE_PATH").map(PathBuf::from);
    let stdin = std::io::read_to_string(std::io::stdin()).context("cannot read the ref updates")?;
    let updates = stdin.lines().filter_map(push::RefUpdate::parse).collect();
    let message = control::request(
        &socket,
        &control::Request::PreReceive {
            token,
            updates,
            quarantine,
        },
    )
    .await?;
    if !message.is_empty() {
        println!("{message}");
    }
    Ok(())
}
