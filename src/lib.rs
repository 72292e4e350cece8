//! examwatch: live exam monitoring over WebSockets.
//!
//! Students' exam clients hold a WebSocket to `/v1/exams/{id}/ws` and report
//! progress, activity and focus; the exam's room (one actor task per exam,
//! [`room`]) turns that into numbered events and pushes them to every teacher
//! watching. The tour, in the order a request meets it:
//!
//! - [`config`]: typed settings from defaults, a TOML file and the environment;
//! - [`app`]: building the server and shutting it down gracefully;
//! - [`accept`], [`tls`]: the accept loop's limits, and HTTPS/wss in-process
//!   (rustls) with certificate reloads;
//! - [`shard`]: an exam's sockets and room on one thread (`server.shards`);
//! - [`drain`]: rolling restarts, sockets closed 1012 over `server.drain_window`;
//! - [`rebalance`]: an instance above the fleet's average sheds the excess
//!   (1012 "rebalance"), so a new instance gets its share of the clients;
//! - [`live`]: the one registry of open sockets and event streams, read by the
//!   drain, a rebalance and revocations;
//! - [`health`]: the readiness check that opens a WebSocket to ourselves;
//! - [`http`]: routes, the JSON error shape, health/readiness/metrics;
//! - [`auth`]: JWT verification and the handshake checks;
//! - [`client_ip`]: who the client is, behind `server.trusted_proxies`;
//! - [`ratelimit`]: handshake limits per subject and IP, connections per IP, the refusal log budget;
//! - [`tickets`]: short-lived, single-use connection tickets for browsers;
//! - [`revocations`]: tokens refused before their `exp`, and the live
//!   connections that close when one is revoked;
//! - [`ws`]: the per-connection task (read, write, ping, close codes);
//! - [`sse`]: the same events as a Server-Sent Events stream, for watchers;
//! - [`protocol`]: the wire contract (mirrored in docs/PROTOCOL.md);
//! - [`room`]: rooms, their registry, and how student state changes;
//! - [`metrics`], [`telemetry`]: what operators see;
//! - [`dashboard`]: the embedded teacher dashboard, client library and demo page;
//! - [`demo`]: `examwatch demo`, one exam with simulated students.

pub mod accept;
pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod client_ip;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod demo;
pub mod drain;
pub mod health;
pub mod http;
pub mod live;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod rebalance;
pub mod revocations;
pub mod room;
pub mod roster;
pub mod shard;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod tickets;
pub mod tls;
pub mod ws;

pub use app::App;
pub use config::Settings;
