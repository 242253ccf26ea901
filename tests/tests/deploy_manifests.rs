//! The deployment files in `deploy/`: the systemd unit and the Kubernetes
//! manifests. They are checked against their schemas (kubernetes-validate's
//! bundled Kubernetes schemas; the Prometheus Operator's CRD schemas vendored
//! in `deploy/kubernetes/schemas`), with `systemd-analyze`, against each
//! other, and by running the real binary (as root, like the end-to-end
//! tests) with exactly the privileges they grant.
//!
//! `cargo xtask setup` provides the tools: a Python virtual environment in
//! `target/deploy-venv` with kubernetes-validate (or `$GEOIP_DEPLOY_PYTHON`),
//! and the Debian packages systemd (`systemd-analyze`), util-linux
//! (`setpriv`) and python3-seccomp.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use bcrypt as _;
use geoip_tests::exporter::{
    bin, free_port, run_command_to_exit, setpriv, temp_dir, world_readable,
};
use geoip_user as _;
use libc as _;
use maxminddb as _;
use serde as _;
use serde_json::Value;

/// Kubernetes versions the built-in objects are validated against: the
/// oldest and the newest that kubernetes-validate 1.37.0 bundles.
const KUBERNETES_VERSIONS: &str = "1.25.0,1.37.0";

/// The manifests, each with the objects it holds (`Kind/name`).
const MANIFESTS: &[(&str, &str)] = &[
    ("daemonset.yaml", "DaemonSet/geoip-exporter"),
    ("service.yaml", "Service/geoip-exporter"),
    ("servicemonitor.yaml", "ServiceMonitor/geoip-exporter"),
    ("podmonitor.yaml", "PodMonitor/geoip-exporter"),
];

/// What the systemd unit grants, and why (see its comments).
const UNIT_CAPABILITIES: &[&str] = &["CAP_BPF", "CAP_DAC_READ_SEARCH", "CAP_PERFMON"];

/// What the `DaemonSet`'s container adds (it runs as uid 0, which owns
/// tracefs).
const POD_CAPABILITIES: &[&str] = &["BPF", "PERFMON"];

/// The job the monitors give the targets: the one of the static scrape
/// config in `deploy/prometheus`, which its alert rules select.
const JOB: &str = "geoip";

/// Debian's Python, where python3-seccomp is installed.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// YAML to JSON, and schema validation, in the virtual environment.
const CHECK_PY: &str = r##"
import json, sys
import jsonschema, yaml
from kubernetes_validate import utils
from referencing import Registry, Resource

def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

def strict(schema):
    # The API server drops a custom resource's unknown fields without a
    # word; here they are errors, so that a misspelt field is caught.
    if isinstance(schema, dict):
        schema = {k: ({n: strict(s) for n, s in v.items()} if k == "properties" else strict(v))
                  for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(s) for s in schema]
    return schema

