"""deploy/k8s and deploy/grafana against the code: every container runs a real entry
point with files its ConfigMaps and image hold, probes and scrape annotations name the
ports the processes listen on, replicas stay within the partitions that can feed them,
and the dashboard queries only metrics the services define."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from services.common.settings import KafkaSettings
from tests.integration.deploy_files import (
    K8S_DIR,
    NO_KAFKA,
    REPO,
    TOPICS_FILE,
    argv_of,
    check_real_command,
    compose_services,
    defined_metrics,
    dockerfile_stages,
    exposed_names,
    flag,
    k8s_documents,
    python_commands,
)

KUSTOMIZATION = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
PORT_ENV = (
    "RDV_GATEWAY_PORT",
    "RDV_RENDEZVOUS_OPS_PORT",
    "RDV_ARCHIVE_OPS_PORT",
    "RDV_COMPARE_OPS_PORT",
)


def workloads() -> list[dict[str, Any]]:
    docs = []
    for resource in KUSTOMIZATION["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S_DIR / resource).read_text()) if d]
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def generated() -> dict[str, dict[str, Path]]:
    """ConfigMap name -> {key: repository file} of the kustomization's generators."""
    return {
        gen["name"]: {Path(f).name: (K8S_DIR / f).resolve() for f in gen["files"]}
        for gen in KUSTOMIZATION["configMapGenerator"]
    }


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def env_of(container: dict[str, Any], image_env: dict[str, str]) -> dict[str, str]:
    env = dict(image_env)
    env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
    return env


def image_stage(container: dict[str, Any]) -> str:
    image = str(container["image"]).split(":")[0]
    assert image in {"rendezvous/service", "rendezvous/model"}, image
    return image.split("/")[1]


def partitions(role: str) -> int:
    topics = yaml.safe_load((K8S_DIR / "topics.yaml").read_text())["topics"]
    return int(topics[role]["partitions"])


def test_the_kustomization_names_files_that_exist() -> None:
    for resource in KUSTOMIZATION["resources"]:
        assert (K8S_DIR / resource).is_file(), resource
    for name, files in generated().items():
        for path in files.values():
            assert path.is_file(), f"ConfigMap {name}: {path} does not exist"
    assert set(generated()) >= {"rdv-policies", "rdv-specs", "rdv-topics"}
    policies = {p.name for p in (REPO / "deploy" / "policies").glob("*.yaml")}
    assert set(generated()["rdv-policies"]) == policies


