//! Which container (and Kubernetes pod) a process runs in, read from its cgroup path.
//!
//! A process's cgroup v2 path (the `0::` line of `/proc/PID/cgroup`, kept in
//! [`Owner::cgroup`](crate::attribution::owners::Owner)) names the container and, under Kubernetes, the pod.
//! The layout depends on the cgroup driver (systemd or cgroupfs) and on the runtime:
//!
//! | driver / runtime | path |
//! | --- | --- |
//! | systemd, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID_>.slice/cri-containerd-<ID>.scope` |
//! | systemd, CRI-O | `/kubepods.slice/kubepods-pod<UID_>.slice/crio-<ID>.scope` |
//! | systemd, Docker (dockershim / cri-dockerd) | `/kubepods.slice/.../kubepods-besteffort-pod<UID_>.slice/docker-<ID>.scope` |
//! | cgroupfs, any | `/kubepods/burstable/pod<UID>/<ID>` (`/kubepods/pod<UID>/<ID>` for Guaranteed pods) |
//! | Docker, no Kubernetes | `/system.slice/docker-<ID>.scope` (systemd) or `/docker/<ID>` (cgroupfs) |
//! | Podman | `/machine.slice/libpod-<ID>.scope`, rootless under `/user.slice/.../libpod-<ID>.scope` |
//! | kind / nested kubelet | `/kubelet.slice/kubelet-kubepods.slice/.../kubelet-kubepods-...-pod<UID_>.slice/cri-containerd-<ID>.scope` |
//!
//! `<UID_>` is the pod UID with `-` written as `_` (systemd reserves `-` in unit names for the
//! slice hierarchy); it is turned back into the UID Kubernetes shows (`kubectl get pod -o
//! jsonpath='{.metadata.uid}'`). `<ID>` is the runtime's 64-hex-digit container ID. Sub-cgroups
//! inside the container (a container running systemd, `.../cri-containerd-<ID>.scope/init.scope`)
//! are allowed: the innermost container component wins.
//!
//! Seen from inside a container with its own cgroup namespace (the default for pods on cgroup v2),
//! other processes' paths are relative to the container's cgroup and start with `/..`, e.g.
//! `/../../kubepods-besteffort-pod<UID_>.slice/cri-containerd-<ID>.scope`; the pod and container
//! are still found. With the cgroupfs driver, a container of the *same* pod then shows as
//! `/../<ID>` and its pod cannot be told.
//!
//! Monitor processes (`crio-conmon-<ID>.scope`, `libpod-conmon-<ID>.scope`) are not the container:
//! only the pod is reported for them.
//!
//! The container ID is given as `<runtime>://<ID>`, the same form as Kubernetes' pod status
//! `containerID` and kube-state-metrics' `kube_pod_container_info{container_id}`, so metrics can
//! be joined on it.

/// What a cgroup path says about the container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerRef {
    /// Kubernetes pod UID (with dashes), when the path is under a kubepods hierarchy.
    pub pod_uid: Option<String>,
    /// `<runtime>://<64 hex digits>`, e.g. `containerd://3f4e...`.
    pub container_id: Option<String>,
}