def object_meta(version):
    definitions = utils.schema_contents(
        "kubernetes-json-schema/v%s-local-strict/_definitions.json" % version, version)
    registry = Resource.from_contents(definitions) @ Registry()
    ref = definitions["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    return jsonschema.Draft202012Validator({"$ref": ref}, registry=registry)

def validate(schemas, versions, paths):
    failed = 0
    meta = object_meta(versions[-1])
    for path in paths:
        for doc in docs(path):
            what = "%s %s/%s" % (path, doc.get("kind"), (doc.get("metadata") or {}).get("name"))
            group, _, api = str(doc.get("apiVersion", "")).rpartition("/")
            if group == "monitoring.coreos.com":
                name = "%s/%s-monitoring-%s.json" % (schemas, str(doc.get("kind")).lower(), api)
                try:
                    with open(name) as f:
                        schema = strict(json.load(f))
                except FileNotFoundError:
                    print("INVALID %s: no schema %s" % (what, name))
                    failed += 1
                    continue
                errors = [("", e) for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
                errors += [("metadata/", e) for e in meta.iter_errors(doc.get("metadata", {}))]
                for prefix, e in errors:
                    print("INVALID %s: %s%s: %s" % (what, prefix, "/".join(map(str, e.absolute_path)), e.message))
                failed += len(errors)
                if not errors:
                    print("VALID %s against the CRD" % what)
                continue
            for version in versions:
                try:
                    utils.validate(doc, version, strict=True)
                    print("VALID %s against %s" % (what, version))
                except utils.ValidationError as e:
                    print("INVALID %s against %s: %s: %s" % (what, version, "/".join(map(str, e.path)), e.message))
                    failed += 1
                except utils.SchemaNotFoundError as e:
                    print("INVALID %s: %s" % (what, e.message))
                    failed += 1
    return 1 if failed else 0

if sys.argv[1] == "json":
    print(json.dumps(docs(sys.argv[2])))
else:
    sys.exit(validate(sys.argv[2], sys.argv[3].split(","), sys.argv[4:]))
"##;

/// Runs a program (`argv[3:]`) under the systemd unit's system call filter,
/// socket family restriction and `MemoryDenyWriteExecute=`, as systemd would
/// (it is not PID 1 here). `argv[1]`: the unit's `SystemCallFilter=` lines,
/// one per line, in order; `argv[2]`: its `RestrictAddressFamilies=` words.
const SANDBOX_PY: &str = r##"
import ctypes, errno, os, socket, subprocess, sys
import seccomp

groups, current = {}, None
for line in subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                           text=True, check=True).stdout.splitlines():
    word = line.strip()
    if not word or word.startswith("#"):
        continue
    if not line.startswith(" "):
        current = word if word.startswith("@") else None
        if current:
            groups[current] = []
    elif current:
        groups[current].append(word)

def expand(word):
    if not word.startswith("@"):
        return {word}
    if word not in groups:
        sys.exit("unknown syscall group " + word)
    return set().union(*(expand(w) for w in groups[word]))

allowed = None
for line in sys.argv[1].splitlines():
    deny = line.startswith("~")
    names = set().union(*(expand(w) for w in line.lstrip("~").split()))
    if allowed is None:
        if deny:
            sys.exit("the first SystemCallFilter= line must be an allow-list")
        allowed = names
    elif deny:
        allowed -= names
    else:
        allowed |= names

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))

f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in sorted(allowed - {"socket"}):
    try:
        f.add_rule(seccomp.ALLOW, name)
    except Exception:
        pass  # not a system call of this architecture or libseccomp
if "socket" in allowed:
    families = [getattr(socket, w) for w in sys.argv[2].split()]
    for family in families:
        f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    for family in range(0, 64):
        if family not in families:
            f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
f.load()
os.execv(sys.argv[3], sys.argv[3:])
"##;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubernetes_dir() -> PathBuf {
    workspace().join("deploy/kubernetes")
}

fn unit_path() -> PathBuf {
    workspace().join("deploy/systemd/geoip-exporter.service")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The virtual environment's Python, with kubernetes-validate.
fn venv_python() -> PathBuf {
    let python = std::env::var_os("GEOIP_DEPLOY_PYTHON").map_or_else(
        || workspace().join("target/deploy-venv/bin/python3"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} not found: `cargo xtask setup` creates target/deploy-venv with kubernetes-validate \
         (or set GEOIP_DEPLOY_PYTHON to a Python that has it)",
        python.display()
    );
    python
}

/// `check.py validate` on `files`: its output, and whether it passed.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = run_command_to_exit(
        Command::new(venv_python())
            .args(["-c", CHECK_PY, "validate"])
            .arg(kubernetes_dir().join("schemas"))
            .arg(KUBERNETES_VERSIONS)
            .args(files),
    );
    (out.status.success(), text(&out))
}

/// The YAML documents of `path`, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = run_command_to_exit(
        Command::new(venv_python())
            .args(["-c", CHECK_PY, "json"])
            .arg(path),
    );
    assert!(out.status.success(), "{}: {}", path.display(), text(&out));
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("{}: not a list of documents: {other:?}", path.display()),
    }
}

fn manifest(name: &str) -> Value {
    let mut docs = yaml_docs(&kubernetes_dir().join(name));
    assert_eq!(docs.len(), 1, "{name}: one object expected");
    docs.remove(0)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or_else(|| panic!("no list at {pointer} in {value}"), Vec::as_slice)
}

fn strings(values: &[Value]) -> BTreeSet<String> {
    values
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The `DaemonSet`'s one container.
fn container(daemonset: &Value) -> &Value {
    let containers = array_at(daemonset, "/spec/template/spec/containers");
    assert_eq!(containers.len(), 1, "one container expected");
    &containers[0]
}

/// The value of `--name=value` in the container's arguments.
fn arg<'a>(container: &'a Value, name: &str) -> &'a str {
    array_at(container, "/args")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in the container's args"))
}

/// The `job` label a monitor endpoint's relabelings set.
fn job(endpoint: &Value) -> &str {
    array_at(endpoint, "/relabelings")
        .iter()
        .find(|r| r["targetLabel"] == "job")
        .map_or_else(
            || panic!("no job relabeling in {endpoint}"),
            |r| str_at(r, "/replacement"),
        )
}

