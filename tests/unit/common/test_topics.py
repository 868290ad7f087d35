"""The topics file: the repo's own file, prefixes, and every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.errors import ConfigError
from services.common.topics import DEFAULT_FILE, ROLES, TopicFile, Topics, load_topics

REPO_FILE = Path(__file__).resolve().parents[3] / "deploy" / "kafka" / "topics.yaml"


def _valid() -> dict[str, Any]:
    """A small valid topics file as data (each test changes one thing)."""
    return {
        "replication_factor": 1,
        "topics": {
            "requests": {"name": "req", "partitions": 4},
            "scores": {"name": "sco", "partitions": 4},
            "decisions": {"name": "dec", "partitions": 4},
            "replies": {"name": "rep", "partitions": 2},
            "control": {"name": "ctl", "partitions": 1, "config": {"cleanup.policy": "compact"}},
            "dead_letters": {"name": "dlq", "partitions": 1},
            "feedback": {"name": "fbk", "partitions": 1},
        },
    }


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- the repo's file -----------------------------------------------------------------


def test_default_file_is_the_repo_file() -> None:
    assert DEFAULT_FILE == REPO_FILE
    assert REPO_FILE.is_file()


def test_repo_file_names_every_role() -> None:
    topics = load_topics()
    assert set(ROLES) <= set(topics.by_role)
    for role in ROLES:
        assert getattr(topics, role) == topics.by_role[role]
        assert topics.by_role[role]  # a non-empty name
    assert len(set(topics.by_role.values())) == len(topics.by_role)  # all distinct


def test_repo_file_co_partitions_requests_and_scores() -> None:
    topics = load_topics()
    assert topics.partitions("requests") == topics.partitions("scores")
    assert topics.partitions("requests") >= 1


def test_repo_file_compacts_the_control_topic() -> None:
    assert load_topics().spec.topics["control"].config["cleanup.policy"] == "compact"


def test_repo_file_config_values_are_strings_for_the_admin_client() -> None:
    raw = yaml.safe_load(REPO_FILE.read_text())
    for spec in raw["topics"].values():
        assert all(isinstance(v, str) for v in spec.get("config", {}).values()), spec


@pytest.mark.parametrize("prefix", ["", "t1234.", "stack-b_"])
def test_prefix_is_applied_to_every_name(prefix: str) -> None:
    plain = load_topics()
    prefixed = load_topics(prefix=prefix)
    assert prefixed.prefix == prefix
    for role, name in plain.by_role.items():
        assert prefixed.by_role[role] == prefix + name
    assert prefixed.requests == prefix + plain.requests
    assert prefixed.dead_letters == prefix + plain.dead_letters


def test_explicit_path_is_read(tmp_path: Path) -> None:
    topics = load_topics(_write(tmp_path, _valid()), prefix="x.")
    assert topics.requests == "x.req"
    assert topics.control == "x.ctl"
    assert topics.partitions("replies") == 2
    assert topics.spec.replication_factor == 1


def test_replication_factor_defaults_to_one(tmp_path: Path) -> None:
    data = _valid()
    del data["replication_factor"]
    assert load_topics(_write(tmp_path, data)).spec.replication_factor == 1


def test_topics_can_be_built_from_a_validated_spec() -> None:
    topics = Topics(TopicFile.model_validate(_valid()), prefix="p.")
    assert topics.scores == "p.sco"


# --- files that must be refused -----------------------------------------------------


def _unequal(data: dict[str, Any]) -> None:
    data["topics"]["scores"]["partitions"] = 5


def _missing_role(data: dict[str, Any]) -> None:
    del data["topics"]["dead_letters"]


def _control_not_compacted(data: dict[str, Any]) -> None:
    data["topics"]["control"]["config"] = {"cleanup.policy": "delete"}


def _control_without_config(data: dict[str, Any]) -> None:
    del data["topics"]["control"]["config"]


def _unknown_top_key(data: dict[str, Any]) -> None:
    data["replicas"] = 3


def _unknown_topic_key(data: dict[str, Any]) -> None:
    data["topics"]["replies"]["retention"] = "1h"


def _zero_partitions(data: dict[str, Any]) -> None:
    data["topics"]["replies"]["partitions"] = 0


def _bad_name(data: dict[str, Any]) -> None:
    data["topics"]["replies"]["name"] = "has space"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_unequal, r"requests \(4\) and scores \(5\)"),
        (_missing_role, r"lacks the roles \['dead_letters'\]"),
        (_control_not_compacted, "cleanup.policy: compact"),
        (_control_without_config, "cleanup.policy: compact"),
        (_unknown_top_key, "replicas"),
        (_unknown_topic_key, "retention"),
        (_zero_partitions, "partitions"),
        (_bad_name, "name"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_bad_file_raises_config_error(tmp_path: Path, change: Any, message: str) -> None:
    data = _valid()
    change(data)
    with pytest.raises(ConfigError, match=message) as info:
        load_topics(_write(tmp_path, data))
    assert info.value.code == "bad_config"


@pytest.mark.parametrize(
    "text",
    ["topics: [unclosed", "topics:\n  requests: {name: a\n", "\ttopics: {}"],
    ids=["flow-list", "flow-map", "tab-indent"],
)
def test_invalid_yaml_raises_config_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="invalid topics file") as info:
        load_topics(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_yaml_that_is_not_a_mapping_raises_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="invalid topics file"):
        load_topics(_write(tmp_path, text))


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "topics.yaml"
    with pytest.raises(ConfigError, match="cannot read topics file") as info:
        load_topics(missing)
    assert str(missing) in str(info.value)


def test_a_folder_instead_of_a_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read topics file"):
        load_topics(tmp_path)


def test_two_roles_with_one_name_are_refused(tmp_path: Path) -> None:
    data = _valid()
    data["topics"]["scores"]["name"] = "req"
    with pytest.raises(ConfigError, match="share a topic name"):
        load_topics(_write(tmp_path, data))


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    data = _valid()
    data["topics"]["extra"] = {"name": "x", "partitions": 1}
    with pytest.raises(ConfigError, match="unknown roles"):
        load_topics(_write(tmp_path, data))


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_bytes(b"topics: \xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"topics\.yaml"):
        load_topics(path)
