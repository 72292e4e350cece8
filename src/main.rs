//! The `examwatch` command: parses the CLI, loads settings, starts logging,
//! and hands over to the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use examwatch::{
    App, Settings,
    auth::{Keys, Role},
    demo::DemoOptions,
    telemetry,
};

#[derive(Parser)]
#[command(
    name = "examwatch",
    version,
    about = "Live exam monitoring over WebSockets"
)]
struct Cli {
    /// Settings file (default: config/default.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply the database migrations and exit (the server also applies
    /// them at start-up).
    Migrate,
    /// Print a token signed with the configured key, to try the server.
    Token {
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// An exam the token grants; repeat for several.
        #[arg(long = "exam")]
        exams: Vec<String>,
        /// Lifetime, e.g. `2h`, `30m`.
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The server's data folder, where it keeps its generated secret
        /// (default: `server.data_dir` of the settings, `data`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run the server with one demo exam and simulated students, and print
    /// the dashboard URL with a ready teacher token.
    Demo {
        /// Simulated students.
        #[arg(long, default_value_t = 30)]
        students: usize,
        /// Mean time between two actions of one student, e.g. `2s`.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        pace: Duration,
        /// The demo exam's id.
        #[arg(long, default_value = "demo")]
        exam: String,
        /// The waiting room before the exam opens by itself, e.g. `15s`
        /// (`0s`: open at once).
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        waiting: Duration,
        /// How long the exam runs before it ends by itself, e.g. `10m`.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        length: Duration,
        /// Mean time between two raised hands of one simulated student,
        /// e.g. `5m` (`0s`: none).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        hands: Duration,
        /// Seed the simulated students' random choices (the same run of
        /// actions every time); default: a random seed.
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Student,
    Proctor,
    Teacher,
    Admin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo's links are what its user reads: its log stays at `warn`
    // unless a level was asked for (RUST_LOG, EXAMWATCH__LOG__LEVEL, or a
    // settings file with another level), so info lines do not scroll the
    // links away.
    if matches!(cli.command, Some(Command::Demo { .. }))
        && std::env::var_os("RUST_LOG").is_none()
        && std::env::var_os("EXAMWATCH__LOG__LEVEL").is_none()
        && settings.log.level == examwatch::config::LogSettings::default().level
    {
        settings.log.level = "warn".into();
    }
    if let Err(e) = telemetry::init(&settings.log) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Migrate => migrate(settings),
        Command::Token {
            sub,
            name,
            role,
            exams,
            ttl,
            data_dir,
        } => {
            let mut settings = settings;
            if let Some(dir) = data_dir {
                settings.server.data_dir = dir;
            }
            token(&settings, &sub, &name, role, exams, ttl)
        }
        Command::Demo {
            students,
            pace,
            exam,
            waiting,
            length,
            hands,
            seed,
        } => demo(
            settings,
            DemoOptions {
                students,
                pace,
                exam,
                waiting,
                length,
                hands,
                seed,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A setting found unusable only at start-up (a TLS certificate
        // that does not load) exits like one refused while loading.
        Err(e) if e.chain().any(|c| c.is::<examwatch::config::ConfigError>()) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let app = App::build(settings).await?;
        app.run(shutdown).await
    })
}

fn demo(settings: Settings, opts: DemoOptions) -> anyhow::Result<()> {
    if !examwatch::auth::valid_exam_id(&opts.exam) {
        anyhow::bail!("--exam must be 1-64 characters of letters, digits, '-', '_' and '.'");
    }
    // Zero would make every simulated student a busy loop, and a huge pace
    // overflows the timer arithmetic.
    let pace_range = Duration::from_millis(100)..=Duration::from_secs(60);
    if !pace_range.contains(&opts.pace) {
        anyhow::bail!(
            "--pace must be between 100ms and 60s, got {}",
            humantime::format_duration(opts.pace)
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        examwatch::demo::run(settings, opts, shutdown).await
    })
}

fn migrate(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        examwatch::store::Store::open(&settings.database).await?;
        println!(
            "migrations applied to {}",
            settings
                .database
                .url
                .split('@')
                .next_back()
                .unwrap_or_default()
        );
        Ok(())
    })
}

fn token(
    settings: &Settings,
    sub: &str,
    name: &str,
    role: RoleArg,
    exams: Vec<String>,
    ttl: Duration,
) -> anyhow::Result<()> {
    // Never generate a secret here: a token signed with a secret the
    // server does not use is refused by it, with nothing to say why.
    let secret_file = examwatch::auth::secret_file(&settings.server.data_dir);
    if settings.auth.algorithm == examwatch::config::JwtAlgorithm::HS256
        && settings.auth.jwt_secret.is_none()
        && !secret_file.exists()
    {
        anyhow::bail!(
            "no JWT secret to sign with: auth.jwt_secret is not set and {} does not exist \
             (the server writes it at its first start, in server.data_dir). Start the server \
             first and run this from the same folder, or point at the server's secret with \
             --data-dir <its data folder>, --config <its settings file> or \
             EXAMWATCH__AUTH__JWT_SECRET",
            secret_file.display()
        );
    }
    let keys = Keys::from_settings(&settings.auth, &settings.server.data_dir)?;
    let role = match role {
        RoleArg::Student => Role::Student,
        RoleArg::Proctor => Role::Proctor,
        RoleArg::Teacher => Role::Teacher,
        RoleArg::Admin => Role::Admin,
    };
    let name = if name.is_empty() { sub } else { name };
    println!("{}", keys.mint(sub, name, role, exams, ttl)?);
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM. The handlers are installed before this
/// returns, so a signal sent right after the "listening" log line is caught.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("ctrl-c received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