/// Every value of `key=` in the unit's `[Service]` section, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            values.push(v.trim().to_owned());
        }
    }
    values
}

/// The one value of `key=` in the unit.
fn unit_value(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "{key}= once expected, found {values:?}");
    values[0].clone()
}

fn words(value: &str) -> BTreeSet<String> {
    value.split_whitespace().map(str::to_owned).collect()
}

/// `geoip-exporter --check` with the test database on a free loopback port.
fn check_args(cmd: &mut Command, exe: &Path, db: &Path) {
    cmd.arg(exe)
        .arg("--geoip.database")
        .arg(db)
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .arg("--check");
}

fn passed_check(out: &Output) -> bool {
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("check passed: "))
}

/// `CAP_BPF` -> `bpf`, as setpriv spells it.
fn setpriv_name(cap: &str) -> String {
    cap.trim_start_matches("CAP_").to_lowercase()
}

#[test]
fn kubernetes_manifests_match_their_schemas() {
    let files: Vec<PathBuf> = MANIFESTS
        .iter()
        .map(|(f, _)| kubernetes_dir().join(f))
        .collect();
    let (ok, out) = validate(&files);
    assert!(ok, "validation failed:\n{out}");
    for (file, object) in MANIFESTS {
        let valid = out
            .lines()
            .filter(|l| l.starts_with("VALID") && l.contains(file) && l.contains(object))
            .count();
        let want = if object.contains("Monitor/") {
            1
        } else {
            KUBERNETES_VERSIONS.split(',').count()
        };
        assert_eq!(valid, want, "{file}: {object} not validated:\n{out}");
    }
}

#[test]
fn the_validator_rejects_misspelt_fields() {
    let dir = temp_dir("deploy-misspelt");
    let cases = [
        ("daemonset.yaml", "hostNetwork: true", "hostNetwrk: true"),
        ("service.yaml", "clusterIP: None", "clusterIp: None"),
        ("servicemonitor.yaml", "scrapeTimeout:", "scrapeTimout:"),
        (
            "podmonitor.yaml",
            "podMetricsEndpoints:",
            "podMetricEndpoints:",
        ),
        ("podmonitor.yaml", "  labels:", "  lables:"),
    ];
    for (file, right, wrong) in cases {
        let original = read(&kubernetes_dir().join(file));
        assert!(original.contains(right), "{file} has no {right:?}");
        let broken = dir.join(file);
        fs::write(&broken, original.replacen(right, wrong, 1)).expect("write");
        let (ok, out) = validate(&[broken]);
        let field = wrong.split(':').next().unwrap_or(wrong).trim();
        assert!(
            !ok && out.contains("INVALID") && out.contains(field),
            "{file} with {wrong:?} passed:\n{out}"
        );
    }
}

#[test]
fn kustomization_applies_the_manifests_in_one_namespace() {
    let kustomization = manifest("kustomization.yaml");
    let namespace = str_at(&kustomization, "/namespace");
    let resources = strings(array_at(&kustomization, "/resources"));
    let want: BTreeSet<String> = ["daemonset.yaml", "service.yaml", "servicemonitor.yaml"]
        .map(str::to_owned)
        .into();
    assert_eq!(resources, want, "kustomization resources");
    // podmonitor.yaml is the documented alternative to the Service and
    // ServiceMonitor, so it is named in the file (commented out).
    assert!(read(&kubernetes_dir().join("kustomization.yaml")).contains("podmonitor.yaml"));
    for (file, _) in MANIFESTS {
        let object = manifest(file);
        assert_eq!(
            str_at(&object, "/metadata/namespace"),
            namespace,
            "{file}: namespace"
        );
    }
    let image = str_at(container(&manifest("daemonset.yaml")), "/image").to_owned();
    let images = array_at(&kustomization, "/images");
    assert_eq!(images.len(), 1);
    assert_eq!(
        format!(
            "{}:{}",
            str_at(&images[0], "/name"),
            str_at(&images[0], "/newTag")
        ),
        image,
        "kustomization images: the DaemonSet's image"
    );

    // kubectl (with kustomize built in) comes with this project's machines,
    // not from a package registry that setup could install it from.
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!("kubectl not on PATH: the kustomize rendering is not checked");
        return;
    }
    let out = run_command_to_exit(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(kubernetes_dir()),
    );
    assert!(out.status.success(), "kubectl kustomize: {}", text(&out));
    let rendered = temp_dir("deploy-kustomize").join("rendered.yaml");
    fs::write(&rendered, &out.stdout).expect("write");
    let (ok, report) = validate(std::slice::from_ref(&rendered));
    assert!(ok, "rendered kustomization:\n{report}");
    for object in [
        "DaemonSet/geoip-exporter",
        "Service/geoip-exporter",
        "ServiceMonitor/geoip-exporter",
    ] {
        assert!(report.contains(object), "{object} not rendered:\n{report}");
    }
}

