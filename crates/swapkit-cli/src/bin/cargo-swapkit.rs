//! `cargo swapkit ...`: cargo runs this as `cargo-swapkit swapkit ...`.

fn main() -> std::process::ExitCode {
    let mut args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "swapkit") {
        args.remove(1);
    }
    swapkit_cli::main(args)
}
