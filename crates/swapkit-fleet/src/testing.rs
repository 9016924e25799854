//! A real etcd for tests (feature `testing`): Debian's `etcd-server` started on free ports of
//! 127.0.0.1 with its data in a temporary directory, stopped when dropped. It runs as a
//! production cluster should: clients talk TLS (a certificate authority made for it) and
//! must authenticate, each with the role [`grant_controller`] or [`grant_host`] gives.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{grant_controller, grant_host, Controller, EtcdAccess};

/// An etcd server of one member, with TLS and auth on.
pub struct Etcd {
    child: Option<Child>,
    data: PathBuf,
    tls: PathBuf,
    ca_pem: String,
    root_password: String,
    auth_on: bool,
    client: u16,
    peer: u16,
}

/// A password no other run guesses.
fn password() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::time::SystemTime::now());
    let b = RandomState::new().hash_one(std::process::id());
    format!("{a:016x}{b:016x}")
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
        let tls = dir.join("etcd-tls");
        std::fs::create_dir_all(&tls).expect("a directory for etcd's certificates");
        let ca_pem = certificates(&tls);
        let root_password = password();
        std::fs::write(tls.join("root.password"), &root_password).expect("write a password file");
        let mut etcd = Etcd {
            child: None,
            data: dir.join("etcd"),
            tls,
            ca_pem,
            root_password,
            auth_on: false,
            client: free(),
            peer: free(),
        };
        etcd.run();
        etcd
    }

    /// Its client endpoint, `127.0.0.1:PORT` (TLS: give [`ca_file`](Self::ca_file) too).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// The certificate authority that signed its certificate, as a PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.tls.join("ca.pem")
    }

    /// Access as `root`: everything, auth included. What a test plays a hostile etcd writer
    /// with.
    pub fn root(&self) -> EtcdAccess {
        EtcdAccess::new([self.endpoint()])
            .ca_pem(self.ca_pem.clone())
            .user("root", &self.root_password)
    }

    /// Access as the controller of `service`: user `<service>-controller`, made now (its
    /// password in [`password_file`](Self::password_file)).
    pub fn controller(&self, service: &str) -> EtcdAccess {
        let user = format!("{service}-controller");
        let password = self.new_password(&user);
        grant_controller(&self.root(), service, &user, &password)
            .expect("grant the controller its role");
        self.user(&user, &password)
    }

    /// Access as `host` of `service`: user `<service>-<host>`, made now (its password in
    /// [`password_file`](Self::password_file)).
    pub fn host(&self, service: &str, host: &str) -> EtcdAccess {
        let user = format!("{service}-{host}");
        let password = self.new_password(&user);
        grant_host(&self.root(), service, host, &user, &password).expect("grant the host its role");
        self.user(&user, &password)
    }

    /// Access as `user` with `password`, over TLS.
    pub fn user(&self, user: &str, password: &str) -> EtcdAccess {
        EtcdAccess::new([self.endpoint()])
            .ca_pem(self.ca_pem.clone())
            .user(user, password)
    }

    /// The file holding `user`'s password (`root`, or one made by
    /// [`controller`](Self::controller) or [`host`](Self::host)).
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.tls.join(format!("{user}.password"))
    }

    fn new_password(&self, user: &str) -> String {
        let password = password();
        std::fs::write(self.password_file(user), &password).expect("write a password file");
        password
    }

    /// Writes `value` at `key` as `root`, as a hostile etcd writer would.
    pub fn put(&self, key: &str, value: &[u8]) {
        self.put_as(&self.root(), key, value).expect("put as root");
    }

    /// Writes `value` at `key` through `access`: what that user may write.
    pub fn put_as(
        &self,
        access: &EtcdAccess,
        key: &str,
        value: &[u8],
    ) -> Result<(), crate::FleetError> {
        runtime().block_on(async {
            let mut client = access.connect().await?;
            client
                .put(key, value, None)
                .await
                .map_err(|e| crate::store::etcd(&format!("write {key}"), e))?;
            Ok(())
        })
    }

    /// The value at `key`, read as `root`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        runtime().block_on(async {
            let mut client = self.root().connect().await.expect("connect as root");
            let got = client.get(key, None).await.expect("get as root");
            got.kvs().first().map(|kv| kv.value().to_vec())
        })
    }

    /// Starts it (again) on the same ports and data, and waits until it answers.
    pub fn run(&mut self) {
        let client = format!("https://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg(format!(
                "--cert-file={}",
                self.tls.join("server.pem").display()
            ))
            .arg(format!(
                "--key-file={}",
                self.tls.join("server-key.pem").display()
            ))
            // Tests only: cheap password hashing, and tokens that lapse within a test, so
            // that the clients' token refresh is exercised.
            .arg("--bcrypt-cost=4")
            .arg("--auth-token-ttl=10")
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
        let access = if self.auth_on {
            self.root()
        } else {
            EtcdAccess::new([self.endpoint()]).ca_pem(self.ca_pem.clone())
        };
        let mut c = Controller::with_access(access, "probe").expect("a runtime");
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.status().is_err() {
            assert!(Instant::now() < deadline, "etcd did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.auth_on {
            self.enable_auth();
        }
    }

    /// Makes `root` and turns auth on: from now on every client must authenticate.
    fn enable_auth(&mut self) {
        runtime().block_on(async {
            let access = EtcdAccess::new([self.endpoint()]).ca_pem(self.ca_pem.clone());
            let mut client = access.connect().await.expect("connect to etcd");
            client
                .user_add("root", self.root_password.as_str(), None)
                .await
                .expect("add etcd's root user");
            // etcd 3.4 knows the root role without it being added.
            let _ = client.role_add("root").await;
            client
                .user_grant_role("root", "root")
                .await
                .expect("grant root its role");
            client.auth_enable().await.expect("enable auth");
        });
        self.auth_on = true;
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A certificate authority and a server certificate for 127.0.0.1 signed by it, written in
/// `dir` (`ca.pem`, `server.pem`, `server-key.pem`); returns the authority's PEM.
fn certificates(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "swapkit test etcd CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("a server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server parameters")
        .signed_by(&server_key, &issuer)
        .expect("the server certificate");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).expect("write a certificate file");
    };
    write("ca.pem", &ca_cert.pem());
    write("server.pem", &server.pem());
    write("server-key.pem", &server_key.serialize_pem());
    ca_cert.pem()
}
