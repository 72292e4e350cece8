//! `examwatch-loadgen`: drives an examwatch (or peer) server with simulated
//! exams and reports latency, delivery, loss and duplicates. See
//! `examwatch::loadgen` for how it measures.

use std::{net::IpAddr, time::Duration};

use clap::Parser;
use examwatch::{
    auth::Keys,
    config::{AuthSettings, Secret},
    loadgen::{Plan, run},
};

#[derive(Parser)]
#[command(name = "examwatch-loadgen", about = "Open-loop load for examwatch")]
struct Args {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: std::net::SocketAddr,
    /// The server's HS256 secret (to mint tokens).
    #[arg(long, env = "EXAMWATCH__AUTH__JWT_SECRET")]
    secret: String,
    #[arg(long, default_value_t = 10)]
    exams: usize,
    #[arg(long, default_value_t = 30)]
    students: usize,
    #[arg(long, default_value_t = 1)]
    teachers: usize,
    /// Student events per second, in total.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Local source addresses, comma-separated (spreads ephemeral ports).
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',')]
    sources: Vec<IpAddr>,
    /// Exam id prefix.
    #[arg(long, default_value = "load-")]
    prefix: String,
    /// Write the JSON report here (default: stdout only).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = Keys::from_settings(
        &AuthSettings {
            jwt_secret: Some(Secret::new(args.secret.clone())),
            ..AuthSettings::default()
        },
        std::path::Path::new("."),
    )?;
    let plan = Plan {
        server: args.server,
        exams: args.exams,
        students: args.students,
        teachers: args.teachers,
        rate: args.rate,
        duration: args.duration,
        sources: args.sources,
        prefix: args.prefix,
    };
    let report = run(&plan, &keys, |line| eprintln!("loadgen: {line}")).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json)?;
    }
    let l = &report.latency_us;
    eprintln!(
        "loadgen: {} connections | sent {} at {:.0}/s | delivered {}/{} | lost {} | duplicated {}\n\
         loadgen: latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
        report.connections,
        report.sent,
        report.achieved_rate,
        report.delivered,
        report.expected,
        report.lost,
        report.duplicated,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    );
    println!("{json}");
    Ok(())
}
