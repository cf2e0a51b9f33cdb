//! The `upload-receiver` binary: parse arguments, set up logging, load the
//! configuration, and run until SIGINT/SIGTERM. Also `sign`, which prints a
//! signed URL for trying the API by hand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use upload_receiver::App;
use upload_receiver::auth::credentials::{self, Credential, Provenance};
use upload_receiver::auth::signature;
use upload_receiver::config::{Config, LogFormat};
use upload_receiver::domain::{ALPHANUMERIC, Permission, random_string, unix_now};

#[derive(Parser)]
#[command(name = "upload-receiver", version, about = "Receives browser uploads for the 23 Video API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default when no command is given).
    Serve {
        /// The TOML configuration file; without one, every key has its default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print URL signed with OAuth 1.0a (parameters in the query string),
    /// using the first `write` (or higher) credential set.
    Sign {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The HTTP method the URL will be used with.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The URL to sign, e.g. http://127.0.0.1:8080/api/echo?hello=world
        url: url::Url,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(Config::load(config.as_deref())?),
        Command::Sign { config, method, url } => sign(&Config::load(config.as_deref())?, &method, &url),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    // Logs go to stderr; stdout carries only the start-up banner.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Prints a line of the start-up banner. A closed or broken standard output
/// (its reader went away) must not stop the service, so errors are ignored.
macro_rules! banner {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Before anything is printed: a signal from then on stops the
        // service gracefully.
        let shutdown = shutdown_signal();
        let app = App::build(config.clone()).await?;
        let address = app.local_addr();
        banner!("upload-receiver listening on http://{address}");
        let [state, files] = upload_receiver::app::backends(&config);
        banner!("  state: {state}; files: {files}");
        if config.callback.signing_secrets.is_empty() {
            banner!("  callbacks: unsigned (set callback.signing_secrets to sign them)");
        }
        if let Some((credential, provenance)) = app.generated_credential() {
            print_generated_credential(credential, provenance, &config, address);
        }
        app.run_until(shutdown).await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn print_generated_credential(
    credential: &Credential,
    provenance: &Provenance,
    config: &Config,
    address: std::net::SocketAddr,
) {
    let path = credentials::generated_credentials_path(&config.data_dir);
    if *provenance == Provenance::LoadedFromDataDir {
        banner!("  credentials: the generated `write` set in {}", path.display());
        return;
    }
    banner!(
        "\nNo credentials are configured, so a `write` credential set was generated\nand kept in {}:\n",
        path.display()
    );
    banner!("  consumer_key        = {}", credential.consumer_key);
    banner!("  consumer_secret     = {}", credential.consumer_secret.expose());
    banner!("  access_token        = {}", credential.access_token);
    banner!("  access_token_secret = {}", credential.access_token_secret.expose());
    banner!("\nTry a signed call (the `sign` command signs with this set):\n");
    banner!("  curl -s \"$(cargo run -q --release -- sign 'http://{address}/api/echo?hello=world')\"\n");
    banner!("or from Python with requests-oauthlib:\n");
    banner!(
        "  python3 -c \"import requests, requests_oauthlib as o; print(requests.get('http://{address}/api/echo?hello=world', auth=o.OAuth1('{}', '{}', '{}', '{}')).text)\"\n",
        credential.consumer_key,
        credential.consumer_secret.expose(),
        credential.access_token,
        credential.access_token_secret.expose(),
    );
}

fn sign(config: &Config, method: &str, url: &url::Url) -> anyhow::Result<()> {
    let credential = match config.credentials.iter().find(|c| c.permission >= Permission::Write) {
        Some(credential) => credential.clone(),
        None if config.credentials.is_empty() => {
            let path = credentials::generated_credentials_path(&config.data_dir);
            anyhow::ensure!(
                path.exists(),
                "no credentials configured and none generated yet in {}: start the service once",
                path.display()
            );
            credentials::load_or_generate(&config.data_dir)?.0
        }
        None => anyhow::bail!("no configured credential set has the `write` permission"),
    };
    let nonce = random_string(ALPHANUMERIC, 32);
    let signed = signature::signed_url(
        method,
        url,
        (&credential.consumer_key, &credential.access_token),
        (credential.consumer_secret.expose(), credential.access_token_secret.expose()),
        unix_now(),
        &nonce,
    );
    println!("{signed}");
    Ok(())
}

/// Listens for SIGINT and SIGTERM from the moment it is called (so one
/// that arrives while the service starts is not lost, nor fatal), and
/// completes on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).expect("installing a SIGINT handler cannot fail on Unix");
    let mut terminate =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail on Unix");
    async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