/// The pod UID and container ID in a cgroup path; `None` when it names neither (a host process,
/// or a path seen from inside a cgroup namespace such as `/`).
pub fn parse_container(cgroup: &str) -> Option<ContainerRef> {
    let mut out = ContainerRef::default();
    let mut under_kubepods = false;
    // Previous component, to recognise cgroupfs `/docker/<ID>` and `/kubepods/.../pod<UID>/<ID>`.
    let mut prev: &str = "";
    for comp in cgroup.split('/').filter(|c| !c.is_empty()) {
        // `..`: the path is relative to the reader's cgroup namespace (lqtrace in a pod with a
        // private cgroupns reading a host process): the kubepods part may be above it.
        if comp.contains("kubepods") || comp == ".." {
            under_kubepods = true;
        }
        if let Some(uid) = pod_uid_of(comp) {
            if under_kubepods {
                out.pod_uid = Some(uid);
                // A new pod resets any container seen above it (there should be none).
                out.container_id = None;
            }
        } else if let Some(id) = systemd_scope_container(comp) {
            out.container_id = id;
        } else if is_container_id(comp) {
            // cgroupfs: the container's directory is its bare ID, under the pod or /docker.
            if prev.starts_with("pod") && out.pod_uid.is_some() {
                out.container_id = Some(format!("{}://{comp}", cgroupfs_runtime(cgroup)));
            } else if prev == "docker" {
                out.container_id = Some(format!("docker://{comp}"));
            }
        }
        prev = comp;
    }
    if out.pod_uid.is_none() && out.container_id.is_none() {
        None
    } else {
        Some(out)
    }
}

