//! The end-to-end tests: the real `hasses` binary, started on free loopback ports, driven over
//! its SSE and control ports as clients, publishers and the programs beside it in a deployment
//! do. One test crate, so the helpers compile once and every helper is used somewhere.
//!
//! # Layout
//! - `common`: starting the server (its ports come from its readiness notification), the SSE
//!   client that checks every byte, the control port.
//! - `programs`: running nginx, Apache, Chromium, systemd's tools and logrotate next to it.
//! - the other modules, one per area: run one with `cargo test --test e2e AREA::`.

mod common;
mod programs;

mod acks;
mod apache;
mod api;
mod auth;
mod auth_hook;
mod bench_tool;
mod browser;
mod burst;
mod cli;
mod cluster;
mod commands;
mod connections;
mod deploy;
mod drain;
mod dropin;
mod durable;
mod events;
mod examples;
mod h2c;
mod handshake;
mod hardening;
mod hardening_control;
mod http2;
mod layers;
mod nginx;
mod operations;
mod presence;
mod publish;
mod publishers;
mod readme;
mod resume;
mod systemd;
mod tls;
mod upgrade;
