//! The fleet deployment files (deploy/) hold together: the DaemonSet has the privileges, mounts
//! and arguments lqtrace needs, its arguments parse, and the image runs the lqtrace binary.
//! No root needed.

use std::path::PathBuf;

use clap::Parser as _;
use serde::Deserialize as _;
use serde_yaml::Value;

fn deploy_file(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (path, text)
}

/// Every document of a multi-document YAML file.
fn documents(name: &str) -> Vec<Value> {
    let (path, text) = deploy_file(name);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn daemonset() -> Value {
    let docs = documents("daemonset.yaml");
    let ds = by_kind(&docs, "DaemonSet");
    assert_eq!(
        ds.len(),
        1,
        "deploy/daemonset.yaml: want exactly one DaemonSet, got {}",
        ds.len()
    );
    ds[0].clone()
}

fn container(ds: &Value) -> Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"].as_str() == Some("lqtrace"))
        .cloned()
        .unwrap_or_else(|| panic!("no container named lqtrace: {containers:?}"))
}

#[test]
fn daemonset_pod_privileges() {
    let ds = daemonset();
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "hostPID: lqtrace reads every process's /proc entries"
    );
    assert!(
        ds["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| &ds["spec"]["template"]["metadata"]["labels"][k] == v),
        "selector does not match the pod template labels"
    );
    let tolerations = pod["tolerations"].as_sequence().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists")
                && t["key"].is_null()
                && t["effect"].is_null()),
        "a toleration for every taint (operator: Exists, no key): lqtrace must run on all nodes: {tolerations:?}"
    );

    let c = container(&ds);
    let sc = &c["securityContext"];
    assert_eq!(
        sc["privileged"].as_bool(),
        Some(false),
        "privileged: false, capabilities instead"
    );
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        sc["runAsUser"].as_i64(),
        Some(0),
        "added capabilities are effective for uid 0 only"
    );
    let add = str_list(&sc["capabilities"]["add"]);
    for cap in [
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
    ] {
        assert!(
            add.contains(&cap),
            "capability {cap} missing from securityContext.capabilities.add {add:?}"
        );
    }
    assert_eq!(str_list(&sc["capabilities"]["drop"]), vec!["ALL"]);
    assert!(
        c["resources"]["requests"].is_mapping() && c["resources"]["limits"]["memory"].is_string(),
        "resources"
    );

    // The service account exists and is the pod's.
    let docs = documents("daemonset.yaml");
    let sa = by_kind(&docs, "ServiceAccount");
    assert_eq!(sa.len(), 1);
    assert_eq!(pod["serviceAccountName"], sa[0]["metadata"]["name"]);
    assert_eq!(sa[0]["metadata"]["namespace"], ds["metadata"]["namespace"]);
}

#[test]
fn daemonset_args_metrics_port_and_scrape_annotations() {
    let ds = daemonset();
    let c = container(&ds);
    let args = str_list(&c["args"]);
    let at = args
        .iter()
        .position(|a| *a == "--metrics")
        .unwrap_or_else(|| panic!("args {args:?} lack --metrics"));
    let addr: std::net::SocketAddr = args[at + 1].parse().expect("--metrics ADDR");
    assert!(
        !addr.ip().is_loopback(),
        "--metrics {addr}: a loopback bind cannot be scraped from the cluster"
    );

    // The args are ones lqtrace accepts.
    let mut argv = vec!["lqtrace"];
    argv.extend(&args);
    let cli = lqtrace::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("lqtrace rejects the DaemonSet's args {args:?}: {e}"));
    assert_eq!(cli.metrics, Some(addr));

    let ports = c["ports"].as_sequence().expect("ports");
    let metrics_port = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .unwrap_or_else(|| panic!("no port named metrics: {ports:?}"));
    assert_eq!(
        metrics_port["containerPort"].as_u64(),
        Some(u64::from(addr.port()))
    );

    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(addr.port().to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    let docs = documents("daemonset.yaml");
    let svc = by_kind(&docs, "Service");
    assert_eq!(svc.len(), 1);
    assert_eq!(
        svc[0]["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless service"
    );
    assert_eq!(
        svc[0]["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(addr.port()))
    );
}

#[test]
fn daemonset_host_mounts() {
    let ds = daemonset();
    let c = container(&ds);
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .clone();
    let mounts = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .clone();
    // (mount path in the container, host path, read-only required)
    let want = [
        ("/sys/kernel/btf", "/sys/kernel/btf", true),
        ("/sys/kernel/tracing", "/sys/kernel/tracing", false),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
        ("/run/netns", "/run/netns", true),
    ];
    for (mount_path, host_path, ro) in want {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(mount_path))
            .unwrap_or_else(|| panic!("no volumeMount at {mount_path}: {mounts:?}"));
        let name = m["name"].as_str().unwrap();
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| {
                panic!("volumeMount {mount_path} names volume {name}, which is not declared")
            });
        assert_eq!(
            v["hostPath"]["path"].as_str(),
            Some(host_path),
            "volume {name}"
        );
        if ro {
            assert_eq!(
                m["readOnly"].as_bool(),
                Some(true),
                "{mount_path} should be read-only"
            );
        }
    }
    let netns = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/run/netns"))
        .unwrap();
    assert_eq!(
        netns["mountPropagation"].as_str(),
        Some("HostToContainer"),
        "namespaces created later must appear"
    );
}

