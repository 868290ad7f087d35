"""The registry of model runtime names: each name maps to the ``"module:Class"`` import
string of its runtime (services.workers imports it when a spec uses it), so a spec can
be checked anywhere without importing any model code."""

from __future__ import annotations

RUNTIMES: dict[str, str] = {
    "echo": "services.workers.testmodels:EchoModel",
    "latency": "services.workers.testmodels:LatencyModel",
    "failing": "services.workers.testmodels:FailingModel",
    "llama-chat": "services.workers.chat_runtime:ChatRuntime",
    "ood": "services.workers.ood_runtime:OodRuntime",
    "lexicon": "services.workers.canary_runtime:LexiconRuntime",
    "embed": "services.workers.embed_runtime:EmbedRuntime",
}


def register_runtime(name: str, target: str) -> None:
    """Name a runtime class given as ``"module:Class"`` (imported on first use)."""
    if ":" not in target:
        raise ValueError(f"runtime target must look like 'module:Class', not {target!r}")
    RUNTIMES[name] = target


def runtime_names() -> list[str]:
    """The registered runtime names, sorted."""
    return sorted(RUNTIMES)


def is_runtime_ref(name: str) -> bool:
    """True for a registered name or a direct ``"module:Class"`` reference."""
    return name in RUNTIMES or is_target(name)


def target_of(name: str) -> str | None:
    """The ``"module:Class"`` a runtime name (or a direct reference) stands for; None
    for an unknown name."""
    return RUNTIMES.get(name, name if is_target(name) else None)


def is_target(name: str) -> bool:
    """True for a direct ``"package.module:Class"`` reference."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr.isidentifier())