#[test]
fn service_and_monitors_find_the_pods_and_their_port() {
    let daemonset = manifest("daemonset.yaml");
    let service = manifest("service.yaml");
    let pod_labels = daemonset
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .expect("pod labels");
    let matches_pods = |selector: &Value, what: &str| {
        let selector = selector.as_object().unwrap_or_else(|| panic!("{what}"));
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (k, v) in selector {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{what}: {k} does not select the pods"
            );
        }
    };
    matches_pods(&daemonset["spec"]["selector"]["matchLabels"], "DaemonSet");
    matches_pods(&service["spec"]["selector"], "Service");

    let container = container(&daemonset);
    let ports = array_at(container, "/ports");
    assert_eq!(ports.len(), 1);
    let port_name = str_at(&ports[0], "/name");
    let port = ports[0]["containerPort"].as_u64().expect("containerPort");
    let listen = arg(container, "--web.listen-address");
    assert!(
        listen.ends_with(&format!(":{port}")),
        "--web.listen-address={listen} is not the containerPort {port}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            str_at(container, &format!("/{probe}/httpGet/path")),
            "/healthz"
        );
        assert_eq!(
            str_at(container, &format!("/{probe}/httpGet/port")),
            port_name
        );
    }

    let service_ports = array_at(&service, "/spec/ports");
    assert_eq!(service_ports.len(), 1);
    assert_eq!(service_ports[0]["port"].as_u64(), Some(port));
    assert_eq!(str_at(&service_ports[0], "/targetPort"), port_name);
    assert_eq!(str_at(&service, "/spec/clusterIP"), "None");

    let service_monitor = manifest("servicemonitor.yaml");
    let service_labels = service["metadata"]["labels"]
        .as_object()
        .expect("service labels");
    for (k, v) in service_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("ServiceMonitor selector")
    {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "ServiceMonitor: {k} does not select the Service"
        );
    }
    let endpoints = array_at(&service_monitor, "/spec/endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(
        str_at(&endpoints[0], "/port"),
        str_at(&service_ports[0], "/name")
    );
    assert_eq!(str_at(&endpoints[0], "/path"), "/metrics");
    assert_eq!(job(&endpoints[0]), JOB, "ServiceMonitor job");

    let pod_monitor = manifest("podmonitor.yaml");
    matches_pods(
        &pod_monitor["spec"]["selector"]["matchLabels"],
        "PodMonitor",
    );
    let endpoints = array_at(&pod_monitor, "/spec/podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(str_at(&endpoints[0], "/port"), port_name);
    assert_eq!(str_at(&endpoints[0], "/path"), "/metrics");
    assert_eq!(job(&endpoints[0]), JOB, "PodMonitor job");

    // The job of the static scrape config in deploy/prometheus, which the
    // alert rules select.
    let prometheus = read(&workspace().join("deploy/prometheus/prometheus.yml"));
    assert!(
        prometheus.contains(&format!("job_name: {JOB}")),
        "deploy/prometheus/prometheus.yml: job {JOB}"
    );
    let rules = read(&workspace().join("deploy/prometheus/rules.yml"));
    assert!(
        rules.contains(&format!("job=\"{JOB}\"")),
        "deploy/prometheus/rules.yml: job {JOB}"
    );
}

