//! `examwatch-loadgen`: drives an examwatch (or peer) server with simulated
//! exams and reports latency, delivery, loss and duplicates. See the
//! library half of this crate (`examwatch_loadgen`) for how it measures.
//!
//! `--processes N` splits the exams over N child processes of this same
//! binary (each under its own 20,000 open-files limit and with its own
//! source addresses): they connect, report `ready`, start sending together
//! when the parent says `go`, and hand back reports whose histograms the
//! parent merges exactly.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    process::{Command, Stdio},
    time::Duration,
};

use clap::Parser;
use examwatch::{
    auth::Keys,
    config::{AuthSettings, Secret},
};
use examwatch_loadgen::{Framing, Plan, Report, connect};

#[derive(Parser, Clone)]
#[command(name = "examwatch-loadgen", about = "Open-loop load for examwatch")]
struct Args {
    /// Server addresses students connect to, host:port, comma-separated:
    /// round-robin per student; a client whose server goes away (1012)
    /// moves to the next. Exams are opened on the first.
    #[arg(long, default_value = "127.0.0.1:8080", value_delimiter = ',')]
    server: Vec<std::net::SocketAddr>,
    /// Teachers connect to these instead, round-robin per exam (e.g. a
    /// second instance behind Redis).
    #[arg(long, value_delimiter = ',')]
    teacher_server: Vec<std::net::SocketAddr>,
    /// Students ask for an ack of every event and re-send the ones not
    /// acknowledged after moving to another server.
    #[arg(long)]
    acked: bool,
    /// Wire framing of the server under test.
    #[arg(long, value_enum, default_value = "examwatch")]
    framing: Framing,
    /// The server's HS256 secret (to mint tokens).
    #[arg(long, env = "EXAMWATCH__AUTH__JWT_SECRET")]
    secret: String,
    #[arg(long, default_value_t = 10)]
    exams: usize,
    /// Number of the first exam (set for child processes).
    #[arg(long, default_value_t = 0)]
    first_exam: usize,
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
    /// Extra teachers in the first exam that never read (on small TCP
    /// buffers, so the server's queue fills, not the kernel's).
    #[arg(long, default_value_t = 0)]
    slow_teachers: usize,
    /// Every client drops and reconnects this long after sending starts.
    #[arg(long, value_parser = humantime::parse_duration)]
    storm_after: Option<Duration>,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// Split the exams over this many processes.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Internal: run as a child of `--processes`.
    #[arg(long, hide = true)]
    child: bool,
    /// Write the JSON report here (default: stdout only).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut report = if args.processes > 1 && !args.child {
        tokio::task::spawn_blocking({
            let args = args.clone();
            move || parent(&args)
        })
        .await??
    } else {
        single(&args).await?
    };
    if args.child {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    report.histogram.clear();
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json)?;
    }
    for line in report.summary().lines() {
        eprintln!("loadgen: {line}");
    }
    println!("{json}");
    Ok(())
}

/// One process: connect, (as a child: say ready and wait for go), send.
async fn single(args: &Args) -> anyhow::Result<Report> {
    let keys = Keys::from_settings(
        &AuthSettings {
            jwt_secret: Some(Secret::new(args.secret.clone())),
            ..AuthSettings::default()
        },
        std::path::Path::new("."),
    )?;
    let plan = Plan {
        servers: args.server.clone(),
        teacher_servers: args.teacher_server.clone(),
        framing: args.framing,
        exams: args.exams,
        first_exam: args.first_exam,
        students: args.students,
        teachers: args.teachers,
        rate: args.rate,
        duration: args.duration,
        sources: args.sources.clone(),
        prefix: args.prefix.clone(),
        slow_teachers: args.slow_teachers,
        storm_after: args.storm_after,
        connect_concurrency: args.connect_concurrency,
        acked: args.acked,
    };
    let tag = if args.child {
        format!("loadgen[{}]", args.first_exam)
    } else {
        "loadgen".to_owned()
    };
    let connected = connect(&plan, &keys).await?;
    if args.child {
        println!("ready {}", connected.connections());
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await??;
    }
    let mut report = connected.send(|line| eprintln!("{tag}: {line}")).await?;
    if !args.child {
        report.histogram.clear();
    }
    Ok(report)
}

/// Several processes: split exams (and sources), start them together, merge.
fn parent(args: &Args) -> anyhow::Result<Report> {
    let exe = std::env::current_exe()?;
    let p = args.processes.min(args.exams.max(1));
    let mut children = Vec::new();
    let mut first = 0;
    for i in 0..p {
        let exams = args.exams / p + usize::from(i < args.exams % p);
        let sources: Vec<String> = args
            .sources
            .iter()
            .enumerate()
            .filter(|(j, _)| args.sources.len() < p || j % p == i)
            .map(|(_, s)| s.to_string())
            .collect();
        let mut cmd = Command::new(&exe);
        cmd.args(["--child", "--processes", "1"])
            .args(["--server", &join(&args.server)])
            .args(["--framing", framing_name(args.framing)])
            .args(["--secret", &args.secret])
            .args(["--exams", &exams.to_string()])
            .args(["--first-exam", &(args.first_exam + first).to_string()])
            .args(["--students", &args.students.to_string()])
            .args(["--teachers", &args.teachers.to_string()])
            .args([
                "--rate",
                &(args.rate * exams as f64 / args.exams as f64).to_string(),
            ])
            .args([
                "--duration",
                &humantime::format_duration(args.duration).to_string(),
            ])
            .args(["--sources", &sources.join(",")])
            .args(["--prefix", &args.prefix])
            .args([
                "--connect-concurrency",
                &args.connect_concurrency.to_string(),
            ])
            .args([
                "--slow-teachers",
                &if i == 0 { args.slow_teachers } else { 0 }.to_string(),
            ]);
        if !args.teacher_server.is_empty() {
            cmd.args(["--teacher-server", &join(&args.teacher_server)]);
        }
        if args.acked {
            cmd.arg("--acked");
        }
        if let Some(s) = args.storm_after {
            cmd.args(["--storm-after", &humantime::format_duration(s).to_string()]);
        }
        first += exams;
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        );
        children.push((child, stdout));
    }
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        anyhow::ensure!(
            line.starts_with("ready"),
            "a child failed to connect: {line:?}"
        );
    }
    eprintln!("loadgen: {p} processes connected; go");
    for (child, _) in &mut children {
        if let Some(stdin) = child.stdin.as_mut() {
            stdin.write_all(b"go\n")?;
        }
    }
    let mut parts = Vec::new();
    for (mut child, mut out) in children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        parts.push(serde_json::from_str(&line)?);
        child.wait()?;
    }
    Report::merge(parts)
}

/// Addresses as the comma-separated list the options take.
fn join(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Examwatch => "examwatch",
        Framing::Socketio => "socketio",
    }
}
