"""``rdv models|deploy|promote|retire|policy``: the control plane's commands.

Each change is written to the control topic (services.control) with who made it and
when; the rendezvous and the gateway apply it at once. Policies start from the policy
files (``--policies``, default deploy/policies) until the control topic holds one.
"""

from __future__ import annotations

import argparse
import getpass
import os
import time
from pathlib import Path
from typing import Any

import yaml

POLICIES = Path(os.environ.get("RDV_RENDEZVOUS_POLICIES", "deploy/policies"))


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument("--by", default=None, help="who makes the change (default: $USER)")
    by.add_argument("--policies", type=Path, default=POLICIES, help="the base policy files")

    models = commands.add_parser("models", parents=[by], help="the model registry")
    models.add_argument("action", choices=["list"])
    models.set_defaults(func=models_list)

    deploy = commands.add_parser(
        "deploy", parents=[by], help="register a model and start its worker beside production"
    )
    deploy.add_argument("spec", help="a model spec file (models/specs/) or the inline form")
    deploy.add_argument("--role", choices=["challenger", "canary", "champion", "detector", "decoy"])
    deploy.add_argument("--deployer", choices=["process", "docker"], default="process")
    deploy.add_argument("--no-start", action="store_true", help="register only")
    deploy.set_defaults(func=deploy_model)

    promote = commands.add_parser(
        "promote",
        parents=[by],
        help="make a challenger the preferred answer (old champion: fallback)",
    )
    promote.add_argument("model")
    promote.add_argument("--endpoint", action="append", help="default: every endpoint it serves")
    promote.set_defaults(func=promote_model)

    retire = commands.add_parser(
        "retire", parents=[by], help="take a model out of every policy and stop its worker"
    )
    retire.add_argument("model")
    retire.add_argument("--deployer", choices=["process", "docker"], default="process")
    retire.add_argument("--keep-running", action="store_true")
    retire.set_defaults(func=retire_model)

    policy = commands.add_parser("policy", parents=[by], help="show, set or roll back a policy")
    policy.add_argument("action", choices=["show", "set", "rollback"])
    policy.add_argument("endpoint")
    policy.add_argument("file", nargs="?", type=Path, help="the policy document (set)")
    policy.set_defaults(func=policy_command)


# -- plumbing -------------------------------------------------------------------------


def _context(admin: bool = True) -> tuple[Any, Any]:
    from services.common.settings import KafkaSettings  # noqa: PLC0415 - fast --help
    from services.common.topics import load_topics  # noqa: PLC0415

    if admin:
        require_admin_key()
    kafka = KafkaSettings()
    return kafka, load_topics(prefix=kafka.topic_prefix)


def require_admin_key() -> None:
    """With API keys configured (the gateway's RDV_GATEWAY_API_KEYS / _FILE), a change
    needs an admin key in RDV_API_KEY. The commands write to Kafka themselves: on a real
    cluster, restrict writes to the control topic with Kafka ACLs as well."""
    from services.common.errors import ConfigError  # noqa: PLC0415
    from services.gateway.keys import load_keys  # noqa: PLC0415
    from services.gateway.settings import GatewaySettings  # noqa: PLC0415

    ring = load_keys(GatewaySettings())
    if not ring.enabled:
        return
    key = ring.identify(os.environ.get("RDV_API_KEY", ""))
    if key is None or key.role != "admin":
        raise ConfigError("API keys are on: control changes need an admin key in RDV_API_KEY")


def _who(args: argparse.Namespace) -> str:
    return str(args.by or os.environ.get("USER") or getpass.getuser() or "rdv")


def _file_doc(endpoint: str, policies: Path) -> dict[str, Any] | None:
    """The endpoint's document in the policy files, if any."""
    from services.common.endpoints import read_documents  # noqa: PLC0415

    if policies.exists():
        for _, doc in read_documents(policies):
            if doc.get("endpoint") == endpoint:
                return dict(doc)
    return None


def _current_doc(state: Any, endpoint: str, policies: Path) -> tuple[dict[str, Any], int]:
    """The endpoint's policy in force as a document, and its version."""
    from services.common.errors import ConfigError  # noqa: PLC0415

    entry = state.policies.get(endpoint)
    if entry is not None:
        return dict(entry.policy), int(entry.version)
    doc = _file_doc(endpoint, policies)
    if doc is not None:
        return doc, int(doc.get("version", 1))
    raise ConfigError(f"no policy for endpoint {endpoint!r} (control topic or {policies})")


