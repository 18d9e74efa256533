//! The hook table's shape, `--hooks` parsing, and the layout checks of the variants.

use super::*;

fn names(stage: Stage) -> Vec<Variant> {
    let mut out: Vec<Variant> = Vec::new();
    for v in variants(stage) {
        if out.last() != Some(&v.variant) {
            out.push(v.variant);
        }
    }
    out
}

#[test]
fn every_stage_has_its_variants_best_first() {
    use Variant::*;
    for g in [Stage::Syn, Stage::Ack] {
        assert_eq!(names(g), vec![Fentry, Kprobe, Cgroup]);
    }
    assert_eq!(names(Stage::Accept), vec![Fentry, Kprobe, Syscalls]);
    assert_eq!(names(Stage::Reset), vec![Tracepoint, Fentry, Kprobe]);
    // Entries of one variant are adjacent (the loader takes the first that fits).
    for g in Stage::HOOKED {
        let n = variants(g).map(|v| v.variant).collect::<Vec<_>>();
        let mut d = n.clone();
        d.dedup();
        let mut u = d.clone();
        u.sort();
        u.dedup();
        assert_eq!(d.len(), u.len(), "{g:?}: {n:?}");
    }
}

#[test]
fn program_names_are_unique_per_attach() {
    let mut seen = std::collections::HashMap::new();
    for v in VARIANTS {
        for hook in v.hooks {
            let prev = seen.insert(hook.program, hook.attach);
            assert!(
                prev.is_none() || prev == Some(hook.attach),
                "{} attached two ways",
                hook.program
            );
        }
    }
}

#[test]
fn needs_are_checked_against_the_layout() {
    let c = Config {
        accept_args: 4,
        ..Config::default()
    };
    assert_eq!(Needs::AcceptArgs(4).check(&c), None);
    let why = Needs::AcceptArgs(2).check(&c).unwrap();
    assert_eq!(
        why,
        "inet_csk_accept() has 4 parameters here, this program is for 2"
    );
    assert!(Needs::FullResetTracepoint.check(&c).is_some());
    let full = Config {
        tp_reset_full: 1,
        ..c
    };
    assert_eq!(Needs::FullResetTracepoint.check(&full), None);
}

#[test]
fn forced_parsing() {
    let f = |pairs: &[(Stage, Variant)]| Ok(Forced(pairs.iter().copied().collect()));
    use Stage::*;
    use Variant::*;
    assert_eq!(
        parse_forced("kprobe"),
        f(&[
            (Syn, Kprobe),
            (Ack, Kprobe),
            (Accept, Kprobe),
            (Reset, Kprobe)
        ])
    );
    assert_eq!(parse_forced("cgroup"), f(&[(Syn, Cgroup), (Ack, Cgroup)]));
    assert_eq!(
        parse_forced("syn=fentry,ack=cgroup"),
        f(&[(Syn, Fentry), (Ack, Cgroup)])
    );
    assert_eq!(
        parse_forced("cgroup,accept=syscalls,reset=tracepoint"),
        f(&[
            (Syn, Cgroup),
            (Ack, Cgroup),
            (Accept, Syscalls),
            (Reset, Tracepoint)
        ])
    );
    assert_eq!(parse_forced("ack=cgroup"), f(&[(Ack, Cgroup)]));
    for bad in ["", "x", "syn=x", "foo=kprobe", ",", "accept=cgroup"] {
        assert!(parse_forced(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_forced("accept=cgroup").unwrap_err(),
        "invalid --hooks `accept=cgroup`: the accept stage has no cgroup variant"
    );
}

#[test]
fn check_lists_kinds_for_every_stage() {
    for g in Stage::HOOKED {
        assert!(!kinds(g).is_empty(), "{g:?}");
    }
    assert!(kinds(Stage::Syn).contains(&"syn_accept_queue_full"));
    assert!(kinds(Stage::Reset).contains(&"refused"));
}
