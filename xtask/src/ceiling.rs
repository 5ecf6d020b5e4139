//! `cargo xtask ceiling`: how close the backup pipeline comes to what its stages allow.
//!
//! ```text
//! cargo xtask ceiling [--no-run]
//! ```
//!
//! Runs the criterion benches a stream backup is made of (`cargo bench --bench pipeline`,
//! filtered): the DUMPS chunker, the blob id of every chunk, packing every chunk (zstd -3,
//! AES-256-GCM, pack framing), an index lookup that misses, and the whole `backup_stream`. Each
//! stage bench runs on one thread. Per input, one core spends the sum of the stages' times on a
//! byte (the lookup's time once per chunk); `N` cores at best `1/N` of that, which is the
//! ceiling. The pipeline's throughput is then stated against it. `--no-run` reads the figures
//! of the last run from `target/criterion` instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cmd;

const USAGE: &str = "usage: cargo xtask ceiling [--no-run]";
/// The benches the ceiling is made of (a criterion filter, a regex on the full id).
const FILTER: &str = "^(chunking/dumps|hashing/blob_id-chunks|pack_writing/add-zstd3\\+finish-chunks|index_lookup/lookup/absent|pipeline_backup)";
/// The DUMPS chunker's average chunk, which `backup_stream` cuts a stream into.
const AVG_CHUNK: f64 = 16384.0;
const MIB: f64 = 1024.0 * 1024.0;

pub fn run(args: &[String]) -> Result<()> {
    let mut run_benches = true;
    for a in args {
        match a.as_str() {
            "--no-run" => run_benches = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if run_benches {
        cmd::run(&mut cmd::new("cargo", &["bench", "--bench", "pipeline", "--", FILTER]))?;
    }
    let dir = crate::project_root().join("target/criterion");
    let found = estimates(&dir)?;
    let get = |id: &str| -> Result<&Estimate> {
        found
            .get(id)
            .with_context(|| format!("no criterion result for `{id}` under {} (run without --no-run)", dir.display()))
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as f64;
    let lookup_ns = get("index_lookup/lookup/absent-100k")?.mean_ns;

    let mut table = String::from(
        "| input | chunking | hashing | pack writing | lookups | one core | ceiling, cores | pipeline | pipeline / ceiling |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = Vec::new();
    for input in ["incompressible", "compressible"] {
        let chunk = get(&format!("chunking/dumps/{input}"))?;
        let hash = get(&format!("hashing/blob_id-chunks/{input}"))?;
        let pack = get(&format!("pack_writing/add-zstd3+finish-chunks/{input}"))?;
        let pipe = get(&format!("pipeline_backup/backup_stream/{input}"))?;
        let bytes = pipe.bytes.context("pipeline_backup reports no byte throughput")? as f64;
        let lookups_ns = bytes / AVG_CHUNK * lookup_ns;
        let one_core_ns = chunk.mean_ns + hash.mean_ns + pack.mean_ns + lookups_ns;
        let rate = |ns: f64| bytes / MIB / (ns / 1e9);
        let ceiling = rate(one_core_ns / cores);
        let pipeline = rate(pipe.mean_ns);
        table.push_str(&format!(
            "| {input} | {:.0} MiB/s | {:.0} MiB/s | {:.0} MiB/s | {:.0} MiB/s | {:.0} MiB/s | {:.0} MiB/s, {cores} | {:.0} MiB/s | {:.0}% |\n",
            rate(chunk.mean_ns),
            rate(hash.mean_ns),
            rate(pack.mean_ns),
            rate(lookups_ns),
            rate(one_core_ns),
            ceiling,
            pipeline,
            100.0 * pipeline / ceiling
        ));
        rows.push(json!({
            "input": input, "bytes": bytes, "cores": cores,
            "stage_ns": { "chunking": chunk.mean_ns, "hashing": hash.mean_ns, "pack_writing": pack.mean_ns, "lookups": lookups_ns },
            "ceiling_mib_s": ceiling, "pipeline_mib_s": pipeline, "fraction": pipeline / ceiling,
        }));
    }
    println!("\n{table}");
    println!("(stage figures are single-threaded throughputs; lookups: one index miss of {lookup_ns:.0} ns per {AVG_CHUNK} bytes)");
    let out = dir.join("ceiling.json");
    fs::write(&out, serde_json::to_string_pretty(&json!({ "rows": rows, "table": table }))? + "\n")?;
    println!("written to {}", out.display());
    Ok(())
}

struct Estimate {
    mean_ns: f64,
    bytes: Option<u64>,
}

/// Every benchmark under `dir` by its full id (`group/function/input`): the mean time of one
/// iteration in the newest run, and the bytes one iteration processes.
fn estimates(dir: &Path) -> Result<BTreeMap<String, Estimate>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.file_name().is_some_and(|n| n == "benchmark.json") && p.parent().is_some_and(|d| d.ends_with("new")) {
                let bench: Value = serde_json::from_str(&fs::read_to_string(&p)?)?;
                let est: Value = serde_json::from_str(&fs::read_to_string(p.with_file_name("estimates.json"))?)?;
                let (Some(id), Some(mean)) = (bench["full_id"].as_str(), est["mean"]["point_estimate"].as_f64()) else {
                    continue;
                };
                out.insert(id.to_string(), Estimate { mean_ns: mean, bytes: bench["throughput"]["Bytes"].as_u64() });
            }
        }
    }
    Ok(out)
}
