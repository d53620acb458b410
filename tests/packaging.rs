//! Packaging: the Dockerfile, docker-compose.yml and Kubernetes manifests under `deploy/`.
//!
//! No Docker engine or Kubernetes cluster runs on the build machine, so these tests check what
//! can be checked without one: every file parses; the wiring between them agrees (ports, probe
//! paths, config and secret mount paths, the non-root user); the image's build command is the
//! one `deploy/build-release.sh` runs; and the configuration the manifests deploy really starts a
//! server here, reads its secrets from a directory mounted the way Kubernetes mounts them,
//! answers `/health` and `/ready`, and serves a query to the API key the manifests configure.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_norway::Value;

use common::server::{ServerProcess, http_get};
use common::{flowengine, repo};

/// The demo API key whose SHA-256 deploy/compose.toml and deploy/k8s/configmap.yaml hold.
const DEMO_KEY: &str = "fek_compose_demo_key_change_me";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_documents(path: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key],
        })
}

fn str_of<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string in {v:?}"))
}

/// The `cargo build ...` command of a file (the Dockerfile's RUN or the build script).
fn cargo_build_command(text: &str) -> String {
    let start = text.find("cargo build").expect("a cargo build command");
    text[start..]
        .split(['&', '\n'])
        .next()
        .unwrap()
        .trim()
        .trim_end_matches('\\')
        .trim()
        .to_string()
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_health_checked() {
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, last)| last)
        .unwrap();
    assert!(
        !runtime.contains("cargo") && !runtime.contains("rust:"),
        "the runtime stage carries no toolchain"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "non-root: {user}"
    );
    assert!(runtime.contains("useradd --system --uid 10001"));
    let health = runtime
        .split("HEALTHCHECK")
        .nth(1)
        .expect("HEALTHCHECK")
        .split("\n\n")
        .next()
        .unwrap();
    assert!(health.contains("http://127.0.0.1:9090/health"), "{health}");
    assert!(runtime.contains("EXPOSE 50051 9090"));
    assert!(runtime.contains("COPY deploy/flowengine.toml /etc/flowengine/flowengine.toml"));
    assert!(runtime.contains("ENV FLOWENGINE_CONFIG=/etc/flowengine/flowengine.toml"));
    assert_eq!(
        cargo_build_command(&dockerfile),
        cargo_build_command(&read("deploy/build-release.sh")),
        "the image builds the binary the way deploy/build-release.sh does"
    );
    // Paths the runtime stage copies exist in the build context and are not ignored.
    let ignored = read(".dockerignore");
    for copied in ["deploy/flowengine.toml", "sql-examples"] {
        assert!(repo(copied).exists(), "{copied}");
        assert!(!ignored.lines().any(|l| l.trim() == copied), "{copied}");
    }
}

