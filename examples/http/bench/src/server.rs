//! The service under test, and the three ways it is updated to the other shop version:
//! swapkit's swap (through the admin socket), a restart, and a graceful restart that hands
//! the listening socket to the next process.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use swapkit_admin::{Client, Outcome, Request};

/// The variable that gives `http-host` its database: in its environment, which only its user
/// can read, rather than on its command line, which every user can.
const DATABASE: &str = "HTTP_SHOP_DATABASE";

/// How the service goes from one version of the shop to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// The new build is put in the plugin directory and the admin socket asked to reload:
    /// the process keeps running, and so do its connections.
    Swap,
    /// What is done without swapkit: stop the process (gracefully: it finishes the requests
    /// in flight), then start the new build, which binds the port again.
    Restart,
    /// The fair fight: start the new build on the same listening socket (handed over as
    /// descriptor 3, systemd's convention), then stop the old one gracefully. No connection
    /// is refused; the old process's keep-alive connections are closed.
    Graceful,
}

impl Way {
    pub const ALL: [Way; 3] = [Way::Swap, Way::Restart, Way::Graceful];

    pub fn name(self) -> &'static str {
        match self {
            Way::Swap => "swapkit swap",
            Way::Restart => "restart",
            Way::Graceful => "graceful restart",
        }
    }
}

/// A running service, updated one way.
pub struct Server {
    way: Way,
    host: PathBuf,
    port: u16,
    releases: [PathBuf; 2],
    /// Which release serves.
    serving: usize,
    /// The database every process of the service uses.
    database: String,
    /// The plugin directory and the admin socket (a swap), kept until the end.
    dir: tempfile::TempDir,
    admin: Option<Client>,
    /// The listening socket this supervisor holds and hands to each process (graceful).
    listener: Option<TcpListener>,
    child: Child,
}

impl Server {
    /// Starts the service on 127.0.0.1:`port` serving `releases[0]`.
    /// Every process of it uses the database `database` names.
    pub fn start(
        way: Way,
        host: &Path,
        port: u16,
        releases: &[PathBuf; 2],
        database: &str,
    ) -> Result<Server, String> {
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot make a plugin directory: {e}"))?;
        let listener = match way {
            Way::Graceful => Some(
                TcpListener::bind(("127.0.0.1", port))
                    .map_err(|e| format!("cannot listen on port {port}: {e}"))?,
            ),
            _ => None,
        };
        let socket = dir.path().join("admin.sock");
        let child = match way {
            Way::Swap => {
                publish(&releases[0], dir.path())?;
                let mut cmd = Command::new(host);
                cmd.arg("--serve")
                    .arg(port.to_string())
                    .arg("--dir")
                    .arg(dir.path())
                    .arg("--admin")
                    .arg(&socket)
                    .env(DATABASE, database);
                ready(cmd)?
            }
            _ => spawn(host, port, &releases[0], listener.as_ref(), database)?,
        };
        let admin = match way {
            Way::Swap => Some(
                Client::connect(&socket)
                    .map_err(|e| format!("cannot reach the admin socket: {e}"))?,
            ),
            _ => None,
        };
        Ok(Server {
            way,
            host: host.to_owned(),
            port,
            releases: releases.clone(),
            serving: 0,
            database: database.to_owned(),
            dir,
            admin,
            listener,
            child,
        })
    }

    /// Updates the service to the other release; returns how long it took.
    pub fn update(&mut self) -> Result<Duration, String> {
        let start = Instant::now();
        let next = 1 - self.serving;
        match self.way {
            Way::Swap => {
                publish(&self.releases[next], self.dir.path())?;
                self.ask(Request::Reload)?;
            }
            Way::Restart => {
                stop(&mut self.child)?;
                self.child = self.spawn(next)?;
            }
            Way::Graceful => {
                let new = self.spawn(next)?;
                let mut old = std::mem::replace(&mut self.child, new);
                stop(&mut old)?;
            }
        }
        self.serving = next;
        Ok(start.elapsed())
    }

    /// Goes back to the previous release: swapkit's rollback for a swap, one more restart
    /// for the others.
    pub fn rollback(&mut self) -> Result<Duration, String> {
        if self.way != Way::Swap {
            return self.update();
        }
        let start = Instant::now();
        self.ask(Request::Rollback { to: None })?;
        self.serving = 1 - self.serving;
        Ok(start.elapsed())
    }

    /// Stops the service.
    pub fn stop(mut self) -> Result<(), String> {
        stop(&mut self.child)
    }

    fn ask(&mut self, request: Request) -> Result<(), String> {
        let admin = self.admin.as_mut().ok_or("no admin socket")?;
        match admin.request(&request) {
            Ok(Outcome::Swapped(_)) => Ok(()),
            Ok(other) => Err(format!("the host answered {request:?} with {other:?}")),
            Err(e) => Err(format!("{request:?} failed: {e}")),
        }
    }

    /// Starts a process serving `releases[which]` on this service's port or socket.
    fn spawn(&self, which: usize) -> Result<Child, String> {
        spawn(
            &self.host,
            self.port,
            &self.releases[which],
            self.listener.as_ref(),
            &self.database,
        )
    }
}

/// Starts `host` serving `release` on `port`, or on `listener` handed over as descriptor 3,
/// with the database `database` names, and waits until it is ready.
fn spawn(
    host: &Path,
    port: u16,
    release: &Path,
    listener: Option<&TcpListener>,
    database: &str,
) -> Result<Child, String> {
    let mut cmd = Command::new(host);
    cmd.arg("--serve")
        .arg(port.to_string())
        .arg("--plugin")
        .arg(release)
        .env(DATABASE, database);
    if let Some(listener) = listener {
        let fd = listener.as_raw_fd();
        cmd.env("LISTEN_FDS", "1");
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (dup2, fcntl) on a descriptor it does not free.
        unsafe {
            cmd.pre_exec(move || {
                let done = if fd == 3 {
                    // Already in place: only let it survive exec.
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    // The copy dup2 makes does not close on exec.
                    libc::dup2(fd, 3)
                };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    ready(cmd)
}

/// Spawns `cmd` and waits for its `ready` line (it has built nothing and loads one plugin,
/// so 30 s is generous).
fn ready(mut cmd: Command) -> Result<Child, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", shown(&cmd)))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let status = child.wait().map_err(|e| e.to_string())?;
        return Err(format!("{} did not get ready ({status})", shown(&cmd)));
    }
    Ok(child)
}

/// A command as an error shows it: its program and arguments, not its environment (which
/// holds the database's password).
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends SIGTERM and waits for the process to finish its requests and exit (killed after
/// 10 s).
fn stop(child: &mut Child) -> Result<(), String> {
    if child.try_wait().map_err(|e| e.to_string())?.is_some() {
        return Ok(());
    }
    // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("the server exited with {status}"))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server did not stop within 10 s of SIGTERM; killed it".into());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Puts `artifact` in `dir` as the shop, by an atomic rename.
fn publish(artifact: &Path, dir: &Path) -> Result<(), String> {
    let name = Path::new("shop").with_extension(artifact.extension().unwrap_or_default());
    let hidden = dir.join(format!(".{}.tmp", name.display()));
    std::fs::copy(artifact, &hidden)
        .and_then(|_| std::fs::rename(&hidden, dir.join(name)))
        .map_err(|e| format!("cannot publish {}: {e}", artifact.display()))
}
