//! The child processes: the guard that kills and reaps them, the receiver
//! and the baselines (this binary re-executed with a hidden `serve-*`
//! subcommand), a redis-server and an s3s-fs server of the harness's own.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child server process, killed when dropped.
pub struct Server {
    child: Reaped,
    pub address: String,
}

impl Server {
    pub fn start(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Server> {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let address =
            line.trim().strip_prefix("listening ").context("the server printed no address")?.to_owned();
        Ok(Server { child: Reaped(child), address })
    }

    /// Resident memory now and at its peak, in KiB (from /proc).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Starts a receiver with its data directory in `dir`, on the embedded
    /// default, or on the backends `backend` names.
    pub fn receiver(dir: &Path, backend: &[(&'static str, String)]) -> anyhow::Result<Server> {
        let mut env = vec![
            ("UPLOAD_RECEIVER__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("UPLOAD_RECEIVER__DATA_DIR", dir.display().to_string()),
            ("UPLOAD_RECEIVER__SERVER__MAX_CONNECTIONS", "1024".to_owned()),
        ];
        env.extend(backend.iter().cloned());
        Server::start(&["serve-receiver"], &env)
    }
}

/// A redis-server of the harness's own on a free port, stopped when dropped.
pub struct Redis {
    _child: Reaped,
    url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server (Debian package redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Redis { _child: Reaped(child), url: format!("redis://127.0.0.1:{port}/"), _dir: dir })
    }

    pub fn backend(&self) -> Vec<(&'static str, String)> {
        vec![("UPLOAD_RECEIVER__STATE__REDIS_URL", self.url.clone())]
    }
}

/// An s3s-fs server (objects as files on disk) with one bucket, stopped when
/// dropped. The binary comes from `S3S_FS` or the `PATH`; install it with
/// `cargo install s3s-fs --version 0.14.1 --features binary`.
pub struct S3Server {
    _child: Reaped,
    endpoint: String,
    _dir: tempfile::TempDir,
}

const S3_KEY: &str = "bench-access-key";
const S3_SECRET: &str = "bench-secret-key";
pub const S3_BUCKET: &str = "bench";

impl S3Server {
    pub async fn start() -> anyhow::Result<S3Server> {
        let binary = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir_in(".")?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(dir.path())
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {binary}: `cargo install s3s-fs --version 0.14.1 --features binary`, or set S3S_FS")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let server =
            S3Server { _child: Reaped(child), endpoint: format!("http://127.0.0.1:{port}"), _dir: dir };
        server.client().await.create_bucket().bucket(S3_BUCKET).send().await?;
        Ok(server)
    }

    pub async fn client(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new(S3_KEY, S3_SECRET, None, None, "bench");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The receiver's environment for this server.
    pub fn backend(&self) -> Vec<(&'static str, String)> {
        vec![
            ("UPLOAD_RECEIVER__STORAGE__BUCKET", S3_BUCKET.to_owned()),
            ("UPLOAD_RECEIVER__STORAGE__ENDPOINT", self.endpoint.clone()),
            ("UPLOAD_RECEIVER__STORAGE__FORCE_PATH_STYLE", "true".to_owned()),
            ("UPLOAD_RECEIVER__LIMITS__MAX_CONCURRENT_UPLOADS", "128".to_owned()),
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}
