//! A host of the fleet example: a pricer service that calls its `pricer` plugin without
//! pause and follows its fleet's rollouts through etcd.
//!
//! ```text
//! fleet-host --etcd 127.0.0.1:2379 --service pricing --host h1 --state /var/lib/h1 \
//!            --plugins /opt/pricing/plugins [--label zone=a] \
//!            [--etcd-ca ca.pem --etcd-user pricing-h1 --etcd-password-file pw] \
//!            [--operator-key operator.pub]
//! ```
//!
//! It starts from its known-good selection in `--state` (or from `--plugins`), prints
//! `ready`, and then calls `price` every 200 µs from a thread of its own, each call keyed by
//! one of 1,000 customers. Every 100 ms it
//! writes its tally, `calls failed`, to `<state>/tally`; a failed call is also printed to
//! stderr. `tests/rollout.rs` runs five of them against a real etcd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fleet_api::Pricer;
use swapkit::trust::PublicKey;
use swapkit::Swapper;
use swapkit_fleet::{EtcdAccess, FleetConfig, FleetExt};

struct Args {
    etcd: String,
    service: String,
    host: String,
    state: PathBuf,
    plugins: PathBuf,
    labels: Vec<(String, String)>,
    etcd_ca: Option<PathBuf>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    operator_key: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut etcd = None;
    let mut service = None;
    let mut host = None;
    let mut state = None;
    let mut plugins = None;
    let mut labels = vec![];
    let (mut etcd_ca, mut etcd_user, mut etcd_password_file, mut operator_key) =
        (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} takes a value"));
        match arg.as_str() {
            "--etcd" => etcd = Some(value()?),
            "--service" => service = Some(value()?),
            "--host" => host = Some(value()?),
            "--state" => state = Some(value()?),
            "--plugins" => plugins = Some(value()?),
            "--etcd-ca" => etcd_ca = Some(value()?.into()),
            "--etcd-user" => etcd_user = Some(value()?),
            "--etcd-password-file" => etcd_password_file = Some(value()?.into()),
            "--operator-key" => operator_key = Some(value()?.into()),
            "--label" => {
                let label = value()?;
                let (k, v) = label
                    .split_once('=')
                    .ok_or_else(|| format!("--label takes key=value, not `{label}`"))?;
                labels.push((k.to_owned(), v.to_owned()));
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let need = |v: Option<_>, name: &str| {
        v.ok_or_else(|| {
            format!("{name} is required: fleet-host --etcd HOST:PORT --service NAME --host ID --state DIR --plugins DIR")
        })
    };
    Ok(Args {
        etcd: need(etcd, "--etcd")?,
        service: need(service, "--service")?,
        host: need(host, "--host")?,
        state: need(state, "--state")?.into(),
        plugins: need(plugins, "--plugins")?.into(),
        labels,
        etcd_ca,
        etcd_user,
        etcd_password_file,
        operator_key,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let mut access = EtcdAccess::new([args.etcd.as_str()]);
    if let Some(ca) = &args.etcd_ca {
        access = access.ca_file(ca)?;
    }
    if let Some(user) = &args.etcd_user {
        let file = args
            .etcd_password_file
            .as_ref()
            .ok_or("--etcd-user needs --etcd-password-file")?;
        access = access.user(user, &std::fs::read_to_string(file)?);
    }
    let mut fleet = FleetConfig::new([args.etcd.as_str()], &args.service, &args.host)
        .etcd(access)
        .cache_dir(args.state.join("fleet-cache"))
        .report_every(Duration::from_millis(100));
    if let Some(key) = &args.operator_key {
        fleet = fleet.operator_key(PublicKey::parse(&std::fs::read_to_string(key)?)?);
    }
    for (k, v) in &args.labels {
        fleet = fleet.label(k, v);
    }
    let swapper = Swapper::builder()
        .state_dir(args.state.join("swapkit"))
        .fleet(fleet)
        .build()?;
    swapper.resume(&args.plugins)?;
    let pricer = swapper.client::<dyn Pricer>()?;
    println!(
        "ready: {} serves generation {}",
        args.host,
        swapper.generation()
    );
    let tally = args.state.join("tally");
    let (mut calls, mut failed) = (0u64, 0u64);
    let mut written = Instant::now();
    let mut sku = 0u64;
    loop {
        sku += 1;
        calls += 1;
        // Each call is keyed by its customer, as a service's requests are: a canary serves a
        // sticky share of the keys.
        if let Err(e) = swapkit::patch::with_key(sku % 1000, || pricer.price(sku)) {
            failed += 1;
            if failed <= 3 || failed.is_power_of_two() {
                eprintln!("{}: call {calls} failed ({failed} so far): {e}", args.host);
            }
        }
        if written.elapsed() >= Duration::from_millis(100) {
            let partial = args.state.join(".tally");
            std::fs::write(&partial, format!("{calls} {failed}\n"))?;
            std::fs::rename(&partial, &tally)?;
            written = Instant::now();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
