"""The Kubernetes manifests as a cluster would get them: built by the real kustomize and
checked against the schemas of every kind they hold (Kubernetes' own through
kubernetes-validate, KEDA's and Strimzi's from their CRDs in tests/data), offline."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

REPO = Path(__file__).resolve().parents[3]
K8S_DIR = REPO / "deploy" / "k8s"
HPA_DIR = REPO / "deploy" / "k8s-hpa"
KEDA_DATA = REPO / "tests" / "data" / "keda"
CRD_DIRS = (KEDA_DATA, REPO / "tests" / "data" / "strimzi")
"""Where the custom resources' definitions are (README.md in each: source, version)."""

KUBERNETES_VERSIONS = ("1.28", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests support (the gateway's pod-index label) and the
newest whose schemas kubernetes-validate ships: a field added after the first or
dropped before the second fails."""

Obj = dict[str, Any]


class SchemaError(AssertionError):
    """An object its kind's schema refuses, or of a kind without a schema."""


def kustomize() -> Path:
    """The kustomize binary: $RDV_KUSTOMIZE (set by make), else `make kustomize`, which
    builds the pinned version once and prints its path."""
    if given := os.environ.get("RDV_KUSTOMIZE"):
        return REPO / given
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "kustomize"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`make kustomize` failed:\n{done.stdout}{done.stderr}")
    return REPO / done.stdout.strip().splitlines()[-1]


@cache
def build(directory: Path) -> tuple[Obj, ...]:
    """``kustomize build`` of ``directory`` (the generators read files outside the
    folder, hence the load restrictor)."""
    done = subprocess.run(
        [str(kustomize()), "build", "--load-restrictor=LoadRestrictionsNone", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed:\n{done.stderr}")
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def objects(directory: Path) -> list[Obj]:
    """The built objects, fresh copies each call (tests may change them)."""
    return copy.deepcopy(list(build(directory)))


def ident(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as a JSON Schema that refuses unknown fields, as the API
    server's strict field validation does (it prunes them otherwise): every object with
    ``properties`` and no ``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``;
    ``nullable`` becomes a "null" type. CEL rules (x-kubernetes-validations) are not
    evaluated: the tests check the one KEDA has (min <= max) themselves."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> strict JSON Schema, for every served version of every CRD
    in CRD_DIRS."""
    found: dict[tuple[str, str], Obj] = {}
    for path in sorted(p for d in CRD_DIRS for p in d.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in (v for v in crd["spec"]["versions"] if v["served"]):
                schema = strict(version["schema"]["openAPIV3Schema"])
                jsonschema.Draft7Validator.check_schema(schema)
                found[(f"{group}/{version['name']}", kind)] = schema
    return found


@dataclass(frozen=True)
class ScalerParameter:
    """One parameter of KEDA's kafka scaler: where it may come from (triggerMetadata,
    resolvedEnv as ``<name>FromEnv``, authParams), its allowed values."""

    name: str
    order: tuple[str, ...]
    required: bool
    enum: tuple[str, ...] = ()


@cache
def kafka_scaler_parameters() -> dict[str, ScalerParameter]:
    raw = json.loads((KEDA_DATA / "kafka-scaler-parameters.json").read_text())
    return {
        name: ScalerParameter(name, tuple(p["order"]), p["required"], tuple(p.get("enum", ())))
        for name, p in raw.items()
    }


def check_kafka_params(where: str, params: dict[str, str | None], order: str) -> None:
    """Every key of a kafka trigger's metadata (``order`` triggerMetadata) or of its
    authentication (authParams) is a parameter of the scaler that may come from there,
    with an allowed value (None: not known here). KEDA ignores unknown keys, so a typo
    would pass silently."""
    known = kafka_scaler_parameters()
    for key, value in params.items():
        name, from_env = (key[: -len("FromEnv")], True) if key.endswith("FromEnv") else (key, False)
        param = known.get(name)
        if param is None:
            raise SchemaError(f"{where}: {key!r} is no parameter of KEDA's kafka scaler")
        source = "resolvedEnv" if from_env else order
        if source not in param.order:
            raise SchemaError(f"{where}: {key!r} cannot come from {source} ({param.order})")
        if param.enum and not from_env and value is not None and value not in param.enum:
            raise SchemaError(f"{where}: {key}={value!r} is not one of {param.enum}")
    if order == "triggerMetadata":
        for param in known.values():
            given = param.name in params or f"{param.name}FromEnv" in params
            if param.required and not given:
                raise SchemaError(f"{where}: the kafka scaler needs {param.name!r}")


def validate_builtin(obj: Obj, version: str, label: str = "") -> None:
    label = label or ident(obj)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise SchemaError(f"{label}: no schema for {obj.get('apiVersion')}") from None
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        raise SchemaError(f"{label} (Kubernetes {version}) at /{path}: {exc.message}") from None


def validate(obj: Obj) -> None:
    """Raise SchemaError unless ``obj`` passes the schema of its kind; a kind without a
    schema here fails too."""
    for key in ("apiVersion", "kind", "metadata"):
        if key not in obj:
            raise SchemaError(f"{ident(obj)}: no {key}")
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        for version in KUBERNETES_VERSIONS:
            validate_builtin(obj, version)
        return
    try:
        jsonschema.Draft7Validator(schema).validate(obj)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        raise SchemaError(f"{ident(obj)} at /{path}: {exc.message}") from None
    # a custom resource's metadata is Kubernetes' ObjectMeta: checked as a ConfigMap's
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    for version in KUBERNETES_VERSIONS:
        validate_builtin(holder, version, f"{ident(obj)}'s ObjectMeta")
    if obj["apiVersion"].startswith("keda.sh/"):
        check_keda_kafka(obj)


def check_keda_kafka(obj: Obj) -> None:
    """The kafka parameters of a ScaledObject's triggers or a TriggerAuthentication."""
    spec = obj["spec"]
    if obj["kind"] == "ScaledObject":
        for index, trigger in enumerate(spec["triggers"]):
            if trigger["type"] == "kafka":
                where = f"{ident(obj)} trigger {index}"
                check_kafka_params(where, dict(trigger["metadata"]), "triggerMetadata")
    elif obj["kind"] == "TriggerAuthentication":
        refs = spec.get("secretTargetRef", []) + spec.get("configMapTargetRef", [])
        check_kafka_params(ident(obj), {r["parameter"]: None for r in refs}, "authParams")


def failures(objs: Iterable[Obj]) -> list[str]:
    """What the schemas say of each object (empty: all pass)."""
    found = []
    for obj in objs:
        try:
            validate(obj)
        except SchemaError as exc:
            found.append(str(exc))
    return found
