//! How to reach etcd: its endpoints, a user's name and password, and the certificate
//! authority its TLS certificate is checked against; and the role layout in which each host
//! can write only its own report.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Permission, TlsOptions};

use crate::store::etcd;
use crate::FleetError;

/// Where etcd is and how to prove who is asking.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let access = swapkit_fleet::EtcdAccess::new(["https://etcd-1:2379"])
///     .user("pricing-host-1", &std::fs::read_to_string("/etc/pricing/etcd-password")?)
///     .ca_file("/etc/pricing/etcd-ca.pem")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdAccess {
    pub(crate) endpoints: Vec<String>,
    user: Option<(String, String)>,
    ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("tls", &self.ca_pem.is_some())
            .finish()
    }
}

impl EtcdAccess {
    /// The cluster at `endpoints` (`127.0.0.1:2379`, `http://...` or `https://...`), with no
    /// user and no TLS.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> EtcdAccess {
        EtcdAccess {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            ca_pem: None,
        }
    }

    /// Authenticates as `name` (for a cluster with auth enabled; see [`grant_host`]).
    pub fn user(mut self, name: &str, password: &str) -> EtcdAccess {
        self.user = Some((name.to_owned(), password.trim_end_matches('\n').to_owned()));
        self
    }

    /// Talks TLS, and trusts the server's certificate only if this authority (PEM) signed
    /// it. Endpoints without a scheme become `https://`.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> EtcdAccess {
        self.ca_pem = Some(pem.into());
        self
    }

    /// [`ca_pem`](Self::ca_pem) from a file.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<EtcdAccess, FleetError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| FleetError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(self.ca_pem(pem))
    }

    /// The user this access authenticates as, if any.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    /// A client, connected (and authenticated: a wrong password fails here).
    pub(crate) async fn connect(&self) -> Result<Client, FleetError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        if let Some((name, password)) = &self.user {
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let endpoints: Vec<String> = match &self.ca_pem {
            Some(pem) => {
                options = options
                    .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem.clone())));
                self.endpoints
                    .iter()
                    .map(|e| {
                        if e.contains("://") {
                            e.clone()
                        } else {
                            format!("https://{e}")
                        }
                    })
                    .collect()
            }
            None => self.endpoints.clone(),
        };
        let doing = format!(
            "connect to {}{}{}",
            endpoints.join(","),
            self.user_name()
                .map_or(String::new(), |u| format!(" as `{u}`")),
            if self.ca_pem.is_some() {
                " over TLS"
            } else {
                ""
            }
        );
        Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| etcd(&doing, e))
    }
}

/// The etcd role of `service`'s controllers: read and write everything under
/// `/swapkit/<service>/`.
pub fn controller_role(service: &str) -> String {
    format!("swapkit/{service}/controller")
}

/// The etcd role of one host of `service`: read everything under `/swapkit/<service>/`,
/// write only `/swapkit/<service>/hosts/<host>` (its report).
pub fn host_role(service: &str, host: &str) -> String {
    format!("swapkit/{service}/host/{host}")
}

/// Creates (or updates) user `user` with `password` and the role of `service`'s controllers.
/// `admin` must be etcd's `root` (or hold its role). The role layout is:
///
/// | role | may read | may write |
/// |---|---|---|
/// | [`controller_role`] | `/swapkit/<service>/` | `/swapkit/<service>/` |
/// | [`host_role`] | `/swapkit/<service>/` | `/swapkit/<service>/hosts/<host>` |
///
/// A host can therefore neither start a rollout, nor change a release, nor speak for
/// another host; what it reports about itself is all it can write.
///
/// Blocking: it runs a runtime of its own (call it from a thread, not from async code).
pub fn grant_controller(
    admin: &EtcdAccess,
    service: &str,
    user: &str,
    password: &str,
) -> Result<(), FleetError> {
    let prefix = format!("/swapkit/{service}/");
    block_on(grant(
        admin,
        user,
        password,
        &controller_role(service),
        vec![Permission::read_write(prefix).with_prefix()],
    ))
}

/// Creates (or updates) user `user` with `password` and the role of `host` in `service`
/// (see [`grant_controller`] for the layout). Blocking, as `grant_controller` is.
pub fn grant_host(
    admin: &EtcdAccess,
    service: &str,
    host: &str,
    user: &str,
    password: &str,
) -> Result<(), FleetError> {
    let prefix = format!("/swapkit/{service}/");
    let own = format!("/swapkit/{service}/hosts/{host}");
    block_on(grant(
        admin,
        user,
        password,
        &host_role(service, host),
        vec![
            Permission::read(prefix).with_prefix(),
            Permission::read_write(own),
        ],
    ))
}

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, FleetError>>,
) -> Result<T, FleetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| FleetError::Io {
            path: "(runtime)".into(),
            source,
        })?
        .block_on(f)
}

async fn grant(
    admin: &EtcdAccess,
    user: &str,
    password: &str,
    role: &str,
    permissions: Vec<Permission>,
) -> Result<(), FleetError> {
    let mut client = admin.connect().await?;
    let exists = |e: &etcd_client::Error| e.to_string().contains("already exists");
    match client.role_add(role).await {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(etcd(&format!("add role `{role}`"), e)),
    }
    for permission in permissions {
        client
            .role_grant_permission(role, permission)
            .await
            .map_err(|e| etcd(&format!("grant role `{role}` its keys"), e))?;
    }
    match client.user_add(user, password, None).await {
        Ok(_) => {}
        Err(e) if exists(&e) => {
            client
                .user_change_password(user, password)
                .await
                .map_err(|e| etcd(&format!("set user `{user}`'s password"), e))?;
        }
        Err(e) => return Err(etcd(&format!("add user `{user}`"), e)),
    }
    client
        .user_grant_role(user, role)
        .await
        .map_err(|e| etcd(&format!("grant user `{user}` role `{role}`"), e))?;
    Ok(())
}