#[test]
fn daemonset_runs_on_every_node_with_only_bpf_and_perfmon() {
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"],
        Value::Bool(true),
        "host network for the snapshot"
    );
    assert_eq!(str_at(pod, "/dnsPolicy"), "ClusterFirstWithHostNet");
    assert!(pod.get("hostPID").is_none(), "hostPID is not needed");
    assert!(
        pod.get("hostUsers").is_none(),
        "a user namespace would void the capabilities"
    );
    assert_eq!(
        str_at(&daemonset, "/spec/updateStrategy/type"),
        "RollingUpdate"
    );
    assert!(
        array_at(pod, "/tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint"
    );

    let container = container(&daemonset);
    let security = &container["securityContext"];
    assert_eq!(
        strings(array_at(security, "/capabilities/drop")),
        ["ALL".to_owned()].into()
    );
    let add = strings(array_at(security, "/capabilities/add"));
    assert_eq!(
        add,
        POD_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
    );
    assert_eq!(
        security["runAsUser"], 0,
        "root, so that the capabilities are effective"
    );
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(str_at(security, "/seccompProfile/type"), "RuntimeDefault");

    let resources = &container["resources"];
    for pointer in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
        assert!(resources.pointer(pointer).is_some(), "resources{pointer}");
    }
    assert!(
        resources.pointer("/limits/cpu").is_none(),
        "no CPU limit: throttling the reader loses events"
    );

    // tracefs and the database: read-only host paths, mounted where the
    // exporter looks.
    let volumes = array_at(pod, "/volumes");
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v.pointer("/hostPath/path"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no hostPath volume {name}"))
    };
    let mounts = array_at(container, "/volumeMounts");
    for mount in mounts {
        assert_eq!(mount["readOnly"], true, "{mount}: read-only");
    }
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(str_at(m, "/mountPath")))
            .map_or_else(
                || panic!("nothing mounted at {path}"),
                |m| str_at(m, "/name"),
            )
    };
    let tracefs = mount_of("/sys/kernel/tracing/events");
    assert_eq!(host_path(tracefs), "/sys/kernel/tracing");
    let database = arg(container, "--geoip.database");
    let db_volume = mount_of(database);
    assert!(
        host_path(db_volume).starts_with('/'),
        "the database comes from the node"
    );
}

/// `uid` with `caps` passes `--check`; without any one of them it fails.
fn assert_needs_exactly(uid: u32, caps: &[String], exe: &Path, db: &Path) {
    let mut cmd = setpriv(uid, caps);
    check_args(&mut cmd, exe, db);
    let out = run_command_to_exit(&mut cmd);
    assert!(
        passed_check(&out),
        "uid {uid} with {caps:?}: {}",
        text(&out)
    );
    for missing in caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut cmd = setpriv(uid, &fewer);
        check_args(&mut cmd, exe, db);
        let out = run_command_to_exit(&mut cmd);
        assert!(
            !passed_check(&out),
            "uid {uid} passed without {missing}: {}",
            text(&out)
        );
    }
}

#[test]
fn daemonset_privileges_are_enough_and_each_is_needed() {
    let daemonset = manifest("daemonset.yaml");
    let container = container(&daemonset);
    let uid = u32::try_from(
        container["securityContext"]["runAsUser"]
            .as_u64()
            .expect("runAsUser"),
    )
    .expect("uid");
    let caps: Vec<String> = strings(array_at(container, "/securityContext/capabilities/add"))
        .iter()
        .map(|c| c.to_lowercase())
        .collect();
    let (exe, db) = world_readable("deploy-pod-caps");

    assert_needs_exactly(uid, &caps, &exe, &db);
}

#[test]
fn unit_grants_exactly_the_documented_capabilities() {
    let unit = read(&unit_path());
    let want: BTreeSet<String> = UNIT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    assert_eq!(words(&unit_value(&unit, "CapabilityBoundingSet")), want);
    assert_eq!(words(&unit_value(&unit, "AmbientCapabilities")), want);
    for cap in UNIT_CAPABILITIES {
        assert!(
            unit.contains(&format!("# - {cap}:")),
            "the unit's comments do not say why it needs {cap}"
        );
    }
    assert_eq!(unit_value(&unit, "DynamicUser"), "yes", "not root");
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    for key in ["User", "PrivateNetwork", "PrivateUsers", "ProcSubset"] {
        assert!(unit_values(&unit, key).is_empty(), "{key}= must stay unset");
    }
    let filter = unit_values(&unit, "SystemCallFilter");
    assert_eq!(filter.first().map(String::as_str), Some("@system-service"));
    assert!(
        filter
            .last()
            .is_some_and(|l| words(l).contains("bpf") && words(l).contains("perf_event_open")),
        "bpf and perf_event_open allowed last: {filter:?}"
    );
    assert!(words(&unit_value(&unit, "RestrictAddressFamilies")).contains("AF_NETLINK"));
    let exec = unit_value(&unit, "ExecStart");
    assert_eq!(exec, "/usr/local/bin/geoip-exporter $GEOIP_EXPORTER_ARGS");
}

