//! One second of `wrk --latency`, read into numbers.
//!
//! wrk prints totals for a run, not a time series; running it one second at a time gives each
//! second its own requests, errors and latency percentiles. Each run opens its connections
//! anew, a few milliseconds the same in every scenario.

use std::path::Path;
use std::process::Command;

/// How hard wrk pushes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Each connection sends its next request as soon as the last one is answered.
    Full,
    /// Each connection waits this many milliseconds after a response before its next
    /// request: a steady rate well under capacity. (Debian's wrk 4.1 has no `-R`; this is its
    /// Lua `delay()`.)
    Paced { delay_ms: u32 },
}

impl Rate {
    /// For a chart's caption.
    pub fn short(&self) -> &'static str {
        match self {
            Rate::Full => "full speed",
            Rate::Paced { .. } => "paced",
        }
    }

    /// A name for tables and files.
    pub fn name(&self) -> String {
        match self {
            Rate::Full => "full speed".into(),
            Rate::Paced { delay_ms } => format!("paced ({delay_ms} ms between requests)"),
        }
    }
}

/// What one second of wrk saw.
#[derive(Clone, Debug, Default)]
pub struct Second {
    /// Requests completed.
    pub requests: u64,
    /// How long wrk ran, in seconds (a little over one).
    pub duration: f64,
    /// Responses with a status of 400 or more.
    pub non2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket: u64,
    /// Of those, failed connects: wrk tries again at once, so while nothing listens it
    /// counts attempts, many per request it would have sent.
    pub connect: u64,
    /// Latency percentiles and maximum, in microseconds.
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Second {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.duration.max(1e-3)
    }

    /// Requests that did not succeed.
    pub fn failed(&self) -> u64 {
        self.non2xx + self.socket
    }
}

/// Runs wrk for one second against `url`, as `user` (the `x-user` header). `lua` is the
/// pacing script, for [`Rate::Paced`].
pub fn second(
    url: &str,
    connections: usize,
    lua: Option<&Path>,
    user: &str,
) -> Result<Second, String> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), "-d1s", "--latency"]);
    cmd.arg("-H").arg(format!("x-user: {user}"));
    if let Some(lua) = lua {
        cmd.arg("-s").arg(lua);
    }
    let out = cmd.arg(url).output().map_err(|e| {
        format!("cannot run wrk: {e}; install it (`apt-get install -y wrk`) or use scripts/http-wrk.sh, which does")
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

/// The lua script that paces each connection.
pub fn pacing_script(delay_ms: u32) -> String {
    format!("-- Each connection waits {delay_ms} ms after a response.\nfunction delay()\n  return {delay_ms}\nend\n")
}

/// Reads wrk 4's `--latency` report.
fn parse(text: &str) -> Option<Second> {
    let mut s = Second::default();
    let mut seen_total = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => s.max = micros(max)?,
            ["50%", v] => s.p50 = micros(v)?,
            ["99%", v] => s.p99 = micros(v)?,
            [n, "requests", "in", took, ..] => {
                s.requests = n.parse().ok()?;
                s.duration = seconds(took.trim_end_matches(','))?;
                seen_total = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                let counts: Vec<u64> = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .collect();
                s.socket = counts.iter().sum();
                s.connect = counts.first().copied().unwrap_or(0);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => s.non2xx = n.parse().ok()?,
            _ => {}
        }
    }
    seen_total.then_some(s)
}

/// `230.00us`, `4.12ms` or `1.02s`, in microseconds.
fn micros(v: &str) -> Option<f64> {
    if let Some(n) = v.strip_suffix("us") {
        n.parse().ok()
    } else if let Some(n) = v.strip_suffix("ms") {
        n.parse::<f64>().ok().map(|n| n * 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        n.parse::<f64>().ok().map(|n| n * 60e6)
    } else {
        seconds(v).map(|s| s * 1e6)
    }
}

/// `1.00s` or `1.00ms`, in seconds.
fn seconds(v: &str) -> Option<f64> {
    if let Some(n) = v.strip_suffix("ms") {
        n.parse::<f64>().ok().map(|n| n / 1e3)
    } else {
        v.strip_suffix('s')?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 1s test @ http://127.0.0.1:18080/price/42?qty=5
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   250.12us  301.00us   7.52ms   95.10%
    Req/Sec    60.01k     2.10k   64.00k    80.00%
  Latency Distribution
     50%  210.00us
     75%  260.00us
     90%  330.00us
     99%    1.12ms
  119420 requests in 1.00s, 20.27MB read
  Socket errors: connect 3, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec: 119003.55
Transfer/sec:     20.20MB
";

    #[test]
    fn reads_a_report() {
        let s = parse(REPORT).unwrap();
        assert_eq!(s.requests, 119_420);
        assert_eq!(s.duration, 1.0);
        assert_eq!((s.socket, s.connect, s.non2xx), (6, 3, 7));
        assert_eq!((s.p50, s.p99, s.max), (210.0, 1120.0, 7520.0));
        assert_eq!(s.failed(), 13);
    }

    #[test]
    fn a_clean_second_has_no_error_lines() {
        let clean: String = REPORT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let s = parse(&clean).unwrap();
        assert_eq!(s.failed(), 0);
    }

    #[test]
    fn output_without_totals_is_refused() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_none());
    }

    #[test]
    fn units() {
        assert_eq!(micros("1.02s"), Some(1_020_000.0));
        assert_eq!(micros("3.00m"), Some(180_000_000.0));
        assert_eq!(seconds("999.00ms"), Some(0.999));
    }
}
