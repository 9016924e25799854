//! What compiling a hostile wasm module costs the host, within [`WasmLimits`]' bounds on a
//! module's and a function's size: the time a load takes to refuse it, and the process's peak
//! memory. Each shape is one function just under `max_function_bytes` (256 KiB by default),
//! written to make the compiler work hard; `wide` is `max_module_bytes` (32 MiB) of such
//! functions.
//!
//! ```sh
//! cargo run --release -p swapkit --example compile_cost -- live   # one shape per process
//! cargo run --release -p swapkit --example compile_cost -- live 1024 600  # 1 MiB, 10 min
//! ```
//!
//! Shapes: `live` (a value every 3 bytes of code, all alive at once: register allocation and
//! spills), `locals` (50,000 locals, each read and written), `nested` (blocks nested a third
//! of the size deep), `table` (a `br_table` of 65,000 targets, wasmtime's limit being 65,520,
//! then `live`), `wide` (a module of `live` functions up to `max_module_bytes`), `plain` (a
//! control: independent additions in a straight line).
//!
//! [`WasmLimits`]: swapkit::WasmLimits

use std::fmt::Write;
use std::time::{Duration, Instant};

/// A function body of about `budget` bytes of code, in the text format.
fn body(shape: &str, budget: usize) -> (String, String) {
    let mut locals = String::new();
    let mut code = String::with_capacity(budget * 8);
    match shape {
        // `i64.const 1` is 2 bytes and `i64.add` 1: every constant is alive until the adds
        // at the end consume them.
        "live" | "wide" => {
            let n = budget / 3;
            for _ in 0..n {
                code.push_str("i64.const 1\n");
            }
            for _ in 1..n {
                code.push_str("i64.add\n");
            }
            code.push_str("drop\n");
        }
        // At most 13 bytes a statement: two reads, an add, a write, over 50,000 locals.
        "locals" => {
            let n = 50_000;
            let _ = write!(locals, "(local {})", "i64 ".repeat(n));
            for i in 0..budget / 13 {
                let (a, b, c) = (i * 7 % n, i * 13 % n, i * 31 % n);
                let _ = writeln!(code, "local.get {a} local.get {b} i64.add local.set {c}");
            }
        }
        // `block` is 2 bytes and `end` 1.
        "nested" => {
            let n = budget / 3;
            code.push_str(&"block\n".repeat(n));
            code.push_str(&"end\n".repeat(n));
        }
        // wasmtime's most targets (65,520), a byte each (depths under 128), in 128 nested
        // blocks, then the `live` shape in the rest of the budget.
        "table" => {
            let n = 65_000;
            code.push_str(&"block\n".repeat(128));
            code.push_str("i32.const 0\nbr_table");
            for i in 0..n {
                let _ = write!(code, " {}", i % 128);
            }
            code.push('\n');
            code.push_str(&"end\n".repeat(128));
            let rest = (budget - n - 1024) / 3;
            code.push_str(&"i64.const 1\n".repeat(rest));
            code.push_str(&"i64.add\n".repeat(rest - 1));
            code.push_str("drop\n");
        }
        // A control: independent additions, each dropped.
        "plain" => {
            for _ in 0..budget / 6 {
                code.push_str("i64.const 1 i64.const 2 i64.add drop\n");
            }
        }
        other => panic!("no shape {other:?}: live, locals, nested, table, wide or plain"),
    }
    (locals, code)
}

fn main() {
    let shape = std::env::args().nth(1).unwrap_or_else(|| "live".into());
    let mut limits = swapkit::WasmLimits::default();
    // A second argument: the bound on a function's size to test, in KiB; a third, the most
    // a compile may take, in seconds.
    if let Some(kib) = std::env::args().nth(2) {
        limits.max_function_bytes = kib.parse::<usize>().expect("a size in KiB") << 10;
    }
    if let Some(secs) = std::env::args().nth(3) {
        limits.max_compile_time = Duration::from_secs(secs.parse().expect("seconds"));
    }
    // Under the bound, leaving room for the body's own header.
    let budget = limits.max_function_bytes - 4096;
    let functions = if shape == "wide" {
        limits.max_module_bytes / limits.max_function_bytes - 1
    } else {
        1
    };
    let (locals, code) = body(&shape, budget);
    let mut text = String::from("(module (memory (export \"memory\") 1)\n");
    for i in 0..functions {
        let _ = write!(text, "(func (export \"f{i}\") {locals}\n{code})\n");
    }
    text.push(')');
    let wasm = wat::parse_str(&text).expect("the shape is valid wasm");
    drop(text);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.wasm");
    std::fs::write(&path, &wasm).unwrap();
    let biggest = wasmparser::Parser::new(0)
        .parse_all(&wasm)
        .filter_map(|p| match p {
            Ok(wasmparser::Payload::CodeSectionEntry(body)) => Some(body.range().len()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    drop(wasm);
    let swapper = swapkit::Swapper::builder()
        .wasm_limits(limits)
        // A cache of its own, empty: every run compiles.
        .wasm_cache_dir(dir.path().join("cache"))
        .build()
        .unwrap();
    let before = reset_peak_rss_kib();
    let started = Instant::now();
    let result = swapper.load_files([&path]);
    let took = started.elapsed();
    let outcome = match &result {
        Ok(_) => "loaded".to_string(),
        Err(e) => format!("refused: {}", e.to_string().lines().next().unwrap_or("")),
    };
    println!(
        "{shape}: module {} KiB, largest function {} KiB, load {:.2} s, peak RSS {} MiB \
         (before the load {} MiB); {outcome}",
        std::fs::metadata(&path).unwrap().len() >> 10,
        biggest >> 10,
        took.as_secs_f64(),
        peak_rss_kib() >> 10,
        before >> 10,
    );
}

/// Resets the process's peak resident memory to what it holds now, and returns that, in KiB.
fn reset_peak_rss_kib() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("Linux resets the peak through clear_refs");
    status_kib("VmRSS:")
}

/// The process's peak resident memory since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..]
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}