/// `pod<UID>` (cgroupfs) or `...-pod<UID_>.slice` (systemd) → the UID with dashes.
fn pod_uid_of(comp: &str) -> Option<String> {
    let raw = if let Some(slice) = comp.strip_suffix(".slice") {
        // kubepods-burstable-pod<UID_>.slice, kubepods-pod<UID_>.slice, kubelet-kubepods-...-pod<UID_>.slice
        let at = slice.rfind("-pod")?;
        &slice[at + 4..]
    } else {
        comp.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (8-4-4-4-12 hex) or, for static/mirror pods, a 32-hex-digit hash.
fn is_pod_uid(s: &str) -> bool {
    let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [one] => one.len() == 32 && hex(one),
        [a, b, c, d, e] => {
            [a.len(), b.len(), c.len(), d.len(), e.len()] == [8, 4, 4, 4, 12]
                && parts.iter().all(|p| hex(p))
        }
        _ => false,
    }
}

/// 64 lowercase hex digits: the ID docker, containerd and CRI-O give containers.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A systemd scope of a container runtime. `Some(Some(id))` for a container, `Some(None)` for a
/// runtime's monitor scope (conmon: not the container), `None` for anything else.
fn systemd_scope_container(comp: &str) -> Option<Option<String>> {
    let name = comp.strip_suffix(".scope")?;
    const RUNTIMES: &[(&str, &str)] = &[
        ("cri-containerd-", "containerd"),
        ("crio-conmon-", ""),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-conmon-", ""),
        ("libpod-", "podman"),
    ];
    for (prefix, runtime) in RUNTIMES {
        if let Some(id) = name.strip_prefix(prefix) {
            if !is_container_id(id) {
                return None;
            }
            return Some((!runtime.is_empty()).then(|| format!("{runtime}://{id}")));
        }
    }
    None
}

/// With the cgroupfs driver the path does not name the runtime; `docker` appears in it only for
/// Docker. Kubernetes' default runtime today is containerd, so that is the guess otherwise.
fn cgroupfs_runtime(cgroup: &str) -> &'static str {
    if cgroup.split('/').any(|c| c == "docker") {
        "docker"
    } else {
        "containerd"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8b1c2d5a6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
    const UID: &str = "5e8c9b2a-1d3f-4a6b-8c7d-9e0f1a2b3c4d";
    const UID_: &str = "5e8c9b2a_1d3f_4a6b_8c7d_9e0f1a2b3c4d";

    fn both(pod: &str, id: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: Some(pod.to_string()),
            container_id: Some(id.to_string()),
        })
    }

    /// Each of `paths` names the pod `UID` and the container `ID` of `runtime`.
    fn in_pod(runtime: &str, paths: &[String]) {
        let want = both(UID, &format!("{runtime}://{ID}"));
        for p in paths {
            assert_eq!(parse_container(p), want, "{p}");
        }
    }

    /// The pod `UID` itself, no container in it.
    fn pod_only() -> Option<ContainerRef> {
        Some(ContainerRef {
            pod_uid: Some(UID.into()),
            container_id: None,
        })
    }

    #[test]
    fn systemd_containerd_all_qos_classes() {
        let mut paths: Vec<String> = ["burstable", "besteffort"]
            .iter()
            .map(|qos| {
                format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_}.slice/cri-containerd-{ID}.scope"
                )
            })
            .collect();
        // Guaranteed pods sit directly under kubepods.slice.
        paths.push(format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
        ));
        in_pod("containerd", &paths);
    }

    #[test]
    fn systemd_crio_and_docker() {
        in_pod(
            "cri-o",
            &[format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
            )],
        );
        in_pod(
            "docker",
            &[format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"
            )],
        );
    }

    #[test]
    fn crio_conmon_is_the_pod_not_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
        );
        assert_eq!(parse_container(&p), pod_only());
    }

    #[test]
    fn cgroupfs_driver() {
        in_pod(
            "containerd",
            &[
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                format!("/kubepods/pod{UID}/{ID}"),
            ],
        );
        // cgroup v1 hierarchy with docker as the runtime (dockershim + cgroupfs).
        in_pod(
            "docker",
            &[format!("/docker/kubepods/burstable/pod{UID}/{ID}")],
        );
        // The pod's own cgroup (the pause process under cgroupfs sits in a container dir; a
        // process directly in the pod dir has no container).
        let p = format!("/kubepods/burstable/pod{UID}");
        assert_eq!(parse_container(&p), pod_only());
    }

    #[test]
    fn static_pod_uid_is_a_hash() {
        let hash = "6c3c7c6b8e2e4f1d9a0b1c2d3e4f5a6b";
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse_container(&p),
            both(hash, &format!("containerd://{ID}"))
        );
    }

    #[test]
    fn plain_docker_and_podman() {
        let want = Some(ContainerRef {
            pod_uid: None,
            container_id: Some(format!("docker://{ID}")),
        });
        assert_eq!(
            parse_container(&format!("/system.slice/docker-{ID}.scope")),
            want
        );
        assert_eq!(parse_container(&format!("/docker/{ID}")), want);
        let want = Some(ContainerRef {
            pod_uid: None,
            container_id: Some(format!("podman://{ID}")),
        });
        assert_eq!(
            parse_container(&format!("/machine.slice/libpod-{ID}.scope")),
            want
        );
        assert_eq!(
            parse_container(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            want
        );
        assert_eq!(
            parse_container(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn kind_nested_kubelet_and_inner_cgroups() {
        in_pod(
            "containerd",
            &[
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                // systemd running inside the container: the process sits in a sub-cgroup.
                format!(
                    "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope/system.slice/nginx.service"
                ),
            ],
        );
    }

    #[test]
    fn relative_to_a_private_cgroup_namespace() {
        // lqtrace itself in a pod (cgroupns private) reading other pods' processes.
        in_pod(
            "containerd",
            &[
                format!(
                    "/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                format!("/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                format!("/../../besteffort/pod{UID}/{ID}"),
            ],
        );
        // A host service seen from the pod: nothing.
        assert_eq!(
            parse_container("/../../../../system.slice/nginx.service"),
            None
        );
        assert_eq!(parse_container(&format!("/../{ID}")), None);
    }

    #[test]
    fn host_processes_and_junk() {
        for p in [
            "",
            "/",
            "/init.scope",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/containerd.service",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            // Not a pod UID / not a container ID.
            "/kubepods.slice/kubepods-podnotauid.slice/cri-containerd-xyz.scope",
            "/system.slice/docker-abc.scope",
            "/docker/notanid",
            // A pod-looking name outside any kubepods hierarchy.
            "/system.slice/pod5e8c9b2a-1d3f-4a6b-8c7d-9e0f1a2b3c4d",
        ] {
            assert_eq!(parse_container(p), None, "{p:?}");
        }
    }
}