def test_every_container_runs_a_real_command_with_files_it_can_see() -> None:
    stages, maps = dockerfile_stages(), generated()
    for workload in workloads():
        spec = pod(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            argv = argv_of(container["command"]) + argv_of(container.get("args", []))
            invocations = python_commands(argv)
            if container in spec["containers"]:
                assert invocations, f"{workload['metadata']['name']} runs no python -m"
            for invocation in invocations:
                check_real_command(invocation)
            stage = stages[image_stage(container)]
            mounts = {
                m["mountPath"]: volumes[m["volumeName"] if "volumeName" in m else m["name"]]
                for m in container.get("volumeMounts", [])
            }
            paths = [v for v in env_of(container, {}).values() if v.startswith("/")]
            paths += [a for a in argv if a.startswith("/etc/") or a.startswith("/app/")]
            for path in paths:
                check_visible(path, mounts, maps, [dest for _, dest in stage.copies])


def check_visible(
    path: str,
    mounts: dict[str, dict[str, Any]],
    maps: dict[str, dict[str, Path]],
    copied: list[str],
) -> None:
    """``path`` is in a mounted ConfigMap (and its generator has that file), in a
    mounted volume, or copied into the image."""
    for mount, volume in mounts.items():
        if path == mount or path.startswith(mount + "/"):
            if "configMap" in volume:
                files = maps[volume["configMap"]["name"]]
                rest = path[len(mount) + 1 :]
                assert not rest or rest in files, f"{path}: no {rest} in the ConfigMap"
            return
    assert any(path == d or path.startswith(d + "/") for d in copied), f"{path} is nowhere"


def test_replicas_stay_within_the_partitions_that_feed_them() -> None:
    assert partitions("requests") == partitions("scores") == partitions("decisions")
    for workload in workloads():
        name, kind = workload["metadata"]["name"], workload["kind"]
        if kind == "Job":
            continue
        replicas = int(workload["spec"]["replicas"])
        modules = {
            a[2]
            for c in pod(workload)["containers"]
            for a in python_commands(argv_of(c["command"]))
        }
        if "services.gateway" in modules:
            assert replicas <= partitions("replies"), name
            assert kind == "StatefulSet", "each gateway needs its own reply partition (pod index)"
        elif "services.archive" in modules:
            assert replicas == 1, "one archive writer per volume"
            assert workload["spec"]["strategy"]["type"] == "Recreate"
        else:
            assert replicas <= partitions("requests"), f"{name}: idle replicas"


def test_probes_and_scrape_annotations_name_the_port_the_process_listens_on() -> None:
    stages = dockerfile_stages()
    for workload in [w for w in workloads() if w["kind"] != "Job"]:
        name = workload["metadata"]["name"]
        container = pod(workload)["containers"][0]
        argv = argv_of(container["command"])
        env = env_of(container, stages[image_stage(container)].env)
        ports = [int(env[k]) for k in PORT_ENV if k in env]
        if (ops := flag(argv, "--ops-port")) is not None:
            ports.append(int(ops))
        assert len(ports) == 1, f"{name}: one port expected, found {ports}"
        port = ports[0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        notes = workload["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert (notes["prometheus.io/port"], notes["prometheus.io/path"]) == (str(port), "/metrics")
        assert "0.0.0.0" in [v for k, v in env.items() if k.endswith("_HOST")], name
        kafka_secret = {"secretRef": {"name": "rdv-kafka"}}
        if {a[2] for a in python_commands(argv)} & NO_KAFKA:  # no credentials it needs not
            assert kafka_secret not in container.get("envFrom", []), name
        else:
            assert kafka_secret in container["envFrom"], name


def test_compare_reads_the_archive_volume_read_only_beside_the_archive() -> None:
    by_name = {w["metadata"]["name"]: w for w in workloads()}
    archive, compare = pod(by_name["archive"]), pod(by_name["compare"])
    claim = {"claimName": "rdv-archive", "readOnly": True}
    volume = next(v for v in compare["volumes"] if v.get("persistentVolumeClaim") == claim)
    (container,) = compare["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = env_of(container, {})
    assert env["RDV_COMPARE_ARCHIVE_DIR"] == mount["mountPath"]
    (writer,) = archive["containers"]
    assert env_of(writer, {})["RDV_ARCHIVE_DIR"] == mount["mountPath"]
    # a ReadWriteOnce volume: compare runs on the archive's node, which it prefers back
    (needs,) = compare["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert needs["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "archive"}
    assert needs["topologyKey"] == "kubernetes.io/hostname"
    (prefers,) = archive["affinity"]["podAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    term = prefers["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "compare"}
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_gateways_take_their_reply_partition_from_the_pod_index() -> None:
    (gateway,) = [w for w in workloads() if w["metadata"]["name"] == "gateway"]
    env = {e["name"]: e for e in pod(gateway)["containers"][0]["env"]}
    ref = env["RDV_GATEWAY_REPLY_PARTITION"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ref == "metadata.labels['apps.kubernetes.io/pod-index']"


def test_k8s_runs_the_models_compose_runs() -> None:
    in_k8s = {
        Path(flag(argv_of(c["command"]), "--model") or "").name
        for w in workloads()
        for c in pod(w)["containers"]
        if "services.workers" in c["command"]
    }
    in_compose = {
        Path(flag(argv_of(s["command"]), "--model") or "").name
        for s in compose_services().values()
        if "services.workers" in s.get("command", [])
    }
    assert in_k8s == in_compose
    assert in_k8s <= set(generated()["rdv-specs"])


def test_the_cluster_topics_are_the_local_ones_replicated() -> None:
    local = yaml.safe_load(TOPICS_FILE.read_text())
    cluster = yaml.safe_load((K8S_DIR / "topics.yaml").read_text())
    assert cluster["replication_factor"] >= 3
    assert cluster["topics"] == local["topics"]


def test_the_kafka_secret_sets_only_kafka_settings() -> None:
    fields = set(KafkaSettings.model_fields)
    secrets = [d for _, d in k8s_documents() if d.get("kind") == "Secret"]
    assert secrets
    for secret in secrets:
        for key in secret["stringData"]:
            assert key.startswith("RDV_KAFKA_"), key
            assert key.removeprefix("RDV_KAFKA_").lower() in fields, key


def test_the_dashboard_queries_only_metrics_the_services_define() -> None:
    known = exposed_names(defined_metrics())
    assert "rdv_gateway_requests_total" in known  # the grep finds the definitions
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/rendezvous.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\brdv_\w+", e)}
    assert used - known == set()
    for needed in (
        "rdv_gateway_requests_total",
        "rdv_rendezvous_decisions_total",
        "rdv_worker_predict_seconds_bucket",
        "rdv_worker_consumer_lag",
        "rdv_worker_tokens_total",
        "rdv_rendezvous_ood_checks_total",
    ):
        assert needed in used, f"the dashboard lacks {needed}"
    source = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "targets" in p}
    assert uids == {source["uid"]}
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/rendezvous.yml").read_text()
    )["providers"][0]
    mounts = [str(v).split(":")[1] for v in compose_services()["grafana"]["volumes"]]
    assert provider["options"]["path"] in mounts
