"""The platform's topics as data: ``deploy/kafka/topics.yaml``, loaded and ensured."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import ConfigError
from services.common.kafka import Admin

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "topics.yaml"
ROLES = ("requests", "scores", "decisions", "replies", "control", "dead_letters", "feedback")


class TopicSpec(BaseModel):
    """One topic: its name (before the prefix), partitions and topic-level config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")
    partitions: int = Field(ge=1, le=1000)
    config: dict[str, str] = Field(default_factory=dict)


class TopicFile(BaseModel):
    """The whole topics.yaml file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replication_factor: int = Field(default=1, ge=1)
    topics: dict[str, TopicSpec]


class Topics:
    """Full topic names by role (``topics.requests`` ...), with the prefix applied."""

    def __init__(self, spec: TopicFile, prefix: str = "") -> None:
        missing = [r for r in ROLES if r not in spec.topics]
        if missing:
            raise ConfigError(f"topics file lacks the roles {missing}")
        req, sco = spec.topics["requests"], spec.topics["scores"]
        if req.partitions != sco.partitions:
            raise ConfigError(
                f"requests ({req.partitions}) and scores ({sco.partitions}) must have the "
                "same partition count so a request and its scores are co-partitioned"
            )
        if spec.topics["control"].config.get("cleanup.policy") != "compact":
            raise ConfigError("the control topic must have cleanup.policy: compact")
        extra = sorted(set(spec.topics) - set(ROLES))
        if extra:
            raise ConfigError(f"topics file has unknown roles {extra}; known: {list(ROLES)}")
        names = {role: prefix + t.name for role, t in spec.topics.items()}
        if len(set(names.values())) != len(names):
            raise ConfigError(f"two roles share a topic name: {names}")
        self.spec = spec
        self.prefix = prefix
        self.requests = names["requests"]
        self.scores = names["scores"]
        self.decisions = names["decisions"]
        self.replies = names["replies"]
        self.control = names["control"]
        self.dead_letters = names["dead_letters"]
        self.feedback = names["feedback"]
        self.by_role = names

    def partitions(self, role: str) -> int:
        return self.spec.topics[role].partitions

    def ensure(self, admin: Admin, timeout_s: float = 30.0) -> list[str]:
        """Create the missing topics, wait until usable, and check the live partition
        counts of the co-partitioned pair. Returns the names created."""
        specs = [
            (self.prefix + t.name, t.partitions, self.spec.replication_factor, t.config)
            for t in self.spec.topics.values()
        ]
        created = admin.create_topics(specs, timeout_s)
        live = admin.partitions(timeout_s)
        if live.get(self.requests) != live.get(self.scores):
            raise ConfigError(
                f"live topics {self.requests} ({live.get(self.requests)} partitions) and "
                f"{self.scores} ({live.get(self.scores)}) differ: requests and scores would "
                "not be co-partitioned; recreate one of them"
            )
        return created


def load_topics(path: Path | None = None, prefix: str = "") -> Topics:
    """Read and validate a topics file (the repo's by default)."""
    source = path or DEFAULT_FILE
    try:
        raw = yaml.safe_load(source.read_bytes())
        return Topics(TopicFile.model_validate(raw), prefix)
    except OSError as exc:
        raise ConfigError(f"cannot read topics file {source}: {exc}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid topics file {source}: {exc}") from exc
