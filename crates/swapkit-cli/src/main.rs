fn main() -> std::process::ExitCode {
    swapkit_cli::main(std::env::args_os())
}
