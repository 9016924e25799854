//! A real etcd for tests (feature `testing`): Debian's `etcd-server` started on free ports of
//! 127.0.0.1 with its data in a temporary directory, stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Controller;

/// An etcd server of one member.
pub struct Etcd {
    child: Option<Child>,
    data: PathBuf,
    client: u16,
    peer: u16,
}

impl Etcd {
    /// Starts one with its data under `dir`, and waits until it answers.
    ///
    /// # Panics
    /// If etcd cannot be started (it is not installed: `apt-get install -y etcd-server`)
    /// or does not answer within 30 s.
    pub fn start(dir: &Path) -> Etcd {
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        };
        let mut etcd = Etcd {
            child: None,
            data: dir.join("etcd"),
            client: free(),
            peer: free(),
        };
        etcd.run();
        etcd
    }

    /// Its client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// Starts it (again) on the same ports and data, and waits until it answers.
    pub fn run(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): install Debian's etcd-server \
                     (`apt-get install -y etcd-server`; scripts/test.sh does it)"
                )
            });
        self.child = Some(child);
        let mut c = Controller::new(&[self.endpoint()], "probe").expect("a runtime");
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.status().is_err() {
            assert!(Instant::now() < deadline, "etcd did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child this process spawned and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
