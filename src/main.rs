//! The `herald` command: `serve` (the default), `tail`, `rules check`,
//! `rules test`, `rules record`, `rules diff`, `keys new`, `keys digest`, `token`.
//!
//! Exit statuses are the same for every command ([`EXIT_STATUSES`], also
//! in `--help` and the README): 1 when a check failed or the environment
//! refused (a port in use, a store held by another process), 2 when the
//! command line, the configuration or an input file is wrong.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{Config, LogConfig, LogFormat};
use herald::event::{Event, Meta, SourceKind};
use herald::rules::{Format, Rules};
use tracing_subscriber::EnvFilter;

/// A check failed, or the environment refused (see [`EXIT_STATUSES`]).
const FAILED: u8 = 1;
/// The command line, the configuration or an input file is wrong.
const USAGE: u8 = 2;

/// The exit statuses of every command, for `--help` (the README has the
/// same table).
const EXIT_STATUSES: &str = "\
Exit status:
  0  success (serve: stopped by SIGTERM or SIGINT, after a clean shutdown)
  1  a check failed, or the environment refused: `rules check` found
     problems, `rules test` saw a rule fail, `rules diff` saw the new
     rules fail where the old did not; `serve` could not listen (the
     address is in use) or open its store (a disk store another herald
     holds); `tail` could not connect, `rules record` could not read the
     admin API
  2  wrong usage or input: an unknown option or argument, an invalid
     configuration, a rules file that does not compile or cannot be read,
     a source or store setting its client rejects, an event file that is
     not one JSON object";

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Message-queue → WebSocket notification bridge",
    after_help = EXIT_STATUSES
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge (the default). Without --config it serves on the
    /// built-in defaults: 127.0.0.1:8080, HTTP ingest, memory store.
    #[command(after_help = EXIT_STATUSES)]
    Serve {
        /// TOML configuration file; HERALD_* variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the notifications a herald pushes, one JSON frame per line
    /// (reconnecting with the last id when the connection drops).
    Tail {
        /// The WebSocket endpoint: for a herald on another address,
        /// ws://HOST:PORT/notifications.
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
        /// A JWT for a server with authentication on (`herald token` mints
        /// one); sent as `Authorization: Bearer`.
        #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Validate or try out a rules file.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Make producer API keys (and admin tokens, HMAC secrets).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a test token for SUB, signed with the configured
    /// auth.hmac_secret (HS256 by default).
    Token {
        /// The configuration whose [auth] secret, issuer, audience and
        /// channels_claim the token uses.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The `sub` claim: the user (`user:{sub}` is its channel).
        #[arg(long)]
        sub: String,
        /// A channel pattern granted through auth.channels_claim (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// An extra claim, name=value; the value is JSON when it parses
        /// (`teams=[1,2]`), else a string (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// HS256, HS384 or HS512.
        #[arg(long, default_value = "HS256")]
        alg: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a fresh random key and its digest (the digest goes in
    /// sources.api_keys; the key goes to the producer).
    New,
    /// Print the digest of a key read from standard input.
    Digest,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Exit 0 when FILE is valid; else print each problem (rule, field, line) and exit 1.
    Check {
        /// The rules file (YAML, or TOML when it ends in .toml).
        file: PathBuf,
    },
    /// Print, one JSON object per line, the notifications an event would
    /// produce; exit 1 if a rule failed for it, 2 if FILE or the event
    /// cannot be used.
    Test {
        /// The rules file (YAML, or TOML when it ends in .toml).
        file: PathBuf,
        /// The event payload: a file holding one JSON object.
        #[arg(long)]
        event: PathBuf,
        /// The source the event comes from.
        #[arg(long, default_value = "http")]
        source: SourceKind,
        /// The topic (HTTP path topic, Kafka topic, AMQP routing key).
        #[arg(long, default_value = "test")]
        topic: String,
    },
    /// Compare two rules files on recorded events (`rules record`): the
    /// notifications added, removed and changed, the failures; exit 1 when
    /// NEW fails on an event OLD handled.
    Diff {
        /// The rules file now live (YAML, or TOML when it ends in .toml).
        old: PathBuf,
        /// The candidate rules file.
        new: PathBuf,
        /// Recorded events, one JSON object per line (`rules record`).
        #[arg(long)]
        events: PathBuf,
        /// Events with differences to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the whole comparison as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Save the events a running herald recorded (and what became of
    /// them), one JSON object per line, for `rules diff --events`.
    Record {
        /// The admin endpoint's base URL ([admin] listen, or the server's).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        admin: String,
        /// The file to write (`-`: standard output).
        #[arg(long, short)]
        out: PathBuf,
        /// The admin token, when [admin] token is set.
        #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Only events on this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only events that reached this channel.
        #[arg(long)]
        channel: Option<String>,
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
            token,
        } => tail(herald::tail::Tail {
            url,
            channels,
            last_id,
            count,
            token,
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
        Command::Rules {
            command:
                RulesCommand::Diff {
                    old,
                    new,
                    events,
                    limit,
                    json,
                },
        } => rules_diff(&old, &new, &events, limit, json),
        Command::Rules {
            command:
                RulesCommand::Record {
                    admin,
                    out,
                    token,
                    topic,
                    channel,
                },
        } => rules_record(
            herald::admin::client::RecordRequest {
                admin,
                token,
                topic,
                channel,
            },
            &out,
        ),
        Command::Keys {
            command: KeysCommand::New,
        } => keys_new(),
        Command::Keys {
            command: KeysCommand::Digest,
        } => keys_digest(),
        Command::Token {
            config,
            sub,
            channels,
            claims,
            ttl,
            alg,
        } => token(config.as_deref(), sub, channels, claims, ttl, &alg),
    }
}

fn keys_new() -> ExitCode {
    match herald::auth::api_keys::new_key() {
        Ok(key) => {
            println!("key:    {key}");
            println!("digest: {}", herald::auth::api_keys::digest(&key));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald keys new: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys_digest() -> ExitCode {
    let mut key = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut key) {
        eprintln!("herald keys digest: cannot read standard input: {e}");
        return ExitCode::FAILURE;
    }
    let key = key.trim();
    if key.is_empty() {
        eprintln!("herald keys digest: no key on standard input");
        return ExitCode::from(2);
    }
    println!("{}", herald::auth::api_keys::digest(key));
    ExitCode::SUCCESS
}

fn token(
    config_path: Option<&Path>,
    sub: String,
    channels: Vec<String>,
    claims: Vec<String>,
    ttl_secs: u64,
    alg: &str,
) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(alg) = alg.parse() else {
        eprintln!("herald token: --alg {alg}: HS256, HS384 or HS512");
        return ExitCode::from(2);
    };
    let request = herald::auth::mint::MintRequest {
        sub,
        channels,
        claims,
        ttl_secs,
        alg,
    };
    match herald::auth::mint::mint(&config.auth, &request) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald token: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(config_path: Option<&Path>) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            print_error("herald", &e);
            return ExitCode::from(USAGE);
        }
    };
    init_logging(&config.log);
    let format = config.log.format;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            start_failed(format, &format!("cannot start the runtime: {e}"));
            return ExitCode::from(FAILED);
        }
    };
    runtime.block_on(async move {
        // Listen before serving: a SIGTERM that arrives as soon as the port
        // is open (a slow disk store start, an eager supervisor) still
        // shuts down cleanly instead of killing the process.
        let signal = shutdown_signal();
        let running = match herald::app::start(config).await {
            Ok(r) => r,
            Err(e) => {
                start_failed(format, &e.to_string());
                return ExitCode::from(e.exit_code());
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

fn rules_record(request: herald::admin::client::RecordRequest, out: &Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald rules record: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let mut file: Box<dyn std::io::Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        match std::fs::File::create(out) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("herald rules record: {}: {e}", out.display());
                return ExitCode::from(USAGE);
            }
        }
    };
    let result = runtime.block_on(herald::admin::client::record(&request, &mut *file));
    match result.and_then(|n| file.flush().map(|()| n).map_err(|e| e.to_string())) {
        Ok(n) => {
            eprintln!(
                "herald rules record: {n} events written to {}",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald rules record: {e}");
            ExitCode::from(FAILED)
        }
    }
}

fn tail(tail: herald::tail::Tail) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald tail: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(herald::tail::run(tail)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald tail: {e}");
            ExitCode::from(FAILED)
        }
    }
}

/// `herald: ...`, one line per line of `error`.
fn print_error(prefix: &str, error: &dyn std::fmt::Display) {
    for line in error.to_string().lines() {
        eprintln!("{prefix}: {line}");
    }
}

/// Say once why `serve` could not start: plain lines for a person with
/// text logs, one log record with JSON logs (a collector reads those).
fn start_failed(format: LogFormat, error: &str) {
    match format {
        LogFormat::Text => print_error("herald", &error),
        LogFormat::Json => tracing::error!(error, "herald could not start"),
    }
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
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Colour in text logs only for a person at a terminal: never in a file or
/// a pipe, and never with `NO_COLOR` set (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn rules_check(file: &Path) -> ExitCode {
    let text = match Rules::read(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(USAGE);
        }
    };
    match Rules::parse(&text, Format::from_path(file), &file.display().to_string()) {
        Ok(rules) => {
            println!("{}: ok, {} rules", file.display(), rules.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(FAILED)
        }
    }
}

fn rules_diff(old: &Path, new: &Path, events: &Path, limit: usize, json: bool) -> ExitCode {
    let (old, new) = match (Rules::load(old), Rules::load(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                eprintln!("{e}");
            }
            return ExitCode::from(USAGE);
        }
    };
    let samples = match read_recorded(events) {
        Ok(s) => s,
        Err(problem) => {
            eprintln!("{}: {problem}", events.display());
            return ExitCode::from(USAGE);
        }
    };
    let result = herald::rules::preview::preview(&old, &new, &samples);
    if json {
        match serde_json::to_string_pretty(&result) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("herald rules diff: {e}");
                return ExitCode::from(FAILED);
            }
        }
    } else {
        print!("{}", result.to_text(limit));
    }
    if result.summary.regressions > 0 {
        eprintln!(
            "herald rules diff: the candidate fails on {} events the old version handled",
            result.summary.regressions
        );
        return ExitCode::from(FAILED);
    }
    ExitCode::SUCCESS
}

/// The events of a `rules record` file.
fn read_recorded(path: &Path) -> Result<Vec<herald::rules::preview::Sample>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let recorded: herald::recorder::RecordedEvent = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not a recorded event: {e}", i + 1))?;
        samples.push(herald::rules::preview::Sample {
            id: recorded.id,
            event: recorded.to_event(),
        });
    }
    Ok(samples)
}

fn rules_test(file: &Path, event_file: &Path, source: SourceKind, topic: &str) -> ExitCode {
    let rules = match Rules::load(file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(USAGE);
        }
    };
    let payload = match read_event(event_file) {
        Ok(p) => p,
        Err(problem) => {
            eprintln!("{}: {problem}", event_file.display());
            return ExitCode::from(USAGE);
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
    if evaluation.matched == 0 {
        eprintln!(
            "no rule matched (source={}, topic={topic})",
            source.as_str()
        );
    }
    if evaluation.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    }
}

/// The event in `path`: one JSON object, as HTTP ingest takes it.
fn read_event(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty: expected one JSON object".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object: an event is one object ({\"type\": ...})".into());
    }
    Ok(value)
}
