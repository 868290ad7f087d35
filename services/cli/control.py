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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from services.cli.control_api import Plane

POLICIES = Path(os.environ.get("RDV_RENDEZVOUS_POLICIES", "deploy/policies"))


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument("--by", default=None, help="who makes the change (default: $USER)")
    by.add_argument(
        "--policies",
        type=Path,
        default=POLICIES,
        help="the base policy files (--direct; the gateway uses its own)",
    )
    by.add_argument(
        "--gateway",
        default=os.environ.get("RDV_GATEWAY_URL") or None,
        metavar="URL",
        help="make the change through this gateway's control API (default $RDV_GATEWAY_URL; "
        "the key in $RDV_API_KEY)",
    )
    by.add_argument(
        "--direct",
        action="store_true",
        help="write to the control topic from here, not through the gateway (operators; "
        "restrict it with Kafka ACLs)",
    )

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


def _plane(args: argparse.Namespace, admin: bool = True) -> Plane:
    """The gateway's control API when one is configured (and not --direct), else the
    control topic itself."""
    from services.cli.control_api import Direct, Remote, gateway_url  # noqa: PLC0415

    if args.gateway and not args.direct:
        return Remote(gateway_url(args.gateway), os.environ.get("RDV_API_KEY") or None)
    from services.common.settings import KafkaSettings  # noqa: PLC0415 - fast --help
    from services.common.topics import load_topics  # noqa: PLC0415
    from services.control.changes import Control  # noqa: PLC0415
    from services.control.store import KafkaLedger  # noqa: PLC0415

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
    from services.common.messages import Role  # noqa: PLC0415
    from services.control.deployers import deployer  # noqa: PLC0415
    from services.workers.spec import load_spec  # noqa: PLC0415

    spec = load_spec(args.spec)
    if args.role:
        spec = spec.model_copy(update={"role": Role(args.role)})
    plane = _plane(args)
    reg = plane.deploy(spec, _who(args))
    print(f"{reg['name']}: registered as {reg['role']} on {', '.join(reg['endpoints'])}")
    if not args.no_start:
        env = {k: v for k, v in os.environ.items() if k != "RDV_API_KEY"}  # not the worker's
        started = deployer(args.deployer).start(spec, env)
        print(f"{spec.name}: running ({started.where}); it scores every request from now on")
    return 0


def promote_model(args: argparse.Namespace) -> int:
    for change in _plane(args).promote(args.model, args.endpoint, _who(args)):
        print(
            f"{change['endpoint']}: {args.model} preferred, fallback "
            f"{change['fallback'] or '-'} (policy version {change['version']})"
        )
    return 0


def retire_model(args: argparse.Namespace) -> int:
    from services.control.deployers import deployer  # noqa: PLC0415

    for change in _plane(args).retire(args.model, _who(args)):
        print(f"{change['endpoint']}: {args.model} removed (policy version {change['version']})")
    print(f"{args.model}: unregistered")
    if not args.keep_running:
        stopped = deployer(args.deployer).stop(args.model)
        print(f"{args.model}: {'stopped' if stopped else 'no worker of it was deployed here'}")
    return 0


def _new_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The one policy document of ``args.file``, for ``args.endpoint``, validated."""
    from services.common.errors import ConfigError  # noqa: PLC0415
    from services.common.policy import read_documents  # noqa: PLC0415
    from services.control.changes import checked_policy  # noqa: PLC0415

    if args.file is None:
        raise ConfigError("rdv policy set <endpoint> <file>")
    if not args.file.is_file():
        raise ConfigError(f"no policy file {args.file}")
    docs = read_documents(args.file)
    if len(docs) != 1:
        raise ConfigError(f"{args.file} must hold one policy document, not {len(docs)}")
    return checked_policy(args.endpoint, docs[0][1], str(args.file))


def policy_command(args: argparse.Namespace) -> int:
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
        return 0
    if new_doc is not None:
        change = plane.set_policy(args.endpoint, new_doc, _who(args))
        print(f"{args.endpoint}: policy version {change['version']} in force")
        return 0
    change = plane.rollback(args.endpoint, _who(args))
    print(f"{args.endpoint}: version {change['restored']} restored as version {change['version']}")
    return 0
