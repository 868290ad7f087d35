"""The deployment files (docker-compose.yml, deploy/docker/Dockerfile, deploy/k8s) read
as data, and what every command in them must be: one of the platform's real entry
points (``python -m <module> ...`` with a ``__main__``), with arguments its parser takes.
Used by test_compose.py and test_k8s_manifests.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
K8S_DIR = REPO / "deploy" / "k8s"
TOPICS_FILE = REPO / "deploy" / "kafka" / "topics.yaml"
APP = "/app"  # the images' working directory (WORKDIR in the Dockerfile)

REAL_MODULES = {
    "services.gateway": "the gateway",
    "services.rendezvous": "the rendezvous",
    "services.workers": "a model worker",
    "services.archive": "the archive",
    "services.compare": "experiments, drift and the learner over the archive's files",
    "services.cli.main": "the rdv command line (kafka topics)",
    "models.ood": "the OOD detector's fit/eval command line",
}
"""Every process the deployments may start, as ``python -m <module>``."""

NO_KAFKA = frozenset({"models.ood"})
"""Entry points that read files only: they get no Kafka settings or credentials (compare
reads files but its learner writes to the control topic)."""

SHELL_SEPARATORS = {"||", "&&", ";", "|"}


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def argv_of(command: object) -> list[str]:
    """A compose/k8s command (a list, or a string in shell form) as a list."""
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), f"a command must be a list or a string: {command!r}"
    return [str(part) for part in command]


def python_commands(argv: list[str]) -> list[list[str]]:
    """The ``python ...`` invocations of a command: itself, or those inside ``sh -c``."""
    if argv[:2] == ["sh", "-c"]:
        tokens = shlex.split(argv[2])
        found, current = [], None
        for token in tokens:
            if token == "python":
                current = [token]
                found.append(current)
            elif token in SHELL_SEPARATORS:
                current = None
            elif current is not None:
                current.append(token)
        return found
    return [argv] if argv and argv[0] == "python" else []


def has_main(module: str) -> bool:
    """``python -m module`` runs something: a package with ``__main__`` or a module with
    an ``if __name__ == "__main__"`` block."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    assert spec.origin is not None
    return '__name__ == "__main__"' in Path(spec.origin).read_text()


def check_real_command(argv: list[str]) -> str:
    """Assert ``argv`` is ``python -m <real module> <args it accepts>``; the module."""
    assert argv[:2] == ["python", "-m"], f"not `python -m X`: {argv}"
    assert len(argv) >= 3, f"no module: {argv}"
    module, args = argv[2], argv[3:]
    assert module in REAL_MODULES, f"{module} is not one of the real entry points"
    assert has_main(module), f"`python -m {module}` has no __main__ in this repo"
    if module == "services.workers":
        from services.workers.__main__ import build_parser  # noqa: PLC0415

        parsed = build_parser().parse_args(args)
        assert parsed.model, f"a worker needs --model: {argv}"
    elif module == "services.cli.main":
        from services.cli.main import build_parser as cli_parser  # noqa: PLC0415

        cli_parser().parse_args(args)
    elif module == "models.ood":
        from models.ood.cli import _parser as ood_parser  # noqa: PLC0415

        ood_parser().parse_args(args)
    else:
        assert args == [], f"{module} takes its settings from the environment, not {args}"
    return module


def flag(argv: list[str], name: str) -> str | None:
    """The value after ``name`` in ``argv`` (None when absent)."""
    return argv[argv.index(name) + 1] if name in argv else None


def url_port(text: str) -> tuple[int, str]:
    """Port and path of the one http://host:port/path in ``text``."""
    match = re.search(r"http://[\w.-]+:(\d+)(/[\w/-]*)", text)
    assert match, f"no URL in {text!r}"
    return int(match.group(1)), match.group(2)


@dataclass
class Stage:
    """One stage of the Dockerfile: what it copies, its environment, its command."""

    name: str
    base: str
    copies: list[tuple[str, str]] = field(default_factory=list)  # (repo path, image path)
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    cmd: list[str] | None = None


def dockerfile_stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name (a stage inherits its base stage's data)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            parent = stages.get(base.strip())
            stage = Stage(name.strip(), base.strip())
            if parent is not None:
                stage.copies, stage.env = list(parent.copies), dict(parent.env)
                stage.runs, stage.cmd = list(parent.runs), parent.cmd
            stages[stage.name] = stage
        elif stage is None:
            continue
        elif word == "COPY":
            *sources, dest = shlex.split(rest)
            for src in sources:
                target = Path(APP) / dest
                if dest.endswith("/"):
                    target = target / Path(src).name
                stage.copies.append((src, str(target)))
        elif word == "ENV":
            stage.env.update(dict(part.split("=", 1) for part in shlex.split(rest)))
        elif word == "RUN":
            stage.runs.append(rest)
        elif word == "CMD":
            stage.cmd = json.loads(rest)
        elif word == "ENTRYPOINT":
            raise AssertionError("the images have no ENTRYPOINT: the command is the process")
    return stages


def image_stage(service: Mapping[str, Any]) -> str | None:
    """The Dockerfile stage a compose service runs (None: not one of our images)."""
    build = service.get("build")
    if not isinstance(build, dict):
        return None
    assert build.get("dockerfile") == "deploy/docker/Dockerfile", build
    target = build.get("target")
    assert isinstance(target, str)
    return target


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every YAML document under deploy/k8s (kustomization included)."""
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def defined_metrics() -> dict[str, str]:
    """Metric names defined in services/ (prometheus_client constructors) -> type."""
    pattern = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(rdv_\w+)\"")
    found: dict[str, str] = {}
    for path in (REPO / "services").rglob("*.py"):
        for kind, name in pattern.findall(path.read_text()):
            found[name] = kind
    return found


def exposed_names(defined: Mapping[str, str]) -> set[str]:
    """The sample names those metrics expose (``_bucket`` ... for histograms)."""
    suffixes = {
        "Counter": ("_total",),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count"),
        "Summary": ("", "_sum", "_count"),
    }
    names = set()
    for name, kind in defined.items():
        base = name.removesuffix("_total") if kind == "Counter" else name
        names.update(base + suffix for suffix in suffixes[kind])
    return names
