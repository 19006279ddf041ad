//! The `herald` command: `serve` (the default), `tail`, `rules check`,
//! `rules test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{Config, LogConfig, LogFormat};
use herald::event::{Event, Meta, SourceKind};
use herald::rules::Rules;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Message-queue → WebSocket notification bridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (the default). Without --config it serves on the
    /// built-in defaults: 127.0.0.1:8080, HTTP ingest, memory store.
    Serve {
        /// TOML configuration file; HERALD_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the notifications a herald pushes, one JSON frame per line
    /// (reconnecting with the last id when the connection drops).
    Tail {
        /// The WebSocket endpoint.
        #[arg(long, default_value = "ws://127.0.0.1:8080/notifications")]
        url: String,
        /// Channel to subscribe to (repeatable; default: the server's defaults).
        #[arg(long = "channel", short)]
        channels: Vec<String>,
        /// Resume the first channel after this notification id.
        #[arg(long)]
        last_id: Option<String>,
        /// Exit after this many notifications (0: run until interrupted).
        #[arg(long, short = 'n', default_value_t = 0)]
        count: usize,
    },
    /// Validate or try out a rules file.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Exit 0 when FILE is valid; else print each problem (rule, field, line) and exit 1.
    Check { file: PathBuf },
    /// Print, one JSON object per line, the notifications an event would produce.
    Test {
        file: PathBuf,
        /// The event payload (a JSON file).
        #[arg(long)]
        event: PathBuf,
        /// The source the event comes from.
        #[arg(long, default_value = "http")]
        source: SourceKind,
        /// The topic (HTTP path topic, Kafka topic, AMQP routing key).
        #[arg(long, default_value = "test")]
        topic: String,
    },
}

/// mimalloc rather than glibc's malloc: herald allocates on the runtime's
/// threads and frees on others (the disk store's writer), which glibc's
/// arenas handle at a high CPU cost. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Tail {
            url,
            channels,
            last_id,
            count,
        } => tail(herald::tail::Tail {
            url,
            channels,
            last_id,
            count,
        }),
        Command::Rules {
            command: RulesCommand::Check { file },
        } => rules_check(&file),
        Command::Rules {
            command:
                RulesCommand::Test {
                    file,
                    event,
                    source,
                    topic,
                },
        } => rules_test(&file, &event, source, &topic),
    }
}

fn serve(config_path: Option<&Path>) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        warn_if_open(&config);
        // Listen before serving: a SIGTERM that arrives as soon as the port
        // is open (a slow disk store start, an eager supervisor) still
        // shuts down cleanly instead of killing the process.
        let signal = shutdown_signal();
        let running = match herald::app::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "herald could not start");
                eprintln!("herald: {e}");
                return ExitCode::from(e.exit_code() as u8);
            }
        };
        let stopper = running.stopper();
        tokio::spawn(async move {
            signal.await;
            stopper.cancel();
        });
        running.wait().await;
        ExitCode::SUCCESS
    })
}

fn tail(tail: herald::tail::Tail) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herald::tail::run(tail)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald tail: {e}");
            ExitCode::FAILURE
        }
    }
}

fn warn_if_open(config: &Config) {
    tracing::warn!(
        listen = %config.server.listen,
        "authentication is OFF: any client can connect, subscribe to any channel and post events; \
         keep herald on a private address"
    );
}

/// SIGTERM or SIGINT. The handlers are registered when this is called, not
/// when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // lapin logs every broker error it returns at ERROR level, the expected
    // 404 of a passive declare included; the AMQP source logs each failure
    // once with its context, so lapin stays silent unless the filter names it.
    let filter = match "lapin=off".parse() {
        Ok(off) if !filter.to_string().contains("lapin") => filter.add_directive(off),
        _ => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn rules_check(file: &Path) -> ExitCode {
    match Rules::load(file) {
        Ok(rules) => {
            println!("{}: ok, {} rules", file.display(), rules.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn rules_test(file: &Path, event_file: &Path, source: SourceKind, topic: &str) -> ExitCode {
    let rules = match Rules::load(file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let payload = match std::fs::read(event_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: not a JSON event: {e}", event_file.display());
            return ExitCode::from(2);
        }
    };
    let event = Event {
        payload,
        meta: Meta::new(source, topic, format!("test:{topic}:0")),
    };
    let evaluation = rules.evaluate(&event);
    for n in &evaluation.notifications {
        match serde_json::to_string(n) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("cannot print a notification: {e}"),
        }
    }
    for f in &evaluation.failures {
        let item = f.index.map(|i| format!(" (item {i})")).unwrap_or_default();
        eprintln!(
            "rule `{}`: field `{}`{item}: {}",
            f.rule, f.field, f.message
        );
    }
    if evaluation.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
