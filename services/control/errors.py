"""The control plane's refusals, as kinds the HTTP edge can tell apart (404, 409; both
are ConfigErrors, so the CLI reports them as before), and a deployer's failure."""

from __future__ import annotations

from services.common.errors import ConfigError, RendezvousError


class ControlNotFoundError(ConfigError):
    """The change names an endpoint or a model the control plane does not know."""

    code = "not_found"


class ControlConflictError(ConfigError):
    """The change is valid but cannot apply to what is in force now (promote the
    champion, retire the last model, roll back with no earlier version)."""

    code = "conflict"


class DeployError(RendezvousError):
    """A deployer could not start a model's worker, or it never became ready."""

    code = "deploy_failed"
