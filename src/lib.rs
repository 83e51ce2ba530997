//! toppcloud: `git push` a Python WSGI app to a node that serves it with
//! Apache + mod_wsgi. The binary (`src/main.rs`) is a thin CLI over these
//! modules; they are a library so that fuzz targets and benchmarks can reach
//! the parsers the node trusts at its edges.

// The ground floor: what every part stands on.
pub mod accounts;
pub mod app_ini;
pub mod atomic;
pub mod config;
pub mod database;
pub mod dirs;
pub mod domains;
pub mod layout;
pub mod names;
pub mod process;
pub mod progress;

// Apache + mod_wsgi as the engine drives it.
pub mod apache;
// The deploy pipeline and what it drives.
pub mod engine;
// The laptop side: init, serve, update, its config.
pub mod laptop;
// The daemon and its doors.
pub mod node;
