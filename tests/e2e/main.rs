//! End-to-end tests: the real `toppcloud` binary runs a node with a real
//! private Apache + mod_wsgi on loopback; deploys go through the real
//! `toppcloud node deploy`, and every answer is checked with the real curl,
//! the way a user would look at their site.

mod support;

mod attacks;
mod client;
mod crash;
mod deploy;
mod failures;
mod limits;
mod node;
mod push;
mod records;
mod runners;
mod system;
mod update;
mod webhook;
