"""``rdv models|deploy|promote|retire|policy``: the control plane's commands.

With a gateway configured (``--gateway URL`` or RDV_GATEWAY_URL) each change goes
through the gateway's control API, which checks the key (RDV_API_KEY, sent as Bearer;
an admin key whenever the gateway's keys are on) and writes it. Without one, or with
``--direct``, the change is written to the control topic from here (for operators; on a
real cluster, Kafka ACLs on the control topic are what restricts it). Either way the
rendezvous and the gateway apply it at once, and the same services.control.changes
code makes it. Starting and stopping a worker (deploy, retire) is the deployer's job,
run here after the change was accepted.
"""

from __future__ import annotations

import argparse
import getpass
import os
import time
from typing import Any

import yaml

from services.common.errors import ConfigError
from services.common.messages import Role
from services.common.policy import read_documents
from services.common.settings import KafkaSettings
from services.common.spec import load_spec
from services.common.topics import load_topics
from services.control.changes import Control, checked_policy
from services.control.deployers import deployer
from services.control.plane import Direct, Plane, Remote, gateway_url
from services.control.store import KafkaLedger
from services.gateway.keys import load_keys
from services.gateway.settings import GatewaySettings

# -- plumbing -------------------------------------------------------------------------


def _plane(args: argparse.Namespace, admin: bool = True) -> Plane:
    """The gateway's control API when one is configured (and not --direct), else the
    control topic itself."""
    if args.gateway and not args.direct:
        return Remote(gateway_url(args.gateway), os.environ.get("RDV_API_KEY") or None)
    if admin:
        require_admin_key()
    kafka = KafkaSettings()
    topics = load_topics(prefix=kafka.topic_prefix)
    return Direct(Control(KafkaLedger(kafka, topics), args.policies))


def require_admin_key() -> None:
    """With API keys configured in this shell (the gateway's RDV_GATEWAY_API_KEYS /
    _FILE), a direct change needs an admin key in RDV_API_KEY. This is a guard against
    mistakes, not security: the gateway's control API checks keys where the change is
    made; direct writes must be restricted with Kafka ACLs on the control topic."""
    ring = load_keys(GatewaySettings())
    if not ring.enabled:
        return
    key = ring.identify(os.environ.get("RDV_API_KEY", ""))
    if key is None or key.role != "admin":
        raise ConfigError("API keys are on: control changes need an admin key in RDV_API_KEY")


def _who(args: argparse.Namespace) -> str:
    return str(args.by or os.environ.get("USER") or getpass.getuser() or "rdv")


def _evidence(evidence: dict[str, Any]) -> str:
    """A policy version's evidence on one line: the check, its decision and the metrics
    it found worse (every figure is in the control entry)."""
    worse = [m for m in evidence.get("metrics", []) if m.get("call") == "worse"]
    parts = [
        f"{m['metric']} {m['champion']:.4g} -> {m['challenger']:.4g} "
        f"(difference {m['difference']:+.4g} in [{m['low']:+.4g}, {m['high']:+.4g}], "
        f"n {m['n']}, p {m['p_value']:.3g}, alpha {m['alpha']:.3g})"
        for m in worse
        if None not in (m.get("champion"), m.get("challenger"), m.get("low"), m.get("high"))
    ]
    head = f"{evidence.get('check', 'check')}: {evidence.get('decision', '?')}"
    return head + ("; " + "; ".join(parts) if parts else "")


def _when(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


# -- commands -------------------------------------------------------------------------


def models_list(args: argparse.Namespace) -> int:
    models = _plane(args, admin=False).models()
    if not models:
        print("no model is registered on the control topic (rdv deploy <spec> registers one)")
        return 0
    print(f"{'model':<16} {'version':<28} {'role':<11} {'endpoints':<16} changed")
    for reg in models:
        print(
            f"{reg['name']:<16} {reg['version']:<28} {reg['role']:<11} "
            f"{','.join(reg['endpoints']):<16} {_when(reg['changed_ms'])} by {reg['changed_by']}"
        )
    return 0


def deploy_model(args: argparse.Namespace) -> int:

    spec = load_spec(args.spec)
    if args.role:
        spec = spec.model_copy(update={"role": Role(args.role)})
    plane = _plane(args)
    reg = plane.deploy(spec, _who(args))
    print(f"{reg['name']}: registered as {reg['role']} on {', '.join(reg['endpoints'])}")
    if not args.no_start:
        env = {k: v for k, v in os.environ.items() if k != "RDV_API_KEY"}  # not the worker's
        started = deployer(args.deployer).start(spec, env)
        share = "every request" if spec.sample >= 1 else f"a {spec.sample:g} sample of requests"
        print(f"{spec.name}: running ({started.where}); it scores {share} from now on")
    return 0


def promote_model(args: argparse.Namespace) -> int:
    if getattr(args, "gate", False):
        from services.cli.gate import gated_promote  # noqa: PLC0415 - duckdb only for the gate

        return gated_promote(args, _plane(args), _who(args))
    for change in _plane(args).promote(args.model, args.endpoint, _who(args)):
        print(
            f"{change['endpoint']}: {args.model} preferred, fallback "
            f"{change['fallback'] or '-'} (policy version {change['version']})"
        )
    return 0


def retire_model(args: argparse.Namespace) -> int:

    for change in _plane(args).retire(args.model, _who(args)):
        print(f"{change['endpoint']}: {args.model} removed (policy version {change['version']})")
    print(f"{args.model}: unregistered")
    if not args.keep_running:
        stopped = deployer(args.deployer).stop(args.model)
        print(f"{args.model}: {'stopped' if stopped else 'no worker of it was deployed here'}")
    return 0


def _new_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The one policy document of ``args.file``, for ``args.endpoint``, validated."""

    if args.file is None:
        raise ConfigError("rdv policy set <endpoint> <file>")
    if not args.file.is_file():
        raise ConfigError(f"no policy file {args.file}")
    docs = read_documents(args.file)
    if len(docs) != 1:
        raise ConfigError(f"{args.file} must hold one policy document, not {len(docs)}")
    return checked_policy(args.endpoint, docs[0][1], str(args.file))


def canary_command(args: argparse.Namespace) -> int:
    from services.cli.gate import canary_watch  # noqa: PLC0415 - duckdb only for the gate

    return canary_watch(args, _plane(args), _who(args))


def policy_command(args: argparse.Namespace) -> int:
    if args.action == "evaluate":
        from services.cli.policy_eval import evaluate_command  # noqa: PLC0415 - duckdb

        return evaluate_command(args, _plane(args, admin=False))
    new_doc = _new_policy(args) if args.action == "set" else None  # checked before Kafka
    plane = _plane(args, admin=args.action != "show")
    if args.action == "show":
        view = plane.show(args.endpoint)
        origin = view["origin"]
        if view["changed_by"] is not None:
            origin += f", by {view['changed_by']} at {_when(view['changed_ms'])}"
        print(f"# {args.endpoint}: version {view['version']} ({origin})")
        print(yaml.safe_dump(view["policy"], sort_keys=False).rstrip())
        for e in view["history"]:
            print(f"# version {e['version']}: by {e['changed_by']} at {_when(e['changed_ms'])}")
            if e.get("evidence"):
                print(f"#   evidence: {_evidence(e['evidence'])}")
        return 0
    if new_doc is not None:
        change = plane.set_policy(args.endpoint, new_doc, _who(args))
        print(f"{args.endpoint}: policy version {change['version']} in force")
        return 0
    change = plane.rollback(args.endpoint, _who(args))
    print(f"{args.endpoint}: version {change['restored']} restored as version {change['version']}")
    return 0
