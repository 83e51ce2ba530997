//! End-to-end tests: the real `toppcloud` binary runs a node with a real
//! private Apache + mod_wsgi on loopback; deploys go through the real
//! `toppcloud node deploy`, and every answer is checked with the real curl,
//! the way a user would look at their site.
//!
//! Every process the tests start (the node, the CLI, git, ssh, rsync, curl)
//! runs with a cleared environment and a HOME of the test's own; Python
//! packages come from the wheelhouse `provisioning/run-tests` builds (named
//! by `TOPPCLOUD_TEST_WHEELHOUSE`), and no test reaches a package index.
//! Tests wait on conditions (a gate file, a port, a status), never on a
//! fixed sleep.

#[macro_use]
mod support;

mod attacks;
mod client;
mod config;
mod crash;
mod deploy;
mod failures;
mod growth;
mod https;
mod lifecycle;
mod limits;
mod logs;
mod node;
mod push;
mod real_apps;
mod records;
mod rollback;
mod runners;
mod status;
mod system;
mod update;
mod versions;
mod webhook;
