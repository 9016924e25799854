//! The built-in load generator: keep-alive HTTP/1.1 connections sending requests back to
//! back, each response checked (status, socket, one version for both calls and the row of a
//! page), and the report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One response, as the load generator saw it.
pub(crate) struct Sample {
    /// When the request was sent, from the start of the run.
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

#[derive(PartialEq)]
enum Outcome {
    Ok,
    /// A status other than 2xx.
    Status,
    /// The connection failed.
    Socket,
    /// A version the page records (either call's or its row's) is not the one its
    /// `x-shop-version` header names.
    Mixed,
}

/// The user connection `id` visits as.
pub(crate) fn user(id: usize) -> String {
    format!("u{id}")
}

/// One keep-alive connection sending requests back to back until `deadline`, as
/// [`user`]`(id)`: prices mostly, every tenth a visit count, every tenth an item into the cart.
pub(crate) async fn client(
    addr: SocketAddr,
    id: usize,
    start: Instant,
    deadline: Instant,
) -> Vec<Sample> {
    let mut samples = vec![];
    let mut n = id as u64;
    while Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr).await else {
            samples.push(Sample {
                at: start.elapsed(),
                took: Duration::ZERO,
                outcome: Outcome::Socket,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        while Instant::now() < deadline {
            n += 7;
            let path = match n % 10 {
                0 => "/visits".to_owned(),
                5 => format!("/cart/{}?qty=1", n % 20),
                _ => format!("/price/{}?qty={}", n % 1000, n % 8 + 1),
            };
            let sent = Instant::now();
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: shop\r\nx-user: {}\r\n\r\n",
                user(id)
            );
            let outcome = match write.write_all(request.as_bytes()).await {
                Ok(()) => response(&mut read).await,
                Err(_) => Err(()),
            };
            let outcome = match outcome {
                Ok((status, version, body)) if (200..300).contains(&status) => {
                    if http_api::page::whole(&body, &version) {
                        Outcome::Ok
                    } else {
                        Outcome::Mixed
                    }
                }
                Ok(_) => Outcome::Status,
                Err(()) => Outcome::Socket,
            };
            let failed_socket = outcome == Outcome::Socket;
            samples.push(Sample {
                at: sent - start,
                took: sent.elapsed(),
                outcome,
            });
            if failed_socket {
                break; // reconnect
            }
        }
    }
    samples
}

/// Reads one HTTP/1.1 response: status, `x-shop-version`, body.
async fn response<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> Result<(u16, String, String), ()> {
    let mut line = String::new();
    read.read_line(&mut line).await.map_err(|_| ())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(())?;
    let (mut length, mut version) = (0usize, String::new());
    loop {
        line.clear();
        if read.read_line(&mut line).await.map_err(|_| ())? == 0 {
            return Err(());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().map_err(|_| ())?,
                "x-shop-version" => version = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.map_err(|_| ())?;
    Ok((status, version, String::from_utf8_lossy(&body).into_owned()))
}

/// Prints the run per second and per phase (`phase` is as long as each: the baseline's even
/// seconds, the swapping odd ones); true if no request failed and the database holds one
/// visit (of `recorded`) for each request.
pub(crate) fn report(
    samples: &[Sample],
    swaps: &[Duration],
    phase: Duration,
    recorded: u64,
) -> bool {
    let seconds = (2 * phase).as_secs() as usize;
    println!(
        "\n{:>4} {:>6} {:>9} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9}",
        "s", "swaps", "requests", "non2xx", "socket", "mixed", "p50 µs", "p99 µs", "max µs"
    );
    for s in 0..seconds {
        let in_second: Vec<&Sample> = samples
            .iter()
            .filter(|x| x.at.as_secs() as usize == s)
            .collect();
        let swapped = swaps.iter().filter(|t| t.as_secs() as usize == s).count();
        let line = Line::of(&in_second);
        println!(
            "{:>4} {:>6} {:>9} {:>6} {:>7} {:>6} {:>9} {:>9} {:>9}",
            s,
            swapped,
            line.requests,
            line.status,
            line.socket,
            line.mixed,
            line.p50,
            line.p99,
            line.max
        );
    }
    // Even seconds are the baseline, odd ones swap.
    let odd = |x: &&Sample| x.at.as_secs() % 2 == 1;
    let baseline: Vec<&Sample> = samples.iter().filter(|x| !odd(x)).collect();
    let swapping: Vec<&Sample> = samples.iter().filter(odd).collect();
    let (b, w) = (Line::of(&baseline), Line::of(&swapping));
    let secs = phase.as_secs_f64();
    println!(
        "\nbaseline:  {:>8.0} req/s, p50 {} µs, p99 {} µs, max {} µs",
        b.requests as f64 / secs,
        b.p50,
        b.p99,
        b.max
    );
    println!(
        "swapping:  {:>8.0} req/s, p50 {} µs, p99 {} µs, max {} µs ({} swaps and a rollback)",
        w.requests as f64 / secs,
        w.p50,
        w.p99,
        w.max,
        swaps.len().saturating_sub(1)
    );
    println!(
        "throughput while swapping: {:.1}% of the baseline; p99 {:.2}x the baseline",
        100.0 * w.requests as f64 / b.requests.max(1) as f64,
        w.p99 as f64 / b.p99.max(1) as f64
    );
    let failed = b.failed() + w.failed();
    println!(
        "failed requests: {failed} (non-2xx {}, socket errors {}, mixed versions {})",
        b.status + w.status,
        b.socket + w.socket,
        b.mixed + w.mixed
    );
    // Every request is a visit, recorded by whichever version answered it.
    let made = samples.len() as u64;
    println!("visits in the database across every swap: {recorded} of {made} requests");
    if recorded != made {
        println!("FAILED: the database does not hold one visit per request");
    }
    failed == 0 && recorded == made
}

/// Counts and latency percentiles of some samples.
struct Line {
    requests: usize,
    status: usize,
    socket: usize,
    mixed: usize,
    p50: u128,
    p99: u128,
    max: u128,
}

impl Line {
    fn of(samples: &[&Sample]) -> Line {
        let count = |o: Outcome| samples.iter().filter(|s| s.outcome == o).count();
        let mut took: Vec<u128> = samples
            .iter()
            .filter(|s| s.outcome != Outcome::Socket)
            .map(|s| s.took.as_micros())
            .collect();
        took.sort_unstable();
        let at = |q: f64| {
            took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Line {
            requests: samples.len(),
            status: count(Outcome::Status),
            socket: count(Outcome::Socket),
            mixed: count(Outcome::Mixed),
            p50: at(0.5),
            p99: at(0.99),
            max: took.last().copied().unwrap_or(0),
        }
    }

    fn failed(&self) -> usize {
        self.status + self.socket + self.mixed
    }
}

#[cfg(test)]
mod tests {
    //! The load generator's checks, against servers that answer wrong on purpose: a demo that
    //! reports "0 failed" is only worth it if it would have reported the failures.

    use super::*;
    use tokio::net::TcpListener;

    /// Serves `answer` to every request, or closes the connection if it is `None`.
    async fn fake(answer: Option<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match read.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {}
                            Ok(_) => continue,
                        }
                        let Some(answer) = answer else { return };
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn outcomes(answer: Option<&'static str>) -> Vec<Sample> {
        let addr = fake(answer).await;
        let start = Instant::now();
        client(addr, 0, start, start + Duration::from_millis(100)).await
    }

    fn count(samples: &[Sample], outcome: Outcome) -> usize {
        samples.iter().filter(|s| s.outcome == outcome).count()
    }

    #[tokio::test]
    async fn a_body_from_another_version_is_mixed() {
        let samples = outcomes(Some(
            "HTTP/1.1 200 OK\r\nx-shop-version: 2.0.0\r\ncontent-length: 77\r\n\r\n{\"answer\":{},\"versions\":{\"handled\":\"2.0.0\",\"row\":\"1.0.0\",\"rendered\":\"2.0.0\"}}",
        ))
        .await;
        assert!(!samples.is_empty());
        assert_eq!(count(&samples, Outcome::Mixed), samples.len());
        assert_eq!(
            count(&samples, Outcome::Socket) + count(&samples, Outcome::Status),
            0
        );
    }

    #[tokio::test]
    async fn a_matching_body_is_ok() {
        let samples = outcomes(Some(
            "HTTP/1.1 200 OK\r\nx-shop-version: 1.0.0\r\ncontent-length: 77\r\n\r\n{\"answer\":{},\"versions\":{\"handled\":\"1.0.0\",\"row\":\"1.0.0\",\"rendered\":\"1.0.0\"}}",
        ))
        .await;
        assert!(!samples.is_empty());
        assert_eq!(count(&samples, Outcome::Ok), samples.len());
    }

    #[tokio::test]
    async fn an_error_status_is_counted() {
        let samples = outcomes(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ))
        .await;
        assert!(!samples.is_empty());
        assert_eq!(count(&samples, Outcome::Status), samples.len());
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_socket_error() {
        let samples = outcomes(None).await;
        assert!(count(&samples, Outcome::Socket) > 0);
        assert_eq!(count(&samples, Outcome::Ok), 0);
    }
}
