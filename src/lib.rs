//! toppcloud: `git push` a Python WSGI app to a node that serves it with
//! Apache + mod_wsgi. The binary (`src/main.rs`) is a thin CLI over these
//! modules; they are a library so that fuzz targets and benchmarks can reach
//! the parsers the node trusts at its edges.

pub mod access;
pub mod apache;
pub mod app_ini;
pub mod atomic;
pub mod build;
pub mod client;
pub mod config;
pub mod control;
pub mod deploys;
pub mod engine;
pub mod exec;
pub mod git;
pub mod http;
pub mod init;
pub mod layout;
pub mod listen;
pub mod names;
pub mod node;
pub mod process;
pub mod progress;
pub mod push;
pub mod release;
pub mod serve;
pub mod site_state;
pub mod ssh;
pub mod tree;
pub mod update;
pub mod upload;
pub mod upstream;
pub mod users;
pub mod webhook;
