//! The services' allocator reaches C code: with mimalloc's `override` feature (root `Cargo.toml`)
//! the binary itself defines `malloc` and `free`, and the dynamic linker binds glibc's callers,
//! librdkafka among them, to those definitions before libc's. Dropping the feature would put
//! librdkafka's per-record allocations back on glibc's malloc (15 % of the generator's CPU at
//! 40,000 events/s, BENCHMARKS.md) without a word, so this checks the built binary's dynamic
//! symbol table.

use std::process::Command;

#[test]
fn the_generator_binary_exports_malloc_and_free_so_librdkafka_allocates_through_mimalloc() {
    let binary = env!("CARGO_BIN_EXE_logpipe-generator");
    let output = Command::new("nm")
        .args(["--dynamic", "--defined-only", binary])
        .output()
        .expect("nm (binutils, installed with the C toolchain the build needs) runs");
    assert!(output.status.success(), "nm failed on {binary}");
    let symbols = String::from_utf8_lossy(&output.stdout);
    let defined: Vec<&str> = symbols
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "T", name] => Some(name),
                _ => None,
            },
        )
        .collect();
    for name in ["malloc", "free", "calloc", "realloc", "posix_memalign"] {
        assert!(
            defined.contains(&name),
            "{binary} does not define {name}: C code would allocate through glibc, not mimalloc"
        );
    }
}
