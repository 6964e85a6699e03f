//! The edge of the program: parse the command line, set up logging and the runtime, run the
//! subcommand, and turn the outcome into an exit code and a message on stderr.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use serde_json::Map;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, Global, StartArgs};
use crate::client::{self, ClientError, Settings};
use crate::config::{ConfigError, Env, LogFormat, NodeConfig, StartFlags};
use crate::node::{self, NodeError};
use crate::output::Output;
use crate::secret::SecretSource;

/// Exit code for bad usage or invalid input (SPEC §1).
const EXIT_USAGE: u8 = 2;

/// Runs `kvnode` with these arguments and returns its exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    let json = args.iter().any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if help || !json {
                // Help on a closed stdout, or an error on a closed stderr: nothing more to do.
                let _ = e.print();
                return ExitCode::from(if help { 0 } else { EXIT_USAGE });
            }
            // With --json the error is said once, as JSON on stdout; clap's text would say it
            // again. Its own first line names the argument and the value ("invalid value 'x'
            // for '--timeout <DURATION>': ..."); its kind alone does not.
            let message = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                "a subcommand is missing; see `kvnode --help`".to_string()
            } else {
                let rendered = e.render().to_string();
                let said: Vec<&str> = rendered
                    .lines()
                    .map(str::trim)
                    .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                    .collect();
                let said = said.join(" ");
                said.strip_prefix("error: ").unwrap_or(&said).to_string()
            };
            Output::new(json).error(&message, EXIT_USAGE, Map::new());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => return fail(&e.to_string(), EXIT_USAGE, &mut Output::new(cli.global.json)),
    };
    match cli.command {
        Command::Start(args) => start(args, cli.global, env),
        command => client_command(command, cli.global, env),
    }
}

/// Says `error: ...` on stderr, or with `--json` prints the JSON error object on stdout
/// instead (SPEC §1 as amended by issue 22: a failure is said once, on one stream).
fn fail(message: &str, code: u8, out: &mut Output) -> ExitCode {
    out.error(message, code, Map::new());
    ExitCode::from(code)
}

fn init_logging(global: &Global, default: &str, format: LogFormat) {
    let level = match (global.verbose, global.quiet) {
        (0, 0) => None,
        (1, _) => Some("kvnode=debug,info"),
        (v, _) if v >= 2 => Some("trace"),
        (_, 1) => Some("error"),
        _ => Some("off"),
    };
    // A RUST_LOG that does not parse is not taken in part: what remained of it could be
    // errors only, hiding the warnings a node must give (tracing's own lenient parse).
    let mut bad_env = None;
    let filter = match (level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::new(level),
        (None, Ok(env)) if !env.is_empty() => EnvFilter::try_new(&env).unwrap_or_else(|e| {
            bad_env = Some((env, e));
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some((env, e)) = bad_env {
        tracing::warn!(
            "RUST_LOG={env:?} is not a filter kvnode can use ({e}); logging at the default level instead (e.g. RUST_LOG=debug or RUST_LOG=kvnode=trace)"
        );
    }
}

/// The runtime a node runs on: one worker thread per core by default; with one thread, a
/// current-thread runtime, whose tasks wake each other without waking another thread (see
/// BENCHMARKS.md, "One thread or one per core").
fn node_runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => multi_thread(n),
    }
}

/// A runtime of `workers` threads, else one per core. Always given its size, so that tokio
/// never reads `TOKIO_WORKER_THREADS` itself (it panics on a bad value; [`Env::threads`]
/// checks it and names it).
fn multi_thread(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        usize::from,
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

fn start(args: StartArgs, global: Global, env: Env) -> ExitCode {
    let flags = StartFlags {
        name: args.name,
        listen: args.listen,
        advertise: args.advertise,
        text_listen: args.text_listen,
        metrics_listen: args.metrics_listen,
        metrics_allow_remote: args.metrics_allow_remote,
        join: args.join,
        config: args.config,
        table: args.table,
        data_dir: args.data_dir,
        in_memory: args.in_memory,
        auto_reply: args.auto_reply,
        threads: args.threads,
        resp_listen: args.resp_listen,
        resp_bucket: args.resp_bucket,
        resp_tls: args.resp_tls,
        secret_file: global.secret_file.clone(),
        timeout: global.timeout,
        log_format: global.log_format,
    };
    let mut out = Output::new(global.json);
    let config = match NodeConfig::resolve(flags, &env) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string(), config_exit_code(&e), &mut out),
    };
    init_logging(&global, "kvnode=info,warn", config.log_format);
    let runtime = match node_runtime(config.threads) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 6, &mut out),
    };
    // The handlers are installed now, before the node registers in the directory: a SIGTERM
    // sent as soon as a client can find the node (`kvnode stop`) must stop it gracefully, not
    // by the signal's default action.
    let shutdown = {
        let _in_runtime = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(node::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = match &e {
                NodeError::Directory(_) | NodeError::Secret(_) | NodeError::Keyring(_) | NodeError::DataDir { .. } => {
                    EXIT_USAGE
                }
                NodeError::Transport(crate::transport::TransportError::Bind { .. }) => EXIT_USAGE,
                NodeError::TextListen { .. } => EXIT_USAGE,
                NodeError::GaveUp(_) => 6,
                NodeError::Fatal(_) => EXIT_USAGE,
                NodeError::Store(crate::store::StoreError::InUse { .. }) => EXIT_USAGE,
                _ => 6,
            };
            fail(&e.to_string(), code, &mut out)
        }
    }
}

