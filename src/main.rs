fn main() -> std::process::ExitCode {
    jserve::cli::main()
}