def _publish_policy(
    kafka: Any, topics: Any, state: Any, doc: dict[str, Any], *, who: str, after: int = 0
) -> int:
    """Validate and write a new version of an endpoint's policy (above ``after``, the
    version in force, which may be a policy file's); returns the version."""
    from services.common.messages import PolicyEntry  # noqa: PLC0415
    from services.control.state import policy_key, policy_version_key  # noqa: PLC0415
    from services.control.store import publish  # noqa: PLC0415
    from services.rendezvous.policy import parse_policy  # noqa: PLC0415

    endpoint = str(doc["endpoint"])
    version = max(state.next_version(endpoint), after + 1)  # above the file's version too
    body = {k: v for k, v in doc.items() if k != "version"}
    parse_policy({**body, "version": version}, f"the new policy of {endpoint}")
    entry = PolicyEntry(
        endpoint=endpoint,
        version=version,
        policy=body,
        changed_by=who,
        changed_ms=int(time.time() * 1000),
    )
    publish(
        kafka,
        topics,
        [(policy_key(endpoint), entry), (policy_version_key(endpoint, version), entry)],
    )
    state.apply(policy_key(endpoint), entry)
    return int(version)


def _register(kafka: Any, topics: Any, registrations: list[Any]) -> None:
    from services.control.state import model_key  # noqa: PLC0415
    from services.control.store import publish  # noqa: PLC0415

    publish(kafka, topics, [(model_key(r.name), r) for r in registrations])


