//! The references between the Kubernetes objects of deploy/kubernetes hold: every workload's
//! selector matches its pod labels, every Service selects a workload and targets a port its pods
//! have, every probe probes a container port, every mounted volume is declared, every claim and
//! ConfigMap exists, a StatefulSet's serviceName is a headless Service, every `HOST:PORT` in a
//! container's args names a Service and one of its ports, and every flag is one the role's
//! binary takes. The objects are rendered by `kubectl kustomize` where kubectl is installed (base
//! and GPU overlay); otherwise the base's resource files are read as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn kube_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The objects of one kustomization: rendered when kubectl is there, else the listed files.
fn objects(kustomization: &str) -> Option<Vec<Value>> {
    let dir = kube_dir().join(kustomization);
    if let Ok(out) = Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        assert!(out.status.success(), "kubectl kustomize {kustomization}: {}", String::from_utf8_lossy(&out.stderr));
        return Some(documents(&String::from_utf8(out.stdout).unwrap()));
    }
    if kustomization != "base" {
        eprintln!("SKIPPED {kustomization}: no kubectl to render it");
        return None;
    }
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    let mut all = Vec::new();
    for r in k["resources"].as_sequence().unwrap() {
        all.extend(documents(&std::fs::read_to_string(dir.join(r.as_str().unwrap())).unwrap()));
    }
    // The generated ConfigMap, unhashed (kustomize would add a hash to its name and its uses).
    for g in k["configMapGenerator"].as_sequence().into_iter().flatten() {
        all.push(
            serde_yaml::from_str(&format!("kind: ConfigMap\nmetadata:\n  name: {}\n", g["name"].as_str().unwrap()))
                .unwrap(),
        );
    }
    Some(all)
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
        .collect()
}

fn subset(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// The flags `binary --help` lists.
fn flags_of(binary: &str) -> BTreeSet<String> {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_dsm")).parent().unwrap().to_path_buf();
    let out = Command::new(dir.join(binary)).arg("--help").output().unwrap_or_else(|e| panic!("{binary}: {e}"));
    let help = String::from_utf8(out.stdout).unwrap();
    help.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).to_string())
        .collect()
}