#[test]
fn readme_names_every_capability_the_unit_grants() {
    let readme = read(&workspace().join("README.md"));
    for cap in UNIT_CAPABILITIES {
        assert!(readme.contains(cap), "README.md does not mention {cap}");
    }
    for cap in POD_CAPABILITIES {
        assert!(readme.contains(cap), "README.md does not mention {cap}");
    }
}

#[test]
fn unit_capabilities_are_enough_and_each_is_needed() {
    let unit = read(&unit_path());
    let caps: Vec<String> = words(&unit_value(&unit, "AmbientCapabilities"))
        .iter()
        .map(|c| setpriv_name(c))
        .collect();
    let (exe, db) = world_readable("deploy-unit-caps");
    let nobody = 65_534;

    assert_needs_exactly(nobody, &caps, &exe, &db);
}

#[test]
fn unit_sandbox_lets_it_run() {
    let unit = read(&unit_path());
    assert_eq!(unit_value(&unit, "MemoryDenyWriteExecute"), "yes");
    assert_eq!(unit_value(&unit, "SystemCallErrorNumber"), "EPERM");
    let filter = unit_values(&unit, "SystemCallFilter").join("\n");
    let families = unit_value(&unit, "RestrictAddressFamilies");
    let caps: Vec<String> = words(&unit_value(&unit, "AmbientCapabilities"))
        .iter()
        .map(|c| setpriv_name(c))
        .collect();
    let (exe, db) = world_readable("deploy-unit-sandbox");

    let sandboxed = |filter: &str| {
        let mut cmd = setpriv(65_534, &caps);
        cmd.args([SYSTEM_PYTHON, "-c", SANDBOX_PY, filter, &families]);
        check_args(&mut cmd, &exe, &db);
        run_command_to_exit(&mut cmd)
    };
    let out = sandboxed(&filter);
    assert!(
        passed_check(&out),
        "under the unit's filter ({filter:?}, {families}): {} \
         (the sandbox needs python3-seccomp and systemd-analyze: cargo xtask setup)",
        text(&out)
    );
    // The emulation bites: without the last line (bpf, perf_event_open) it
    // cannot load the program.
    let without: Vec<&str> = filter.lines().collect();
    let out = sandboxed(&without[..without.len() - 1].join("\n"));
    assert!(
        !passed_check(&out) && text(&out).contains("Operation not permitted"),
        "passed without bpf and perf_event_open: {}",
        text(&out)
    );
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    // verify checks that ExecStart's program exists: point it at the build.
    let dir = temp_dir("deploy-systemd");
    let unit = read(&unit_path()).replace(
        "/usr/local/bin/geoip-exporter",
        bin().to_str().expect("utf-8 path"),
    );
    let copy = dir.join("geoip-exporter.service");
    fs::write(&copy, unit).expect("write");
    let out = run_command_to_exit(Command::new("systemd-analyze").arg("verify").arg(&copy));
    // It warns about unknown keys and bad values and still exits 0.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify (cargo xtask setup installs it): {}",
        text(&out)
    );
    // A regression guard: exposure 1.8 with systemd 252 ("OK"); failing
    // above 2.5 means a hardening option went.
    let out = run_command_to_exit(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=25"])
            .arg(&copy),
    );
    assert!(
        out.status.success(),
        "systemd-analyze security: {}",
        text(&out)
    );
}

#[test]
fn default_file_flags_are_the_exporters() {
    let default = read(&workspace().join("deploy/systemd/geoip-exporter.default"));
    let args: Vec<&str> = default
        .lines()
        .filter_map(|l| l.strip_prefix("GEOIP_EXPORTER_ARGS="))
        .collect();
    assert_eq!(args.len(), 1, "one GEOIP_EXPORTER_ARGS= line");
    let args = args[0].trim_matches('"');
    assert!(
        read(&unit_path()).contains("$GEOIP_EXPORTER_ARGS"),
        "the unit passes GEOIP_EXPORTER_ARGS"
    );
    // Flags are parsed before anything is opened: with the database swapped
    // for a missing file, that is the complaint, not an unknown flag.
    let dir = temp_dir("deploy-default");
    let missing = dir.join("missing.mmdb");
    let mut words: Vec<&str> = args.split_whitespace().collect();
    let db = words
        .iter()
        .position(|w| *w == "--geoip.database")
        .expect("--geoip.database in GEOIP_EXPORTER_ARGS")
        + 1;
    words[db] = missing.to_str().expect("utf-8 path");
    let out = run_command_to_exit(Command::new(bin()).args(&words));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing.mmdb") && !err.contains("unexpected argument"),
        "{err}"
    );
}
