"""The gateway's view of an endpoint: a projection of its policy (services.common.policy).

The gateway needs only an endpoint's name, longest deadline, roster and OOD detector;
it reads them from the same strictly parsed ``Policy`` the rendezvous decides by, so a
document one refuses the other refuses too, with the same error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.policy import Policy, load_policies


@dataclass(frozen=True)
class EndpointSpec:
    """An endpoint the gateway serves: the longest deadline a request may get, its roster
    (models a chat request may name, listed by ``/v1/models``) and its OOD gate's
    detector, which scores requests but never answers (so it is not listed)."""

    endpoint: str
    deadline_ms: int
    models: tuple[str, ...] = ()
    """The roster: models expected to score this endpoint's requests."""
    detector: str | None = None

    @classmethod
    def of(cls, policy: Policy) -> EndpointSpec:
        """The part of ``policy`` the gateway serves by."""
        detector = None if policy.ood is None else policy.ood.detector
        return cls(policy.endpoint, policy.deadline_ms, policy.models, detector)

    @property
    def answering_models(self) -> list[str]:
        """The roster without the OOD detector (it scores requests, it never answers)."""
        return [m for m in self.models if m != self.detector]


def load_endpoints(path: Path) -> dict[str, EndpointSpec]:
    """Endpoint name -> spec, from a policy file or folder (``load_policies``' rules)."""
    return {name: EndpointSpec.of(policy) for name, policy in load_policies(path).items()}
