"""Policies (and learned rewards) that follow the control topic: the policy files give the
base; a control entry for an endpoint replaces the file's policy of that endpoint at the
next decision (a tombstone brings the file's back). An entry that does not validate is
logged and the endpoint keeps the policy it had. The learner's ``learned/<endpoint>``
entries replace the bandit's rewards for requests that arrive after them."""

from __future__ import annotations

import logging

from services.common.bandit import Learned, learned_from
from services.common.errors import ConfigError
from services.common.policy import Policy, check_policy_entry, policy_from_entry
from services.common.settings import KafkaSettings
from services.control.follower import ControlFollower
from services.control.state import ControlState, overlay
from services.rendezvous import metrics
from services.rendezvous.service import Rendezvous

log = logging.getLogger("rdv.rendezvous")


def merged(
    base: dict[str, Policy], current: dict[str, Policy], state: ControlState
) -> dict[str, Policy]:
    """The policies in force: ``base`` overlaid with the control entries."""
    return overlay(base, current, state, policy_from_entry, (ConfigError,))


def learned_of(state: ControlState) -> dict[str, Learned]:
    """Per endpoint, the learner's latest rewards as the bandit reads them."""
    return {e: learned_from(entry.version, entry.buckets) for e, entry in state.learned.items()}


def follow_control(kafka: KafkaSettings, processor: Rendezvous) -> ControlFollower:
    """A follower (not started) that keeps ``processor.policies`` up to date."""
    base = dict(processor.policies)

    def on_change(state: ControlState, kind: str, _entry: object) -> None:
        if kind == "learned":
            processor.learned = learned_of(state)  # one atomic swap
            metrics.LEARNED_CHANGES.inc()
            return
        if kind != "policy":
            return
        processor.policies = merged(base, processor.policies, state)  # one atomic swap
        versions = {e: p.version for e, p in processor.policies.items()}
        metrics.POLICY_CHANGES.inc()
        log.info("policies updated", extra={"versions": versions})

    return ControlFollower(kafka, processor.topics, on_change, check=check_policy_entry)
