fn main() -> std::process::ExitCode {
    kvnode::app::main(std::env::args_os())
}
