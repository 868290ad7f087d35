"""kustomize builds deploy/k8s (KEDA) and deploy/k8s-hpa (HPA), and every object of both
builds passes its kind's schema; a typo in any of them does not."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.manifests import (
    HPA_DIR,
    K8S_DIR,
    KUBERNETES_VERSIONS,
    Obj,
    SchemaError,
    failures,
    objects,
    validate,
)

KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


@pytest.mark.parametrize("directory", [K8S_DIR, HPA_DIR], ids=["keda", "hpa"])
def test_every_built_object_passes_its_schema(directory: Path) -> None:
    built = objects(directory)
    kinds = {o["kind"] for o in built}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap"} <= kinds
    assert failures(built) == []
    assert KUBERNETES_VERSIONS[0] == "1.28"
    assert len(set(KUBERNETES_VERSIONS)) == 2


def test_the_kafka_files_pass_their_schemas() -> None:
    """deploy/k8s/kafka, applied apart from the build: Strimzi's cluster, node pool and
    user against Strimzi's CRDs, the example Secret against Kubernetes'."""
    found = [
        doc
        for path in sorted((K8S_DIR / "kafka").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert {o["kind"] for o in found} == {"Kafka", "KafkaNodePool", "KafkaUser", "Secret"}
    assert failures(found) == []
    stale = next(o for o in found if o["kind"] == "Kafka")
    stale["apiVersion"] = "kafka.strimzi.io/v1beta2"  # what Strimzi 1.0+ no longer serves
    with pytest.raises(SchemaError, match=re.escape("no schema for kafka.strimzi.io/v1beta2")):
        validate(stale)


def test_the_default_build_scales_by_keda_and_the_other_by_hpa() -> None:
    keda = {o["kind"] for o in objects(K8S_DIR)}
    hpa = {o["kind"] for o in objects(HPA_DIR)}
    assert keda >= KEDA_KINDS
    assert "HorizontalPodAutoscaler" not in keda
    assert "HorizontalPodAutoscaler" in hpa
    assert not KEDA_KINDS & hpa


def test_the_hpa_build_is_the_keda_one_without_keda() -> None:
    def platform(objs: list[Obj]) -> list[Obj]:
        keda_only = KEDA_KINDS | {"HorizontalPodAutoscaler"}
        return sorted(
            (o for o in objs if o["kind"] not in keda_only and not is_keda_config(o)),
            key=lambda o: (o["kind"], o["metadata"]["name"]),
        )

    assert platform(objects(HPA_DIR)) == platform(objects(K8S_DIR))


def is_keda_config(obj: Obj) -> bool:
    return bool(obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "rdv-kafka-keda")


def first(objs: list[Obj], kind: str) -> Obj:
    return next(o for o in objs if o["kind"] == kind)


def container_typo(objs: list[Obj]) -> Obj:
    deployment = first(objs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    return deployment


def replicas_as_text(objs: list[Obj]) -> Obj:
    statefulset = first(objs, "StatefulSet")
    statefulset["spec"]["replicas"] = "two"
    return statefulset


def field_newer_than_1_28(objs: list[Obj]) -> Obj:
    # PodSpec.resources (pod-level requests) came in Kubernetes 1.32
    deployment = first(objs, "Deployment")
    deployment["spec"]["template"]["spec"]["resources"] = {"requests": {"cpu": "1"}}
    return deployment


def scaledobject_typo(objs: list[Obj]) -> Obj:
    scaled = first(objs, "ScaledObject")
    scaled["spec"]["maxReplicaCont"] = scaled["spec"].pop("maxReplicaCount")
    return scaled


def scaledobject_behavior_typo(objs: list[Obj]) -> Obj:
    scaled = first(objs, "ScaledObject")
    hpa = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    hpa["behavior"]["scaleDown"]["stabilisationWindowSeconds"] = 60
    return scaled


def lag_threshold_as_number(objs: list[Obj]) -> Obj:
    scaled = first(objs, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 16
    return scaled


def trigger_metadata_typo(objs: list[Obj]) -> Obj:
    scaled = first(objs, "ScaledObject")
    meta = scaled["spec"]["triggers"][0]["metadata"]
    meta["consumerGroupp"] = meta.pop("consumerGroup")
    return scaled


def offset_policy_unknown(objs: list[Obj]) -> Obj:
    scaled = first(objs, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["offsetResetPolicy"] = "newest"
    return scaled


def auth_parameter_typo(objs: list[Obj]) -> Obj:
    auth = first(objs, "TriggerAuthentication")
    auth["spec"]["secretTargetRef"][0]["parameter"] = "user"
    return auth


def metadata_typo(objs: list[Obj]) -> Obj:
    auth = first(objs, "TriggerAuthentication")
    auth["metadata"]["lables"] = auth["metadata"].pop("labels")
    return auth


def unknown_kind(objs: list[Obj]) -> Obj:
    scaled = first(objs, "ScaledObject")
    scaled["kind"] = "ScaledObjekt"
    return scaled


def hpa_typo(objs: list[Obj]) -> Obj:
    hpa = first(objs, "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["external"]["target"]["averageValu"] = "16"
    return hpa


MUTATIONS: list[tuple[Path, Callable[[list[Obj]], Obj], str]] = [
    (K8S_DIR, container_typo, "imagePullPolcy"),
    (K8S_DIR, replicas_as_text, "'two' is not of type 'integer'"),
    (K8S_DIR, field_newer_than_1_28, "Kubernetes 1.28"),
    (K8S_DIR, scaledobject_typo, "maxReplicaCont"),
    (K8S_DIR, scaledobject_behavior_typo, "stabilisationWindowSeconds"),
    (K8S_DIR, lag_threshold_as_number, "16 is not of type 'string'"),
    (K8S_DIR, trigger_metadata_typo, "'consumerGroupp' is no parameter"),
    (K8S_DIR, offset_policy_unknown, "'newest' is not one of"),
    (K8S_DIR, auth_parameter_typo, "'user' is no parameter"),
    (K8S_DIR, metadata_typo, "lables"),
    (K8S_DIR, unknown_kind, "no schema for keda.sh/v1alpha1"),
    (HPA_DIR, hpa_typo, "averageValu"),
]


@pytest.mark.parametrize(
    ("directory", "mutate", "message"), MUTATIONS, ids=[m[1].__name__ for m in MUTATIONS]
)
def test_a_broken_object_fails_its_schema(
    directory: Path, mutate: Callable[[list[Obj]], Obj], message: str
) -> None:
    built = objects(directory)
    broken = mutate(built)
    with pytest.raises(SchemaError, match=re.escape(message)) as caught:
        validate(broken)
    assert broken["metadata"]["name"] in str(caught.value)
