"""Every model worker scales on its own consumer group's lag on the requests topic, in
both builds (KEDA's ScaledObjects in deploy/k8s, HPAs on prometheus-adapter's metric in
deploy/k8s-hpa), within the partitions that can feed it. What a worker really reads is
computed by the project's own code from the files its pod gets (the built ConfigMaps)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.settings import KafkaSettings
from services.common.spec import ModelSpec, load_spec_file
from services.common.topics import Topics, load_topics
from services.workers.__main__ import build_parser
from services.workers.service import OFF_ANSWER_PATH
from services.workers.settings import WorkerSettings
from tests.unit.deploy.manifests import (
    HPA_DIR,
    K8S_DIR,
    REPO,
    Obj,
    kafka_scaler_parameters,
    objects,
)

ADAPTER_VALUES = HPA_DIR / "prometheus-adapter.yaml"
STRIMZI_SASL = {
    "scram-sha-512": "scram_sha512",
    "scram-sha-256": "scram_sha256",
    "plain": "plaintext",
}
"""Strimzi's listener authentication types as KEDA's kafka scaler names the mechanism."""
ADAPTER_RULE_FIELDS = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
"""The fields of a prometheus-adapter discovery rule (pkg/config/config.go, v0.12)."""


def env_name(settings: type[KafkaSettings | WorkerSettings], field: str) -> str:
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()


@dataclass(frozen=True)
class Worker:
    """A worker Deployment as its pod sees it."""

    deployment: Obj
    spec: ModelSpec
    topics: Topics
    offset_reset: str

    @property
    def group(self) -> str:
        return self.topics.prefix + self.spec.group_id

    @property
    def container(self) -> Obj:
        container = self.deployment["spec"]["template"]["spec"]["containers"][0]
        assert isinstance(container, dict)
        return container


def mounted_file(pod: Obj, container: Obj, built: list[Obj], path: str, into: Path) -> Path:
    """``path`` as the container sees it, from the built ConfigMap mounted there."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"] + "/"):
            name = volumes[mount["name"]]["configMap"]["name"]
            (config,) = [
                o for o in built if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
            ]
            local = into / str(name) / Path(path).name
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(config["data"][Path(path).name])
            return local
    raise AssertionError(f"{path} is in no ConfigMap mounted into {container['name']}")


