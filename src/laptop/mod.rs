//! The laptop side: `toppcloud init` writes a new app, `serve` runs it the
//! way a node would, `update` uploads it with rsync over ssh, `remote` runs
//! a command (`toppcloud config SITE ...`) through a node's SSH door, and
//! `config` is the laptop's list of nodes (`~/.config/toppcloud/config.toml`);
//! `services` is what serve gives an app for the services it asks for.

pub mod config;
pub mod init;
pub mod remote;
pub mod serve;
pub mod services;
pub mod update;
