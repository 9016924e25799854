//! A throw-away PostgreSQL cluster for one run.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL cluster of this run's own: in a private temporary directory, on 127.0.0.1 and
/// a free port, with user `swapkit` and a random password. Stopped and deleted on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// The unprivileged user and group it runs as, when this process is root.
    owner: Option<(u32, u32)>,
}

/// What to install when PostgreSQL is missing.
const INSTALL: &str = "install Debian's `postgresql` package (apt-get install -y postgresql), \
                       or put the directory holding `initdb` and `pg_ctl` on PATH";

impl Cluster {
    /// Creates and starts the cluster; takes a second or two. When PostgreSQL is missing and
    /// this process is root on Debian, installs Debian's `postgresql` first, so that the
    /// README's demo command runs on a fresh machine.
    pub fn start() -> Result<Cluster, String> {
        let bin = match binaries() {
            Ok(bin) => bin,
            Err(missing) => {
                install()?.then_some(()).ok_or(missing)?;
                binaries()?
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("swapkit-pg-")
            .tempdir()
            .map_err(|e| format!("cannot make the cluster's directory: {e}"))?;
        // PostgreSQL will not run as root: a root process gives the cluster to `nobody`.
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(nobody()?)
        } else {
            None
        };
        let password = random_hex(16)?;
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, &password)
            .and_then(|()| std::fs::set_permissions(&pwfile, PermissionsExt::from_mode(0o600)))
            .map_err(|e| format!("cannot write the cluster's password file: {e}"))?;
        if let Some((uid, gid)) = owner {
            for path in [dir.path(), &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                    format!("cannot give {} to the cluster's user: {e}", path.display())
                })?;
            }
        }
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            password,
            owner,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "swapkit".as_ref(),
                format!("--pwfile={}", pwfile.display()).as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        // A port found free can be taken before the server binds it: try another then.
        let mut last = String::new();
        for _ in 0..3 {
            cluster.port = free_port()?;
            // Durability is not what this cluster is for: no fsync, so that a run measures the
            // service rather than this machine's disk.
            let options = format!(
                "-h 127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=50",
                cluster.port,
                cluster.dir.path().display()
            );
            let log = cluster.dir.path().join("log");
            match cluster.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            ) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    last = format!(
                        "{e}; its log ends: {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                    );
                }
            }
        }
        Err(format!("the PostgreSQL cluster did not start: {last}"))
    }

    /// How to connect to it, as a libpq-style string for `tokio_postgres::connect`.
    pub fn config(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=swapkit password={} dbname=postgres",
            self.port, self.password
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs as the cluster's user, in the cluster's directory.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            // std clears the supplementary groups when a root parent sets the uid.
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.join(program).display()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Cluster {
    /// Stops the server at once (its clients see their connections end); dropping the
    /// cluster does too, and deletes it.
    pub fn stop(&self) -> Result<(), String> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stopped already if `stop` ran: then pg_ctl finds no server and changes nothing.
        let _ = self.stop();
    }
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, else the newest of Debian's
/// `/usr/lib/postgresql/N/bin`.
fn binaries() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    {
        return Ok(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    debian.sort();
    debian
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("PostgreSQL is not installed: {INSTALL}"))
}

/// Installs Debian's `postgresql` with apt-get, when this process is root and apt-get is
/// there; whether it tried.
fn install() -> Result<bool, String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !std::path::Path::new("/usr/bin/apt-get").exists() {
        return Ok(false);
    }
    eprintln!(
        "PostgreSQL is missing: installing Debian's postgresql (apt-get install -y postgresql)"
    );
    let status = Command::new("apt-get")
        .args(["install", "-y", "postgresql"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}; {INSTALL}"))?;
    if !status.success() {
        return Err(format!(
            "apt-get install -y postgresql failed ({status}); {INSTALL}"
        ));
    }
    Ok(true)
}

/// The uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"nobody") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            "this process is root, which PostgreSQL refuses to run as, and there is no user \
             `nobody` to run the cluster as: run as an unprivileged user"
                .to_owned()
        })
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}
