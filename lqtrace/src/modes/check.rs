//! `lqtrace check`: which hook variant serves each stage (and so each drop reason) on this
//! kernel, and why the better ones were skipped. Tries them for real (load + attach), then
//! detaches everything.

use anyhow::Result;
use serde::Serialize;

use crate::{
    bpf::hooks::{Stage, describe, kinds, variants},
    cli::Cli,
    session::{SessionOptions, load_tracer},
};

#[derive(Serialize)]
struct Skipped<'a> {
    variant: &'static str,
    why: &'a str,
}

#[derive(Serialize)]
struct StageLine<'a> {
    stage: &'static str,
    reasons: Vec<&'static str>,
    variant: Option<&'static str>,
    attach: Vec<String>,
    skipped: Vec<Skipped<'a>>,
}

#[derive(Serialize)]
struct Check<'a> {
    kind: &'static str,
    stages: Vec<StageLine<'a>>,
    covered: bool,
}

pub fn run(cli: &Cli) -> Result<i32> {
    let opts = SessionOptions::from_cli(cli);
    let tracer = load_tracer(&opts, false)?;
    let sel = &tracer.selection;
    let stages: Vec<StageLine<'_>> = Stage::HOOKED
        .into_iter()
        .map(|s| {
            let chosen = sel.chosen.get(&s).copied();
            StageLine {
                stage: s.as_str(),
                reasons: kinds(s),
                variant: chosen.map(|v| v.as_str()),
                attach: chosen
                    .and_then(|c| variants(s).find(|v| v.variant == c))
                    .map(|v| v.hooks.iter().map(|h| describe(h.attach)).collect())
                    .unwrap_or_default(),
                skipped: sel
                    .skipped
                    .iter()
                    .filter(|(st, _, _)| *st == s)
                    .map(|(_, v, why)| Skipped {
                        variant: v.as_str(),
                        why,
                    })
                    .collect(),
            }
        })
        .collect();
    let covered = sel.uncovered().is_empty();
    if cli.json {
        let c = Check {
            kind: "check",
            stages,
            covered,
        };
        println!("{}", serde_json::to_string(&c)?);
    } else {
        println!("{:<34} {:<10} ATTACH POINTS / WHY NOT", "REASON", "VARIANT");
        for s in &stages {
            let attach = if s.attach.is_empty() {
                "-".to_string()
            } else {
                s.attach.join(" + ")
            };
            for reason in &s.reasons {
                println!("{reason:<34} {:<10} {attach}", s.variant.unwrap_or("NONE"));
            }
            for k in &s.skipped {
                let stage = format!("  ({} stage)", s.stage);
                println!("{stage:<34} {:<10} skipped: {}", k.variant, k.why);
            }
        }
    }
    if covered {
        if !cli.json {
            println!("every drop reason is covered");
        }
        Ok(0)
    } else {
        let missing: Vec<&str> = sel.uncovered().iter().map(|s| s.as_str()).collect();
        log::error!(
            "NOT covered: the {} stage (no hook variant works on this kernel)",
            missing.join(", ")
        );
        Ok(1)
    }
}