fn config_exit_code(_: &ConfigError) -> u8 {
    EXIT_USAGE
}

/// Resolves on the first SIGINT or SIGTERM. A second one, while the node drains its
/// requests, stops it at once. (SIGHUP keeps its default: `nohup` must go on protecting a
/// node from a closing terminal, and handling it would override an inherited "ignore".)
///
/// The handlers are installed when this is called (inside the runtime), not when the future
/// is first polled.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(term), Ok(int)) = signals else {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stop the node with SIGKILL");
            return std::future::pending().await;
        };
        wait_for_signals(term, int).await;
    }
}

async fn wait_for_signals(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        let (again, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 143),
            _ = int.recv() => ("SIGINT", 130),
        };
        tracing::warn!("{again} received while stopping: stopping at once, without waiting for requests in flight");
        std::process::exit(code);
    });
}

fn client_command(command: Command, global: Global, env: Env) -> ExitCode {
    // With --json a client says everything on stdout, failures included, and nothing on
    // stderr (issue 22): no log lines unless asked for by -v or a RUST_LOG that parses.
    let default_level = if global.json { "off" } else { "warn" };
    init_logging(&global, default_level, global.log_format.unwrap_or_default());
    let mut out = Output::new(global.json);
    // One thread: a client does one thing at a time, and starts faster without a pool. The
    // bench drives many clients and gets a thread per core (or TOKIO_WORKER_THREADS).
    let runtime = match &command {
        Command::Bench(_) => match env.threads() {
            Ok(threads) => multi_thread(threads),
            Err(e) => return fail(&e.to_string(), EXIT_USAGE, &mut out),
        },
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 6, &mut out),
    };
    let name = match &command {
        Command::Chat(c) => c.as_name.clone(),
        _ => None,
    }
    .unwrap_or_else(client::default_client_name);
    let settings = Settings {
        secret: SecretSource::choose(global.secret_file.clone(), env.secret.clone(), None, &env.home),
        home: env.home,
        timeout: global.timeout.unwrap_or(std::time::Duration::from_secs(5)),
        via: None,
        // Read by kvnode, not clap: an empty KVNODE_VIA is unset (`KVNODE_VIA= kvnode ...`),
        // and a bad one is named as the variable, not as --via.
        via_env: env.via,
        name,
    };
    let result: Result<(), ClientError> = runtime.block_on(crate::commands::run(command, settings, &mut out));
    // Dropping the runtime would wait for nothing useful; leave without QUIC's draining period.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e.to_string(), e.exit_code(), e.json_fields());
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_thread_is_a_current_thread_runtime_and_more_are_workers() {
        let one = node_runtime(Some(1)).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let three = node_runtime(Some(3)).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
        let default = node_runtime(None).unwrap();
        assert_eq!(default.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
    }
}
