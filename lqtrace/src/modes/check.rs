//! `lqtrace check`: which hook variant serves each drop kind on this kernel, and why the better
//! ones were skipped. Tries them for real (load + attach), then detaches everything.

use anyhow::Result;

use crate::{
    bpf::hooks::{Group, describe, variants},
    cli::Cli,
    session::{SessionOptions, load_tracer},
};

pub fn run(cli: &Cli) -> Result<i32> {
    let opts = SessionOptions::from_cli(cli);
    let tracer = load_tracer(&opts, false)?;
    let sel = &tracer.selection;
    if cli.json {
        let groups: Vec<serde_json::Value> = Group::ALL
            .into_iter()
            .map(|g| {
                let skipped: Vec<serde_json::Value> = sel
                    .skipped
                    .iter()
                    .filter(|(sg, _, _)| *sg == g)
                    .map(|(_, m, why)| serde_json::json!({"hook": m.as_str(), "why": why}))
                    .collect();
                serde_json::json!({
                    "group": g.as_str(),
                    "kinds": g.kinds(),
                    "chosen": sel.chosen.get(&g).map(|m| m.as_str()),
                    "skipped": skipped,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"kind": "check", "groups": groups, "covered": sel.uncovered().is_empty()})
        );
    } else {
        println!("{:<34} {:<8} ATTACH POINTS / WHY NOT", "DROP KIND", "HOOK");
        for g in Group::ALL {
            let chosen = sel.chosen.get(&g);
            for kind in g.kinds() {
                let attach = chosen
                    .and_then(|m| variants(g).find(|v| v.method == *m))
                    .map(|v| {
                        v.hooks
                            .iter()
                            .map(|h| describe(h.attach))
                            .collect::<Vec<_>>()
                            .join(" + ")
                    })
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{kind:<34} {:<8} {attach}",
                    chosen.map(|m| m.as_str()).unwrap_or("NONE")
                );
            }
            for (_, m, why) in sel.skipped.iter().filter(|(sg, _, _)| *sg == g) {
                println!(
                    "{:<34} {:<8} skipped: {why}",
                    format!("  ({} drops)", g.as_str()),
                    m.as_str()
                );
            }
        }
    }
    let missing = sel.uncovered();
    if missing.is_empty() {
        if !cli.json {
            println!("every drop kind is covered");
        }
        Ok(0)
    } else {
        eprintln!(
            "NOT covered: {} drops (no hook variant works on this kernel)",
            missing
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(1)
    }
}
