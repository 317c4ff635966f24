//! `bahi bench`: throughput figures beside a baseline measured in the same run.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Benchmark {
    /// Acknowledged appends through the writer vs raw batched INSERTs.
    Append,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub benchmark: Benchmark,
    /// Database for store benchmarks (a fresh SQLite file in a temp dir when omitted).
    #[arg(long)]
    pub database: Option<String>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.benchmark {
        Benchmark::Append => anyhow::bail!("not yet implemented"),
    }
}
