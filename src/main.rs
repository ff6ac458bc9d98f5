//! The `user-api` binary: serve (default), migrate, token, seed.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use user_api::auth::{self, Role};
use user_api::config::Config;
use user_api::domain::UserId;
use user_api::{App, db, pool_options, seed, telemetry};

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
    Token {
        /// The user id the token is for.
        #[arg(long)]
        sub: String,
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
    telemetry::init_logging(&config.server.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("user-api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("user-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let repo = db::connect(&config.database_url, &pool_options(&config)).await?;
            repo.migrate().await?;
            println!("migrations applied ({})", repo.backend());
            Ok(())
        }
        Command::Token { sub, role, ttl } => {
            if !config.jwt_dev_mode() {
                anyhow::bail!(
                    "`user-api token` signs with the dev-mode key only; a key source (JWT_PUBLIC_KEY_FILE or JWKS_URL) is configured, so tokens must come from the auth service"
                );
            }
            let sub: UserId = sub
                .parse()
                .map_err(|_| anyhow::anyhow!("--sub must be a UUID"))?;
            let role = match role {
                RoleArg::User => Role::User,
                RoleArg::Admin => Role::Admin,
            };
            let token = auth::dev::sign_token_for(&config.jwt, sub, role, Duration::from(ttl))?;
            println!("{token}");
            Ok(())
        }
        Command::Seed { count } => {
            let repo = db::connect(&config.database_url, &pool_options(&config)).await?;
            repo.migrate().await?;
            let started = std::time::Instant::now();
            let n = seed::seed(repo.as_ref(), count).await?;
            println!("inserted {n} profiles in {:.1?}", started.elapsed());
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let dev_mode = config.jwt_dev_mode();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let app = App::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "user-api listening");
    if dev_mode {
        let port = app.port();
        eprintln!(
            "\nDEV MODE: tokens are signed with a local key. Get one with:\n  TOKEN=$(cargo run --release -q -- token --sub $(cat /proc/sys/kernel/random/uuid) --role admin)\nthen: curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{port}/api/profiles/me\n"
        );
    }
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    shutdown_signal().await;
    tracing::info!("shutting down; finishing in-flight requests");
    token.cancel();
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    Ok(())
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