/// `flowengine config check` accepts a configuration file.
fn config_checks(toml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowengine.toml");
    std::fs::write(&path, toml).unwrap();
    let out = common::flowengine()
        .args(["--config"])
        .arg(&path)
        .args(["config", "check"])
        .env_remove("FLOWENGINE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config check failed for:\n{toml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_file_wires_the_server_to_its_config_and_postgres() {
    let compose = &yaml_documents("deploy/docker-compose.yml")[0];
    let fe = get(compose, "services.flowengine");
    let image = get(compose, "services.flowengine-image");
    assert_eq!(str_of(image, "build.dockerfile"), "Dockerfile");
    assert_eq!(str_of(image, "image"), str_of(fe, "image"));
    assert!(repo("Dockerfile").exists());
    let config_path = str_of(fe, "environment.FLOWENGINE_CONFIG");
    let mounts: Vec<&str> = get(fe, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_mount = mounts
        .iter()
        .find(|m| m.split(':').nth(1) == Some(config_path))
        .unwrap_or_else(|| panic!("{config_path} is not mounted: {mounts:?}"));
    let source = config_mount.split(':').next().unwrap();
    let toml = std::fs::read_to_string(repo("deploy").join(source)).unwrap();
    config_checks(&toml);
    assert!(
        toml.contains("@postgres:5432/") && get(compose, "services.postgres").is_mapping(),
        "the state store is the compose postgres service"
    );
    assert!(toml.contains("${secret:PG_PASSWORD}"));
    assert!(get(fe, "environment.FLOWENGINE_SECRET_PG_PASSWORD").is_string());
    let ports: BTreeSet<&str> = get(fe, "ports")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ports, BTreeSet::from(["50051:50051", "9090:9090"]));
    let probe = get(fe, "healthcheck.test")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(probe.contains("127.0.0.1:9090/ready"), "{probe}");
    assert_eq!(
        str_of(fe, "depends_on.postgres.condition"),
        "service_healthy"
    );
    assert!(get(compose, "services.postgres.healthcheck.test").is_sequence());

    // The cluster: a scheduler and executors from the same image, the server pointed at it.
    let args = |service: &str| -> Vec<String> {
        get(compose, &format!("services.{service}.command"))
            .as_sequence()
            .unwrap_or_else(|| panic!("{service} has no command"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let scheduler = args("scheduler");
    assert_eq!(scheduler[0], "scheduler");
    let bind = &scheduler[scheduler.iter().position(|a| a == "--bind").unwrap() + 1];
    let port = bind.rsplit(':').next().unwrap();
    assert_eq!(
        str_of(fe, "environment.FLOWENGINE_CLUSTER"),
        format!("df://scheduler:{port}")
    );
    for executor in ["executor-1", "executor-2"] {
        let a = args(executor);
        assert_eq!(a[0], "executor");
        let at = |flag: &str| &a[a.iter().position(|x| x == flag).unwrap() + 1];
        assert_eq!(at("--scheduler"), &format!("scheduler:{port}"));
        assert_eq!(
            at("--external-host"),
            executor,
            "shuffle peers reach it by name"
        );
        assert_eq!(
            str_of(get(compose, &format!("services.{executor}")), "image"),
            str_of(fe, "image")
        );
    }
    // Every subcommand the compose file runs exists.
    for service in ["scheduler", "executor-1"] {
        let out = common::flowengine()
            .arg(&args(service)[0])
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{service}");
    }
}

/// Every manifest of deploy/k8s, by kind.
fn manifests() -> Vec<Value> {
    let kustomization = &yaml_documents("deploy/k8s/kustomization.yaml")[0];
    let listed: Vec<&str> = get(kustomization, "resources")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        on_disk,
        "kustomization.yaml lists every manifest"
    );
    let docs: Vec<Value> = listed
        .iter()
        .flat_map(|f| yaml_documents(&format!("deploy/k8s/{f}")))
        .collect();
    for d in &docs {
        assert!(get(d, "apiVersion").is_string() && get(d, "kind").is_string());
        assert!(get(d, "metadata.name").is_string());
    }
    docs
}

/// A ConfigMap's `data` entry (its keys contain dots, so [`get`] cannot name them).
fn config_data<'a>(config: &'a Value, key: &str) -> &'a str {
    get(config, "data")[key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap data `{key}`"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| str_of(d, "kind") == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kubernetes_manifests_probe_limit_and_mount_what_the_server_reads() {
    let docs = manifests();
    let deployment = of_kind(&docs, "Deployment");
    let pod = get(deployment, "spec.template.spec");
    assert_eq!(
        get(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    assert_eq!(get(pod, "securityContext.runAsUser").as_u64(), Some(10001));
    let container = get(pod, "containers.0");
    let ports: Vec<(&str, u64)> = get(container, "ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (str_of(p, "name"), get(p, "containerPort").as_u64().unwrap()))
        .collect();
    assert!(ports.contains(&("flight-sql", 50051)) && ports.contains(&("admin", 9090)));
    assert_eq!(str_of(container, "livenessProbe.httpGet.path"), "/health");
    assert_eq!(str_of(container, "readinessProbe.httpGet.path"), "/ready");
    assert_eq!(str_of(container, "livenessProbe.httpGet.port"), "admin");
    assert_eq!(str_of(container, "readinessProbe.httpGet.port"), "admin");
    for kind in ["requests", "limits"] {
        assert!(get(container, &format!("resources.{kind}.cpu")).is_string());
        assert!(get(container, &format!("resources.{kind}.memory")).is_string());
    }
    // Configuration and secrets are mounted where the server looks for them.
    let config = of_kind(&docs, "ConfigMap");
    let toml = config_data(config, "flowengine.toml");
    let mounts: Vec<&str> = get(container, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| str_of(m, "mountPath"))
        .collect();
    let env_config = get(container, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| str_of(e, "name") == "FLOWENGINE_CONFIG")
        .map(|e| str_of(e, "value"))
        .expect("FLOWENGINE_CONFIG");
    assert!(mounts.contains(&env_config), "{mounts:?}");
    let secrets_dir = toml
        .lines()
        .find_map(|l| l.strip_prefix("secrets_file = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("secrets_file in the ConfigMap");
    assert!(mounts.contains(&secrets_dir), "{mounts:?}");
    let secret_volume = get(pod, "volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| get(v, "secret").is_mapping())
        .expect("a secret volume");
    // Group-readable for the fsGroup, never world-readable (the server refuses that).
    assert_eq!(
        get(secret_volume, "secret.defaultMode")
            .as_u64()
            .map(|m| m & 0o7),
        Some(0)
    );
    let secret = of_kind(&docs, "Secret");
    assert_eq!(
        str_of(secret_volume, "secret.secretName"),
        str_of(secret, "metadata.name")
    );
    assert!(get(secret, "stringData.PG_PASSWORD").is_string());
    assert!(toml.contains("${secret:PG_PASSWORD}"));
    // The Service routes to the named ports and keeps a client on one pod (tickets are per process).
    let service = of_kind(&docs, "Service");
    assert_eq!(str_of(service, "spec.sessionAffinity"), "ClientIP");
    let targets: BTreeSet<&str> = get(service, "spec.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| str_of(p, "targetPort"))
        .collect();
    assert_eq!(targets, BTreeSet::from(["admin", "flight-sql"]));
    config_checks(toml);
}

/// The scheduler and executors of deploy/k8s/cluster.yaml: wired to each other, probed on their
/// ports, limited, non-root, with the server's configuration and secrets mounted, and started
/// with options the binary accepts.
#[test]
fn kubernetes_cluster_manifests_wire_scheduler_and_executors() {
    let docs = manifests();
    let named = |kind: &str, name: &str| -> &Value {
        docs.iter()
            .find(|d| str_of(d, "kind") == kind && str_of(d, "metadata.name") == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let service = named("Service", "flowengine-scheduler");
    let scheduler = named("Deployment", "flowengine-scheduler");
    let executor = named("Deployment", "flowengine-executor");
    assert_eq!(get(scheduler, "spec.replicas").as_u64(), Some(1));
    assert_eq!(
        get(service, "spec.selector"),
        get(scheduler, "spec.template.metadata.labels")
    );
    let service_port = get(service, "spec.ports.0.port").as_u64().unwrap();
    let config = of_kind(&docs, "ConfigMap");
    let secret = of_kind(&docs, "Secret");
    for (deployment, command) in [(scheduler, "scheduler"), (executor, "executor")] {
        let pod = get(deployment, "spec.template.spec");
        assert_eq!(
            get(pod, "securityContext.runAsNonRoot").as_bool(),
            Some(true)
        );
        let container = get(pod, "containers.0");
        let args: Vec<&str> = get(container, "args")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], command);
        // Every option is one the binary takes (`flowengine scheduler|executor --help`).
        let help = flowengine().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag),
                "`flowengine {command}` has no {flag}:\n{help}"
            );
        }
        let ports: Vec<&str> = get(container, "ports")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| str_of(p, "name"))
            .collect();
        for probe in ["livenessProbe", "readinessProbe"] {
            let port = str_of(container, &format!("{probe}.tcpSocket.port"));
            assert!(ports.contains(&port), "{command} {probe} on {port}");
        }
        for kind in ["requests", "limits"] {
            assert!(get(container, &format!("resources.{kind}.memory")).is_string());
        }
        let mounts: Vec<&str> = get(container, "volumeMounts")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| str_of(m, "mountPath"))
            .collect();
        assert!(mounts.contains(&"/etc/flowengine/flowengine.toml"));
        assert!(mounts.contains(&"/etc/flowengine/secrets"));
        let volumes = get(pod, "volumes").as_sequence().unwrap();
        assert!(volumes.iter().any(|v| get(v, "configMap.name").as_str()
            == Some(str_of(config, "metadata.name"))));
        assert!(
            volumes
                .iter()
                .any(|v| get(v, "secret.secretName").as_str()
                    == Some(str_of(secret, "metadata.name")))
        );
    }
    // Executors find the scheduler through its Service, and advertise their pod IP.
    let args = get(executor, "spec.template.spec.containers.0.args")
        .as_sequence()
        .unwrap();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a.as_str() == Some(flag))
            .and_then(|i| args[i + 1].as_str())
            .unwrap_or_else(|| panic!("executor {flag}"))
    };
    assert_eq!(
        after("--scheduler"),
        format!("{}:{service_port}", str_of(service, "metadata.name"))
    );
    assert_eq!(after("--external-host"), "$(POD_IP)");
}

/// The configuration the Kubernetes manifests deploy, with its paths moved into `dir` and its
/// state store pointed at this machine's PostgreSQL; secrets mounted as Kubernetes does.
fn deployed_config(dir: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt;
    let docs = manifests();
    let config = of_kind(&docs, "ConfigMap");
    let secrets = dir.join("secrets");
    let data = secrets.join("..data");
    std::fs::create_dir_all(&data).unwrap();
    let value = data.join("PG_PASSWORD");
    std::fs::write(&value, "unused-with-trust-auth\n").unwrap();
    std::fs::set_permissions(&value, std::fs::Permissions::from_mode(0o440)).unwrap();
    std::os::unix::fs::symlink(&value, secrets.join("PG_PASSWORD")).unwrap();
    let toml = config_data(config, "flowengine.toml")
        .replace("/etc/flowengine/secrets", &secrets.display().to_string())
        .replace("/var/lib/flowengine", &dir.display().to_string())
        .replace(
            "postgres.flowengine.svc:5432/flowengine",
            "127.0.0.1:5432/test",
        )
        .replace("postgresql://flowengine:", "postgresql://postgres:");
    let catalog = config_data(config, "catalog.sql").to_string();
    (toml, catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_configuration_serves_probes_and_its_api_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("spill")).unwrap();
    let (toml, catalog) = deployed_config(dir.path());
    let catalog_path = dir.path().join("catalog.sql");
    std::fs::write(&catalog_path, catalog).unwrap();
    let server = ServerProcess::start(&[catalog_path.as_path()], &toml);
    assert_eq!(http_get(server.admin, "/health").0, 200);
    assert_eq!(http_get(server.admin, "/ready").0, 200);

    let mut client = common::flight::client(&server).await;
    let denied = common::flight::query(&mut client, "SELECT ok FROM health_check").await;
    assert_eq!(
        denied.unwrap_err().code(),
        tonic::Code::Unauthenticated,
        "no credentials, no query"
    );
    client.set_token(DEMO_KEY.to_string());
    let batches = common::flight::query(&mut client, "SELECT ok FROM health_check")
        .await
        .unwrap();
    assert_eq!(common::flight::rows(&batches), 1);
    // The audit writer flushes on its own thread after each burst: wait for the query's record.
    let read_audit = || std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    common::queues::wait_for(10, "the query's audit record", || {
        read_audit().contains("\"operator\"")
    })
    .await;
    let audit = read_audit();
    assert!(audit.contains("\"operator\""), "{audit}");
    assert!(!audit.contains(DEMO_KEY));
}

/// Every `flowengine <command> [<subcommand>]` the runbook names is a real command.
#[test]
fn the_runbook_names_only_real_commands() {
    let text = read("docs/operations.md");
    let mut commands = BTreeSet::new();
    for (i, _) in text.match_indices("flowengine ") {
        // `kubectl -n flowengine ...`, `deploy/flowengine`: not our command line.
        let before = &text[..i];
        if before.ends_with("-n ") || before.ends_with('/') || before.ends_with('-') {
            continue;
        }
        let words: Vec<&str> = text[i + "flowengine ".len()..]
            .split_whitespace()
            .take(2)
            .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
            .collect();
        let Some(first) = words.first() else { continue };
        if first.is_empty() || !first.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        // Two-level commands: `config print`, `user new-api-key`.
        let command = match (*first, words.get(1)) {
            ("config" | "user", Some(sub))
                if sub.chars().all(|c| c.is_ascii_lowercase() || c == '-') =>
            {
                vec![first.to_string(), sub.to_string()]
            }
            _ => vec![first.to_string()],
        };
        commands.insert(command);
    }
    for must in [["run"], ["serve"], ["scheduler"], ["executor"]] {
        assert!(
            commands.contains(must.map(String::from).as_slice()),
            "{must:?} in {commands:?}"
        );
    }
    for command in &commands {
        let out = common::flowengine()
            .args(command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docs/operations.md names `flowengine {}`, which is not a command: {}",
            command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
