//! A client asking once a millisecond, on one keep-alive connection: it times the gaps
//! with no response, which wrk's totals cannot show.
//!
//! It reconnects after any failure and checks every response: a 2xx status, and a page whose
//! calls and row all come from the version its `x-shop-version` header names. Every request
//! is a visit the shop records in the database, and every other one asks for the count: the
//! count it answers shows whether the service kept its state.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request of the probe.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// When it was sent, from the scenario's start.
    pub sent: Duration,
    /// When its answer (or its failure) came.
    pub done: Duration,
    pub ok: bool,
    /// For a visit count, the count the shop answered.
    pub visits: Option<u64>,
}

/// A probe running on a thread of its own until [`Prober::stop`].
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Probe>>,
}

impl Prober {
    /// Starts probing `addr` as `user`; times count from `start`.
    pub fn start(addr: SocketAddr, start: Instant, user: &str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let user = user.to_owned();
            std::thread::spawn(move || probe(addr, start, &stop, &user))
        };
        Prober { stop, thread }
    }

    /// Stops it and returns every probe, in order.
    pub fn stop(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn probe(addr: SocketAddr, start: Instant, stop: &AtomicBool, user: &str) -> Vec<Probe> {
    let mut probes = Vec::with_capacity(64 * 1024);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let period = Duration::from_millis(1);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // After a long wait, go on from now rather than catch up with a burst.
        next = (next + period).max(Instant::now());
        let sent = start.elapsed();
        let visit = probes.len() % 2 == 1;
        let answer = ask(&mut conn, addr, visit, user);
        if answer.is_none() {
            conn = None;
        }
        probes.push(Probe {
            sent,
            done: start.elapsed(),
            ok: answer.is_some(),
            visits: answer.flatten(),
        });
    }
    probes
}

/// One request on the probe's connection, made first if there is none: `None` if it failed,
/// else the visit count for a visit count.
fn ask(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    visit: bool,
    user: &str,
) -> Option<Option<u64>> {
    if conn.is_none() {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut()?;
    let path = if visit { "/visits" } else { "/price/7?qty=1" };
    let request = format!("GET {path} HTTP/1.1\r\nhost: probe\r\nx-user: {user}\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes()).ok()?;
    let (ok, body) = response(reader)?;
    match visit {
        _ if !ok => None,
        true => Some(Some(http_api::page::number(&body, "visits")?)),
        false => Some(None),
    }
}

/// Reads one response: whether it is 2xx with a page from the version of its header, and the
/// body.
fn response(reader: &mut impl BufRead) -> Option<(bool, String)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut version) = (0usize, String::new());
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "x-shop-version" => version = value.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let whole = http_api::page::whole(&body, &version);
    Some(((200..300).contains(&status) && whole, body))
}

/// The visit count the shop answered last, and how many requests (each a visit) the probe had
/// made by then: equal if the service kept its state through every update.
pub fn visits(probes: &[Probe]) -> (u64, u64) {
    probes
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, p)| Some((p.visits?, i as u64 + 1)))
        .unwrap_or((0, 0))
}

/// The longest time in `[from, to)` with no successful response: between two successes, or
/// from `from` to the first, or from the last to `to`.
pub fn longest_gap(probes: &[Probe], from: Duration, to: Duration) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for p in probes
        .iter()
        .filter(|p| p.ok && p.done >= from && p.done < to)
    {
        longest = longest.max(p.done - last);
        last = p.done;
    }
    longest.max(to.saturating_sub(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, ok: bool) -> Probe {
        Probe {
            sent: Duration::from_millis(ms),
            done: Duration::from_millis(ms),
            ok,
            visits: None,
        }
    }

    fn asked(visits: Option<u64>) -> Probe {
        Probe {
            visits,
            ..at(0, true)
        }
    }

    #[test]
    fn visits_are_the_last_count_against_the_requests_made_by_then() {
        let probes = [
            asked(None),
            asked(Some(2)),
            asked(None),
            asked(Some(4)),
            asked(None),
        ];
        assert_eq!(visits(&probes), (4, 4));
        let lost = [asked(None), asked(Some(1)), asked(None), asked(Some(2))];
        assert_eq!(visits(&lost), (2, 4));
        assert_eq!(visits(&[]), (0, 0));
    }

    #[test]
    fn a_gap_runs_from_one_success_to_the_next() {
        let probes = [
            at(1, true),
            at(2, true),
            at(3, false),
            at(40, false),
            at(52, true),
        ];
        let ms = |n| Duration::from_millis(n);
        assert_eq!(longest_gap(&probes, ms(0), ms(53)), ms(50));
        // Failures are not responses; a window with none at all is one gap.
        assert_eq!(longest_gap(&probes, ms(3), ms(45)), ms(42));
        assert_eq!(longest_gap(&probes, ms(0), ms(100)), ms(50));
        assert_eq!(longest_gap(&probes, ms(50), ms(200)), ms(148));
    }

    #[test]
    fn reads_responses() {
        let page = http_api::page::render("{}", ["2.0.0"; 3]);
        let good = format!(
            "HTTP/1.1 200 OK\r\nx-shop-version: 2.0.0\r\ncontent-length: {}\r\n\r\n{page}",
            page.len()
        );
        let ok = |text: &str| response(&mut text.as_bytes()).map(|(ok, _)| ok);
        assert_eq!(ok(&good), Some(true));
        let mixed = good.replace("x-shop-version: 2.0.0", "x-shop-version: 1.0.0");
        assert_eq!(ok(&mixed), Some(false));
        let row = good.replacen("\"row\":\"2.0.0\"", "\"row\":\"1.0.0\"", 1);
        assert_eq!(ok(&row), Some(false));
        let status = good.replace("200 OK", "500 Internal Server Error");
        assert_eq!(ok(&status), Some(false));
        assert_eq!(ok(&good[..40]), None);
        // A body that is not a page is not whole.
        let bare =
            "HTTP/1.1 200 OK\r\nx-shop-version: 2.0.0\r\ncontent-length: 13\r\n\r\n{\"visits\":12}";
        assert_eq!(ok(bare), Some(false));
    }
}
