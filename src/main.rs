//! The `user-api` binary: serve (default), migrate, token, seed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use user_api::auth::{self, Role};
use user_api::config::Config;
use user_api::domain::UserId;
use user_api::{App, Stopped, db, pool_options, seed, telemetry};

#[derive(Parser)]
#[command(
    name = "user-api",
    version,
    about = "User profiles with a Redis cache and rate limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a token signed with the dev-mode key (dev mode only).
    ///
    /// With `--sub`, prints the token alone (`TOKEN=$(user-api token --sub …)`). Without it,
    /// picks a new user id and prints `ID=<uuid>` and `TOKEN=<jwt>` lines, so that
    /// `eval "$(user-api token)"` sets both.
    Token {
        /// The user id the token is for; omit it for a new user (prints `ID=` and `TOKEN=`).
        #[arg(long)]
        sub: Option<String>,
        #[arg(long, value_enum, default_value_t = RoleArg::User)]
        role: RoleArg,
        /// Lifetime, e.g. `1h`, `15m`.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Insert N realistic fake profiles.
    Seed {
        #[arg(long)]
        count: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    User,
    Admin,
}

/// mimalloc: the hot path allocates a little per request across two worker threads, where
/// glibc malloc spent about a sixth of the CPU (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // reqwest and sqlx both use rustls; one provider must be chosen before any TLS.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("user-api: {e}");
            return ExitCode::from(2);
        }
    };
    let log_guard = telemetry::init_logging(
        &config.server.log_format,
        config.server.log_level.as_deref(),
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            drop(log_guard);
            eprintln!("user-api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config));
    // Tasks still running now (a request past every bound, a blocking call) are not waited
    // for: dropping the runtime would wait for blocking ones without any bound.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    // Flushes the log lines still buffered, before anything else reaches stderr.
    drop(log_guard);
    match result {
        Ok(Stopped::Clean) => ExitCode::SUCCESS,
        // What was left is in the log; a non-zero status says something was.
        Ok(Stopped::Forced) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("user-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Longest wait for the runtime's own tasks once `run` has returned.
const RUNTIME_GRACE: Duration = Duration::from_secs(1);

async fn run(command: Command, config: Config) -> anyhow::Result<Stopped> {
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let repo = db::connect(&config.database_url, &pool_options(&config)).await?;
            repo.migrate().await?;
            println!("migrations applied ({})", repo.backend());
            Ok(Stopped::Clean)
        }
        Command::Token { sub, role, ttl } => {
            if !config.jwt_dev_mode() {
                anyhow::bail!(
                    "`user-api token` signs with the dev-mode key only; a key source (JWT_PUBLIC_KEY_FILE or JWKS_URL) is configured, so tokens must come from the auth service"
                );
            }
            let (id, new_user) = match sub {
                Some(sub) => (
                    sub.parse::<UserId>()
                        .map_err(|_| anyhow::anyhow!("--sub must be a UUID"))?,
                    false,
                ),
                None => (UserId::random(), true),
            };
            let role = match role {
                RoleArg::User => Role::User,
                RoleArg::Admin => Role::Admin,
            };
            let token = auth::dev::sign_token_for(&config.jwt, id, role, Duration::from(ttl))?;
            if new_user {
                // Shell assignments (a UUID and a JWT need no quoting): `eval "$(user-api token)"`.
                println!("ID={id}\nTOKEN={token}");
            } else {
                println!("{token}");
            }
            Ok(Stopped::Clean)
        }
        Command::Seed { count } => {
            let repo = db::connect(&config.database_url, &pool_options(&config)).await?;
            repo.migrate().await?;
            let started = std::time::Instant::now();
            let n = seed::seed(repo.as_ref(), count).await?;
            println!("inserted {n} profiles in {:.1?}", started.elapsed());
            Ok(Stopped::Clean)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<Stopped> {
    let dev_mode = config.jwt_dev_mode();
    let keys_dir = config.jwt.dev_keys_dir.clone();
    let store = if config.uses_embedded_store() {
        Store::Embedded
    } else {
        Store::Redis
    };
    let app = App::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "user-api listening");
    if dev_mode {
        // After the WARN lines it refers to, which may still be queued.
        telemetry::eprint_in_order(&format!(
            "{}\n",
            dev_mode_hint(app.local_addr(), &keys_dir, store)
        ));
    }
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    shutdown_signal().await;
    tracing::info!(
        "shutting down: no new connections; finishing in-flight requests, then background work"
    );
    token.cancel();
    // Every step of the shutdown is bounded; a second signal ends it at once all the same.
    tokio::select! {
        stopped = server => Ok(stopped??),
        _ = shutdown_signal() => {
            tracing::warn!("second signal: exiting now, leaving the shutdown unfinished");
            Ok(Stopped::Forced)
        }
    }
}

/// Where the cache and the rate-limit counters live, for the dev-mode hint.
#[derive(Debug, Clone, Copy)]
enum Store {
    Redis,
    Embedded,
}

/// What to run next, printed at start in dev mode: the README's first steps, verbatim
/// apart from the address and the way this binary was started.
fn dev_mode_hint(addr: SocketAddr, keys_dir: &std::path::Path, store: Store) -> String {
    let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let token = token_command();
    let keys = keys_dir.display();
    let redis = match store {
        Store::Embedded => ", no Redis",
        Store::Redis => "",
    };
    format!(
        "
DEV MODE: tokens are signed with the local key pair in {keys}/.
The WARN lines above are expected in dev mode (no JWT key source{redis} configured).
Try it from another terminal, in this directory (the README walks through the rest):
  eval \"$({token})\"   # sets ID (a new user id) and TOKEN
  curl -X POST {host}/api/profiles -H \"Authorization: Bearer $TOKEN\" \\
       -H 'content-type: application/json' -d '{{\"name\": \"山田太郎\"}}' -w '\\n%{{http_code}}\\n'
  curl {host}/api/profiles/$ID -H \"Authorization: Bearer $TOKEN\" -w '\\n%{{http_code}}\\n'
"
    )
}

/// The command that runs this binary's `token` subcommand: through cargo when it was
/// built by cargo (same profile, so no second build), else the binary itself.
fn token_command() -> String {
    let exe = std::env::current_exe().ok();
    let profile_dir = exe
        .as_deref()
        .and_then(|p| p.parent())
        .and_then(|d| Some((d.file_name()?.to_str()?, d.parent()?.file_name()?)));
    match profile_dir {
        Some(("release", target)) if target == "target" => "cargo run --release -q -- token".into(),
        Some(("debug", target)) if target == "target" => "cargo run -q -- token".into(),
        _ => match exe {
            Some(p) => format!("{} token", p.display()),
            None => "user-api token".into(),
        },
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