def _when(ms: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


# -- commands -------------------------------------------------------------------------


def models_list(args: argparse.Namespace) -> int:
    from services.control.store import read_state  # noqa: PLC0415

    kafka, topics = _context(admin=False)
    state = read_state(kafka, topics)
    if not state.models:
        print("no model is registered on the control topic (rdv deploy <spec> registers one)")
        return 0
    print(f"{'model':<16} {'version':<28} {'role':<11} {'endpoints':<16} changed")
    for name, reg in sorted(state.models.items()):
        print(
            f"{name:<16} {reg.version:<28} {reg.role.value:<11} {','.join(reg.endpoints):<16} "
            f"{_when(reg.changed_ms)} by {reg.changed_by}"
        )
    return 0


def deploy_model(args: argparse.Namespace) -> int:
    from services.common.messages import Role  # noqa: PLC0415
    from services.control.deployers import deployer  # noqa: PLC0415
    from services.workers.spec import load_spec  # noqa: PLC0415

    kafka, topics = _context()
    spec = load_spec(args.spec)
    if args.role:
        spec = spec.model_copy(update={"role": Role(args.role)})
    reg = spec.registration(_who(args), int(time.time() * 1000))
    _register(kafka, topics, [reg])
    print(f"{spec.name}: registered as {spec.role.value} on {', '.join(spec.endpoints)}")
    if not args.no_start:
        started = deployer(args.deployer).start(spec, dict(os.environ))
        print(f"{spec.name}: running ({started.where}); it scores every request from now on")
    return 0


def promote_model(args: argparse.Namespace) -> int:
    from services.common.errors import ConfigError  # noqa: PLC0415
    from services.common.messages import Role  # noqa: PLC0415
    from services.control.policies import champion_of, promote  # noqa: PLC0415
    from services.control.store import read_state  # noqa: PLC0415

    kafka, topics = _context()
    state = read_state(kafka, topics)
    reg = state.models.get(args.model)
    endpoints = args.endpoint or (list(reg.endpoints) if reg else [])
    if not endpoints:
        raise ConfigError(f"{args.model} is not registered: name the endpoint (--endpoint)")
    who = _who(args)
    changed = []
    for endpoint in endpoints:
        doc, current = _current_doc(state, endpoint, args.policies)
        old = champion_of(doc)
        version = _publish_policy(
            kafka, topics, state, promote(doc, args.model), who=who, after=current
        )
        print(
            f"{endpoint}: {args.model} preferred, fallback {old or '-'} (policy version {version})"
        )
        if old and old in state.models:
            changed.append(state.models[old].model_copy(update={"role": Role.CHALLENGER}))
    if reg is not None:
        changed.append(reg.model_copy(update={"role": Role.CHAMPION}))
    now = int(time.time() * 1000)
    _register(
        kafka,
        topics,
        [r.model_copy(update={"changed_by": who, "changed_ms": now}) for r in changed],
    )
    return 0


def retire_model(args: argparse.Namespace) -> int:
    from services.common.errors import ConfigError  # noqa: PLC0415
    from services.control.deployers import deployer  # noqa: PLC0415
    from services.control.policies import mentions, retire  # noqa: PLC0415
    from services.control.state import model_key  # noqa: PLC0415
    from services.control.store import publish, read_state  # noqa: PLC0415

    kafka, topics = _context()
    state = read_state(kafka, topics)
    who = _who(args)
    reg = state.models.get(args.model)
    endpoints = set(reg.endpoints if reg else [])
    endpoints |= {e for e, p in state.policies.items() if mentions(p.policy, args.model)}
    for endpoint in sorted(endpoints):
        try:
            doc, current = _current_doc(state, endpoint, args.policies)
        except ConfigError:
            continue  # no policy for that endpoint: nothing names the model there
        if not mentions(doc, args.model):
            continue
        version = _publish_policy(
            kafka, topics, state, retire(doc, args.model), who=who, after=current
        )
        print(f"{endpoint}: {args.model} removed (policy version {version})")
    publish(kafka, topics, [(model_key(args.model), None)])
    print(f"{args.model}: unregistered")
    if not args.keep_running:
        stopped = deployer(args.deployer).stop(args.model)
        print(f"{args.model}: {'stopped' if stopped else 'no worker of it was deployed here'}")
    return 0


def _new_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The one policy document of ``args.file``, for ``args.endpoint``, validated."""
    from services.common.endpoints import read_documents  # noqa: PLC0415
    from services.common.errors import ConfigError  # noqa: PLC0415
    from services.rendezvous.policy import parse_policy  # noqa: PLC0415

    if args.file is None:
        raise ConfigError("rdv policy set <endpoint> <file>")
    if not args.file.is_file():
        raise ConfigError(f"no policy file {args.file}")
    docs = read_documents(args.file)
    if len(docs) != 1:
        raise ConfigError(f"{args.file} must hold one policy document, not {len(docs)}")
    doc = dict(docs[0][1])
    if doc.get("endpoint") != args.endpoint:
        raise ConfigError(
            f"{args.file} is the policy of {doc.get('endpoint')!r}, not {args.endpoint!r}"
        )
    parse_policy(doc, str(args.file))
    return doc


def policy_command(args: argparse.Namespace) -> int:
    from services.common.errors import ConfigError  # noqa: PLC0415
    from services.control.store import read_state  # noqa: PLC0415

    new_doc = _new_policy(args) if args.action == "set" else None  # checked before Kafka
    kafka, topics = _context(admin=args.action != "show")
    state = read_state(kafka, topics)
    if args.action == "show":
        doc, version = _current_doc(state, args.endpoint, args.policies)
        entry = state.policies.get(args.endpoint)
        origin = (
            f"control topic, by {entry.changed_by} at {_when(entry.changed_ms)}"
            if entry
            else "policy file"
        )
        print(f"# {args.endpoint}: version {version} ({origin})")
        print(yaml.safe_dump(doc, sort_keys=False).rstrip())
        for v, e in sorted(state.history.get(args.endpoint, {}).items()):
            print(f"# version {v}: by {e.changed_by} at {_when(e.changed_ms)}")
        return 0
    if new_doc is not None:
        try:
            _, current = _current_doc(state, args.endpoint, args.policies)
        except ConfigError:
            current = 0  # a new endpoint
        version = _publish_policy(kafka, topics, state, new_doc, who=_who(args), after=current)
        print(f"{args.endpoint}: policy version {version} in force")
        return 0
    _, current = _current_doc(state, args.endpoint, args.policies)
    earlier = [v for v in state.history.get(args.endpoint, {}) if v < current]
    if earlier:
        doc, label = dict(state.history[args.endpoint][max(earlier)].policy), str(max(earlier))
    else:  # before the first control change: the policy file's version
        file_doc = _file_doc(args.endpoint, args.policies)
        if file_doc is None or args.endpoint not in state.policies:
            raise ConfigError(f"{args.endpoint}: no earlier version to roll back to")
        doc, label = file_doc, f"{file_doc.get('version', 1)} (the policy file)"
    version = _publish_policy(kafka, topics, state, doc, who=_who(args), after=current)
    print(f"{args.endpoint}: version {label} restored as version {version}")
    return 0