#[test]
fn dockerfile_runs_lqtrace() {
    let (_, text) = deploy_file("Dockerfile");
    // Instruction lines (no comments, continuations joined).
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let instr = |name: &str| -> Vec<String> {
        joined
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .filter(|rest| rest.starts_with(' '))
                    .map(|r| r.trim().to_string())
            })
            .collect()
    };
    let from = instr("FROM");
    assert_eq!(from, vec!["debian:bookworm-slim"], "runtime base image");
    let entry = instr("ENTRYPOINT");
    assert_eq!(entry.len(), 1, "one ENTRYPOINT: {entry:?}");
    let entry: Vec<String> =
        serde_json::from_str(&entry[0]).expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entry, vec!["/usr/local/bin/lqtrace"]);
    let copies = instr("COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.split_whitespace().collect::<Vec<_>>()
                == ["target/release/lqtrace", "/usr/local/bin/lqtrace"]),
        "the release binary is copied to the entrypoint's path: {copies:?}"
    );
    let cmd = instr("CMD");
    assert_eq!(cmd.len(), 1);
    let cmd: Vec<String> = serde_json::from_str(&cmd[0]).expect("CMD in exec form");
    assert_eq!(cmd, vec!["--metrics", "0.0.0.0:9464", "-j"]);
    let mut argv = vec!["lqtrace".to_string()];
    argv.extend(cmd);
    lqtrace::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("lqtrace rejects the image's CMD: {e}"));
    assert!(
        text.contains("cargo xtask build --release"),
        "the Dockerfile documents how the binary is built"
    );
}

#[test]
fn prometheus_scrape_examples() {
    let docs = documents("prometheus-scrape.yaml");
    assert_eq!(docs.len(), 1);
    let jobs = docs[0]["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let k8s = jobs
        .iter()
        .find(|j| j["kubernetes_sd_configs"].is_sequence())
        .expect("a kubernetes_sd_configs job");
    assert_eq!(
        k8s["kubernetes_sd_configs"][0]["role"].as_str(),
        Some("pod")
    );
    let relabel = k8s["relabel_configs"].as_sequence().unwrap();
    assert!(
        relabel.iter().any(|r| {
            str_list(&r["source_labels"])
                == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
                && r["action"].as_str() == Some("keep")
        }),
        "the pod job keeps only annotated pods"
    );
    let statics = jobs
        .iter()
        .find(|j| j["static_configs"].is_sequence())
        .expect("a static_configs job");
    let targets = str_list(&statics["static_configs"][0]["targets"]);
    assert!(
        !targets.is_empty() && targets.iter().all(|t| t.ends_with(":9464")),
        "{targets:?}"
    );
}

#[test]
fn readme_explains_privileges() {
    let (_, text) = deploy_file("README.md");
    for word in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
        "hostPID",
        "pod_uid",
        "container_id",
    ] {
        assert!(
            text.contains(word),
            "deploy/README.md does not mention {word}"
        );
    }
}
