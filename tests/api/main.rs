//! examwatch's integration tests: one binary, modules per feature, every test
//! against a real server on 127.0.0.1:0 with real WebSocket clients.

mod actions;
mod api_doc;
mod auth;
mod bad_input;
mod browser;
mod cli;
mod cluster;
mod cluster_liveness;
mod connections;
mod coverage_handshake;
mod coverage_messages;
mod coverage_rooms;
mod crash;
mod dashboard;
mod fanout_metrics;
mod faults;
mod handshake_limits;
mod helpers;
mod limits;
mod loadgen;
mod log_hygiene;
mod ops;
mod outage;
mod persistence;
mod readme;
mod rest;
mod resume;
mod roles;
mod rollout;
mod rooms;
mod sessions;
mod snapshots;
mod sse;
mod status;
mod tickets;