def workers(built: list[Obj], into: Path) -> dict[str, Worker]:
    """Deployment name -> Worker, for every Deployment running ``python -m services.workers``."""
    found = {}
    for deployment in (o for o in built if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        argv = container["command"] + container.get("args", [])
        if argv[:3] != ["python", "-m", "services.workers"]:
            continue
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        (model,) = build_parser().parse_args(argv[3:]).model  # one model per Deployment
        spec = load_spec_file(mounted_file(pod, container, built, model, into))
        topics_path = env[env_name(WorkerSettings, "topics_file")]
        prefix = env.get(
            env_name(KafkaSettings, "topic_prefix"),
            KafkaSettings.model_fields["topic_prefix"].default,
        )
        topics = load_topics(mounted_file(pod, container, built, topics_path, into), prefix)
        reset = env.get(
            env_name(WorkerSettings, "auto_offset_reset"),
            WorkerSettings.model_fields["auto_offset_reset"].default,
        )
        found[deployment["metadata"]["name"]] = Worker(deployment, spec, topics, reset)
    return found


@dataclass(frozen=True)
class Scaling:
    """What an autoscaler (a ScaledObject or an HPA) does to one Deployment."""

    minimum: int
    maximum: int
    group: str
    topic: str
    lag_per_replica: int
    behavior: Any


def scaling(obj: Obj) -> Scaling:
    spec = obj["spec"]
    if obj["kind"] == "ScaledObject":
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        return Scaling(
            minimum=spec["minReplicaCount"],
            maximum=spec["maxReplicaCount"],
            group=meta["consumerGroup"],
            topic=meta["topic"],
            lag_per_replica=int(meta["lagThreshold"]),
            behavior=spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        )
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    labels = metric["external"]["metric"]["selector"]["matchLabels"]
    target = metric["external"]["target"]
    assert target["type"] == "AverageValue", "lag per replica, as KEDA's lagThreshold"
    return Scaling(
        minimum=spec["minReplicas"],
        maximum=spec["maxReplicas"],
        group=labels["group"],
        topic=labels["topic"],
        lag_per_replica=int(target["averageValue"]),
        behavior=spec["behavior"],
    )


def autoscalers(built: list[Obj]) -> dict[str, Obj]:
    """Deployment name -> the one autoscaler that targets it."""
    found: dict[str, Obj] = {}
    for obj in built:
        if obj["kind"] in ("ScaledObject", "HorizontalPodAutoscaler"):
            ref = obj["spec"]["scaleTargetRef"]
            assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment"), ref
            assert ref["name"] not in found, f"two autoscalers for {ref['name']}"
            found[ref["name"]] = obj
    return found


@pytest.mark.parametrize("directory", [K8S_DIR, HPA_DIR], ids=["keda", "hpa"])
def test_every_worker_scales_on_its_own_group_lag(directory: Path, tmp_path: Path) -> None:
    check_scaling(objects(directory), tmp_path)


def check_scaling(built: list[Obj], into: Path) -> None:
    by_deployment, pods = autoscalers(built), workers(built, into)
    assert len(pods) >= 8
    assert set(by_deployment) == set(pods), "an autoscaler per worker, each on a real one"
    for name, worker in pods.items():
        scaled = scaling(by_deployment[name])
        assert scaled.group == worker.group, name
        assert scaled.topic == worker.topics.requests, name
        # replicas of one group share the partitions: more than that would sit idle
        assert scaled.minimum <= scaled.maximum <= worker.topics.partitions("requests"), name
        # never scaled to zero: the requests that wait for a replica miss their deadline
        assert scaled.minimum >= 1, f"{name} ({worker.spec.role}) must answer"
        assert scaled.lag_per_replica == worker.spec.batch.max_size, f"{name}: one batch"
        assert "replicas" not in worker.deployment["spec"], f"{name}: the autoscaler owns them"


def smol(built: list[Obj]) -> Obj:
    return next(
        o for o in built if o["kind"] == "ScaledObject" and o["metadata"]["name"] == "worker-smol"
    )


def set_trigger(key: str, value: str) -> Callable[[list[Obj]], None]:
    def change(built: list[Obj]) -> None:
        smol(built)["spec"]["triggers"][0]["metadata"][key] = value

    return change


def set_spec(key: str, value: Any) -> Callable[[list[Obj]], None]:
    def change(built: list[Obj]) -> None:
        smol(built)["spec"][key] = value

    return change


def retarget(built: list[Obj]) -> None:
    smol(built)["spec"]["scaleTargetRef"]["name"] = "worker-smoll"


def orphan(built: list[Obj]) -> None:
    built.remove(smol(built))


WRONG = {
    "another group": set_trigger("consumerGroup", "rdv.model.smol-tight"),
    "another topic": set_trigger("topic", "rdv.scores"),
    "one batch and one more": set_trigger("lagThreshold", "17"),
    "more replicas than partitions": set_spec("maxReplicaCount", 7),
    "scaled to zero": set_spec("minReplicaCount", 0),
    "no such Deployment": retarget,
    "a worker without an autoscaler": orphan,
}


@pytest.mark.parametrize("change", WRONG.values(), ids=WRONG.keys())
def test_a_wrong_scaler_is_caught(change: Callable[[list[Obj]], None], tmp_path: Path) -> None:
    built = objects(K8S_DIR)
    change(built)
    with pytest.raises(AssertionError):
        check_scaling(built, tmp_path)


def test_both_builds_scale_alike() -> None:
    keda = {name: scaling(o) for name, o in autoscalers(objects(K8S_DIR)).items()}
    hpa = {name: scaling(o) for name, o in autoscalers(objects(HPA_DIR)).items()}
    assert keda == hpa


def test_keda_reads_the_lag_the_way_the_workers_do(tmp_path: Path) -> None:
    built = objects(K8S_DIR)
    pods, by_deployment = workers(built, tmp_path), autoscalers(built)
    named = {(o["kind"], o["metadata"]["name"]): o for o in built}
    bootstrap = env_name(KafkaSettings, "bootstrap")
    for name, worker in pods.items():
        scaled = by_deployment[name]
        (trigger,) = scaled["spec"]["triggers"]
        meta = trigger["metadata"]
        assert meta["offsetResetPolicy"] == worker.offset_reset, name
        # the brokers the worker itself reaches, from the Secret its container reads
        assert meta["bootstrapServersFromEnv"] == bootstrap
        (secret,) = [s["secretRef"]["name"] for s in worker.container["envFrom"]]
        auth = named[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
        check_authentication(auth, secret, named)
        fallback = scaled["spec"]["fallback"]["replicas"]
        low, high = scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]
        assert low <= fallback <= high, name
        if worker.spec.role not in OFF_ANSWER_PATH:
            assert fallback == high, f"{name}: lag unknown, deadlines still count"


def check_authentication(auth: Obj, secret: str, named: dict[tuple[str, str], Obj]) -> None:
    """Credentials from the workers' own Secret under KafkaSettings' names; the settings
    KEDA spells its own way from a built ConfigMap, with values KEDA accepts."""
    fields = {"username": "sasl_username", "password": "sasl_password"}
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == set(fields)
    for parameter, ref in refs.items():
        assert ref["name"] == secret
        assert ref["key"] == env_name(KafkaSettings, fields[parameter])
    params = kafka_scaler_parameters()
    for ref in auth["spec"]["configMapTargetRef"]:
        value = named[("ConfigMap", ref["name"])]["data"][ref["key"]]
        assert value in params[ref["parameter"]].enum, ref


def test_keda_speaks_the_strimzi_cluster_security() -> None:
    """The KEDA settings shipped match kafka/strimzi.yaml's listener and the example
    Secret's topic prefix that the ScaledObjects' names assume."""
    keda = {(o["kind"], o["metadata"]["name"]): o for o in objects(K8S_DIR)}
    data = keda[("ConfigMap", "rdv-kafka-keda")]["data"]
    cluster = next(
        d
        for d in yaml.safe_load_all((K8S_DIR / "kafka" / "strimzi.yaml").read_text())
        if d["kind"] == "Kafka"
    )
    (listener,) = cluster["spec"]["kafka"]["listeners"]
    assert data["sasl"] == STRIMZI_SASL[listener["authentication"]["type"]]
    assert data["tls"] == ("enable" if listener["tls"] else "disable")
    example = yaml.safe_load((K8S_DIR / "kafka" / "secret.example.yaml").read_text())
    assert example["stringData"][env_name(KafkaSettings, "topic_prefix")] == ""


def defined_labels(metric: str) -> set[str]:
    """The label names of the gauge ``metric`` as services/ defines it (empty: none)."""
    pattern = re.compile(rf'Gauge\(\s*"{metric}",.*?\[([^\]]*)\]', re.DOTALL)
    for path in (REPO / "services").rglob("*.py"):
        if found := pattern.search(path.read_text()):
            return set(re.findall(r'"(\w+)"', found.group(1)))
    return set()


def test_the_hpas_scale_on_the_metric_prometheus_adapter_serves() -> None:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values["rules"]["default"] is False
    (rule,) = values["rules"]["external"]
    assert set(rule) <= ADAPTER_RULE_FIELDS
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>"):
        assert placeholder in rule["metricsQuery"]
    series = re.fullmatch(r"(\w+)\{(.*)\}", rule["seriesQuery"])
    assert series, rule["seriesQuery"]
    metric, required = series.group(1), set(re.findall(r'(\w+)!=""', series.group(2)))
    assert required == {"group", "topic", "partition"}
    for hpa in (o for o in objects(HPA_DIR) if o["kind"] == "HorizontalPodAutoscaler"):
        external = hpa["spec"]["metrics"][0]["external"]["metric"]
        assert external["name"] == rule["name"]["as"]
        assert set(external["selector"]["matchLabels"]) <= required
    assert defined_labels(metric) >= required, f"no gauge {metric} in services/"
    # the Prometheus metric is named in one place: renaming it is one edit
    others = [p for d in (K8S_DIR, HPA_DIR) for p in d.rglob("*.yaml") if p != ADAPTER_VALUES]
    assert [p for p in others if metric in p.read_text()] == []
    assert ADAPTER_VALUES.read_text().count(metric) == 1