fn check(kustomization: &str, objects: &[Value]) {
    let by_kind = |kind: &'static str| objects.iter().filter(move |o| o["kind"].as_str() == Some(kind));
    let services: BTreeMap<&str, &Value> = by_kind("Service").map(|s| (name(s), s)).collect();
    let claims: BTreeSet<&str> = by_kind("PersistentVolumeClaim").map(name).collect();
    let config_maps: BTreeSet<&str> = by_kind("ConfigMap").map(name).collect();
    let workloads: Vec<&Value> = by_kind("Deployment").chain(by_kind("StatefulSet")).collect();
    assert!(workloads.len() >= 5, "{kustomization}: {} workloads", workloads.len());
    let mut pod_ports: Vec<(BTreeMap<String, String>, BTreeMap<String, i64>)> = Vec::new();
    let mut flags_cache: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in &workloads {
        let (wname, spec) = (name(w), &w["spec"]);
        let at = format!("{kustomization}: {} {wname}", w["kind"].as_str().unwrap());
        let selector = labels(&spec["selector"]["matchLabels"]);
        let pod_labels = labels(&spec["template"]["metadata"]["labels"]);
        assert!(
            !selector.is_empty() && subset(&selector, &pod_labels),
            "{at}: selector {selector:?} vs labels {pod_labels:?}"
        );
        let pod = &spec["template"]["spec"];
        let mut volumes: BTreeSet<String> = BTreeSet::new();
        for v in pod["volumes"].as_sequence().into_iter().flatten() {
            volumes.insert(v["name"].as_str().unwrap().to_string());
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(claims.contains(claim), "{at}: claim {claim} is not defined");
            }
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(config_maps.contains(cm), "{at}: ConfigMap {cm} is not defined");
            }
        }
        for t in spec["volumeClaimTemplates"].as_sequence().into_iter().flatten() {
            volumes.insert(name(t).to_string());
        }
        if let Some(service) = spec["serviceName"].as_str() {
            let s = services.get(service).unwrap_or_else(|| panic!("{at}: serviceName {service} is no Service"));
            assert_eq!(s["spec"]["clusterIP"].as_str(), Some("None"), "{at}: {service} must be headless");
        }
        let annotations = labels(&spec["template"]["metadata"]["annotations"]);
        let mut ports = BTreeMap::new();
        for c in pod["containers"].as_sequence().unwrap() {
            let cname = c["name"].as_str().unwrap();
            for p in c["ports"].as_sequence().into_iter().flatten() {
                ports.insert(p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap());
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = c[probe]["grpc"]["port"].as_i64().unwrap_or_else(|| panic!("{at}/{cname}: no gRPC {probe}"));
                assert!(ports.values().any(|&p| p == port), "{at}/{cname}: {probe} on {port}, not a container port");
            }
            if let Some(p) = annotations.get("prometheus.io/port") {
                assert!(ports.values().any(|&c| c.to_string() == *p), "{at}: scrape port {p} is not a container port");
            }
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let v = m["name"].as_str().unwrap();
                assert!(volumes.contains(v), "{at}/{cname}: mounts undeclared volume {v}");
            }
            // The command line: args (or the shell line of a `sh -c`).
            let words: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .flat_map(|a| a.as_str().unwrap().split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .collect();
            let binary = words
                .iter()
                .find(|w| dsm::plan::ROLE_BINARIES.contains(&w.as_str()))
                .unwrap_or_else(|| panic!("{at}: runs no role binary: {words:?}"));
            let known = flags_cache.entry(binary.clone()).or_insert_with(|| flags_of(binary));
            for w in &words {
                let Some(flag) = w.strip_prefix("--") else { continue };
                let (flag, value) = flag.split_once('=').unwrap_or((flag, ""));
                assert!(known.contains(&format!("--{flag}")), "{at}: {binary} takes no --{flag}");
                // HOST:PORT of another object: a Service of this kustomization, on one of its ports.
                if let Some((host, port)) = value.rsplit_once(':') {
                    if host == "0.0.0.0" || !port.chars().all(|c| c.is_ascii_digit()) {
                        continue;
                    }
                    let port: i64 = port.parse().unwrap();
                    // NAME, NAME.NAMESPACE.svc, or POD.NAME.NAMESPACE.svc (a StatefulSet pod).
                    let parts: Vec<&str> = host.split('.').collect();
                    let service = if parts.len() >= 3 { parts[parts.len() - 3] } else { parts[0] };
                    let s =
                        services.get(service).unwrap_or_else(|| panic!("{at}: --{flag}={value}: no Service {service}"));
                    let has =
                        s["spec"]["ports"].as_sequence().unwrap().iter().any(|p| p["port"].as_i64() == Some(port));
                    assert!(has, "{at}: --{flag}={value}: Service {service} has no port {port}");
                }
            }
        }
        pod_ports.push((pod_labels, ports));
    }
    for (sname, s) in &services {
        let selector = labels(&s["spec"]["selector"]);
        let pods: Vec<_> = pod_ports.iter().filter(|(l, _)| subset(&selector, l)).collect();
        assert!(!pods.is_empty(), "{kustomization}: Service {sname} selects no pods ({selector:?})");
        for p in s["spec"]["ports"].as_sequence().unwrap() {
            let target = &p["targetPort"];
            for (_, ports) in &pods {
                let ok = match target.as_str() {
                    Some(n) => ports.contains_key(n),
                    None => ports.values().any(|&c| Some(c) == target.as_i64().or(p["port"].as_i64())),
                };
                assert!(ok, "{kustomization}: Service {sname} targets {target:?}, which its pods lack");
            }
        }
    }
}

#[test]
fn the_base_and_the_gpu_overlay_refer_to_what_exists() {
    let base = objects("base").unwrap();
    check("base", &base);
    if let Some(gpu) = objects("overlays/gpu") {
        check("overlays/gpu", &gpu);
        let learner = gpu.iter().find(|o| o["kind"] == "Deployment" && name(o) == "learner").unwrap();
        let limits = &learner["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["nvidia.com/gpu"].as_i64(), Some(1), "the GPU overlay gives the learner no GPU");
    }
}
