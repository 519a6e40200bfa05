//! The broker conformance cases as a table (`integration_tests::conformance`):
//!
//!   logpipe-broker-conformance [--brokers HOST:PORT] [CASE...]
//!
//! Runs every case (or those named) against the broker, one after another, and prints a Markdown
//! table: case, what Apache Kafka does, how logpipe uses it, the result
//! and what was seen. Exit code 1 when a case logpipe relies on failed. `member BROKERS TOPIC GROUP`
//! is the child process the `member_killed` case starts and SIGKILLs.

use logpipe_integration_tests::conformance::{member, run, CASES};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("member") {
        let [_, brokers, topic, group] = args.as_slice() else {
            anyhow::bail!("usage: member BROKERS TOPIC GROUP");
        };
        return member(brokers, topic, group).await;
    }
    let mut brokers = logpipe_integration_tests::brokers();
    let mut names = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--brokers" => {
                brokers = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--brokers needs a value"))?
            }
            "-h" | "--help" => {
                println!("usage: logpipe-broker-conformance [--brokers HOST:PORT] [CASE...]");
                for c in &CASES {
                    println!("  {}: {}", c.name, c.kafka);
                }
                return Ok(());
            }
            _ => names.push(a),
        }
    }
    let exe = std::env::current_exe()?;
    println!("broker conformance against {brokers}\n");
    println!("| case | Apache Kafka | logpipe | result | seen |");
    println!("|---|---|---|---|---|");
    let mut failed = 0;
    for case in CASES
        .iter()
        .filter(|c| names.is_empty() || names.iter().any(|n| n == c.name))
    {
        let o = run(case.name, &brokers, &exe).await;
        if case.relied_on && !o.pass {
            failed += 1;
        }
        println!(
            "| `{}` | {} | {} | {} | {} |",
            case.name,
            case.kafka,
            case.logpipe,
            if o.pass { "pass" } else { "**fail**" },
            o.detail
        );
    }
    if failed > 0 {
        eprintln!("{failed} case(s) logpipe relies on failed");
        std::process::exit(1);
    }
    Ok(())
}
