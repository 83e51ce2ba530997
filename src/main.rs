//! toppcloud: `git push` a Python WSGI app to your own server. This binary is
//! both the node (`toppcloud node run`) and the commands that talk to it.

mod apache;
mod app_ini;
mod build;
mod config;
mod control;
mod engine;
mod http;
mod layout;
mod names;
mod node;
mod process;
mod progress;
mod release;
mod site_state;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::NodeConfig;
use crate::layout::Layout;

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
    /// Run or talk to a node (the server side).
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Args, Clone)]
struct NodeFlags {
    /// The node's config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Built-in defaults for a node on loopback: data in the user's data
    /// directory, sites at http://SITE.localhost:8080/.
    #[arg(long)]
    dev: bool,
    /// Where the node keeps its state (overrides the config's data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl NodeFlags {
    fn resolve(&self) -> Result<NodeConfig> {
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
        Err(e) => {
            eprintln!("toppcloud: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node(NodeCommand::Run(flags)) => node::run(flags.resolve()?).await,
        Command::Node(NodeCommand::Deploy { site, dir, flags }) => {
            let cfg = flags.resolve()?;
            let dir = std::fs::canonicalize(&dir)
                .with_context(|| format!("cannot find the app directory {}", dir.display()))?;
            let socket = Layout::new(cfg.data_dir).control_socket();
            let done = control::request(&socket, &control::Request::Deploy { site, dir }).await?;
            println!("{done}");
            Ok(())
        }
    }
}
