/// mimalloc rather than glibc's malloc: a node moving a large range frees as much as it
/// allocates, and glibc's per-thread arenas kept most of it (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kvnode::app::main(std::env::args_os())
}
