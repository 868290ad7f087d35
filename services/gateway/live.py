"""Endpoints that follow the control topic: a policy entry adds its endpoint or changes
its deadline and roster at once (the policy files give the base; a tombstone brings the
file's endpoint back, or removes one the files do not have). An entry is parsed by the
one policy schema the rendezvous uses (``policy_from_entry``), so the gateway applies
exactly the entries the rendezvous does."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from services.common.endpoints import EndpointSpec
from services.common.errors import ConfigError
from services.common.messages import PolicyEntry
from services.common.policy import check_policy_entry, policy_from_entry
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.control.follower import ControlFollower
from services.control.state import ControlState, overlay
from services.gateway.service import Gateway

log = logging.getLogger("rdv.gateway")


def merged(
    base: Mapping[str, EndpointSpec], current: Mapping[str, EndpointSpec], state: ControlState
) -> dict[str, EndpointSpec]:
    """The endpoints in force: ``base`` overlaid with the control entries."""
    return overlay(base, current, state, spec_from_entry, (ConfigError,))


def spec_from_entry(entry: PolicyEntry) -> EndpointSpec:
    """The endpoint a control entry sets; ``ConfigError`` for an entry the rendezvous
    refuses (an invalid policy, or one that names another endpoint than its key)."""
    return EndpointSpec.of(policy_from_entry(entry))


def follow_control(kafka: KafkaSettings, topics: Topics, gateway: Gateway) -> ControlFollower:
    """A follower (not started) that keeps ``gateway.endpoints`` up to date."""
    base = dict(gateway.endpoints)

    def on_change(state: ControlState, kind: str, _entry: object) -> None:
        if kind == "policy":
            gateway.endpoints = merged(base, gateway.endpoints, state)  # one atomic swap
            log.info("endpoints updated", extra={"endpoints": sorted(gateway.endpoints)})

    return ControlFollower(kafka, topics, on_change, check=check_policy_entry)
