//! Server processes a test owns and kills: nginx in front of receivers, and
//! a private redis-server or moto it can stop to inject a fault.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Owned {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Owned {
    /// Sends SIGKILL and waits for the process to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Takes charge of a child already listening on `port`, with the
    /// directory it works in.
    pub fn adopt(child: Child, dir: tempfile::TempDir, port: u16) -> Owned {
        Owned { child, _dir: dir, port }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(sent.unwrap().success(), "kill -{signal}");
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(command: &mut Command, dir: tempfile::TempDir, port: u16, what: &str) -> Owned {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({e}): scripts/test.sh installs it"));
    let owned = Owned { child, _dir: dir, port };
    wait_for_port(port, what);
    owned
}

/// nginx on a free port proxying to `upstreams` the way `deploy/nginx.conf`
/// does: no request buffering, no body size limit, forwarded headers.
pub fn nginx(upstreams: &[SocketAddr]) -> Owned {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let servers: String = upstreams.iter().map(|a| format!("    server {a};\n")).collect();
    let root = dir.path().display();
    let conf = format!(
        "user root;\nworker_processes 1;\ndaemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n\
           fastcgi_temp_path {root}/fcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
           upstream receivers {{\n{servers}    keepalive 16;\n  }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
             proxy_request_buffering off;\n    proxy_buffering off;\n    proxy_http_version 1.1;\n\
             location / {{\n      proxy_pass http://receivers;\n      proxy_set_header Connection \"\";\n\
               proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-Host $http_host;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    spawn(Command::new(nginx_binary()).arg("-c").arg(&path).arg("-p").arg(dir.path()), dir, port, "nginx")
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" }
}

/// A redis-server of the test's own, keeping nothing on disk.
pub fn redis() -> Owned {
    redis_in(tempfile::tempdir().unwrap(), free_port(), false)
}

/// A redis-server on `port` in `dir`; with `durable`, every write goes to
/// its append-only file at once, so a restart in the same `dir` keeps it.
pub fn redis_in(dir: tempfile::TempDir, port: u16, durable: bool) -> Owned {
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
    if durable {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    command.arg("--dir").arg(dir.path());
    spawn(&mut command, dir, port, "redis-server")
}

impl Owned {
    /// Kills a redis-server started by [`redis_in`] and starts it again on
    /// the same port and directory.
    pub fn restart_redis(self) -> Owned {
        let mut old = self;
        old.kill();
        let dir = std::mem::replace(&mut old._dir, tempfile::tempdir().unwrap());
        redis_in(dir, old.port, true)
    }
}

/// A moto S3 server of the test's own, on `port` (0 for a free one).
pub fn moto(port: u16) -> Owned {
    let dir = tempfile::tempdir().unwrap();
    let port = if port == 0 { free_port() } else { port };
    let python = std::env::var("UPLOAD_RECEIVER_TEST_PYTHON")
        .expect("UPLOAD_RECEIVER_TEST_PYTHON is not set: run the tests with scripts/test.sh");
    let moto = Path::new(&python).with_file_name("moto_server");
    spawn(Command::new(moto).args(["-H", "127.0.0.1", "-p", &port.to_string()]), dir, port, "moto_server")
}
