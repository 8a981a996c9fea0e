//! `sageattn`: the command-line tool. `sageattn run` reads Q, K and V from a .safetensors file,
//! runs SageAttention on the GPU and writes `o` (and `lse`) to a .safetensors file, optionally
//! checking the result against float64 attention on the CPU; `sageattn info` describes the GPU
//! and the kernels. See `docs/cli.md`; the logic lives in `host/cli/`.

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
