"""Route dependencies: the app's one ``Gateway`` and its ``Control``, declared with
``Annotated``."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from services.control.changes import Control
from services.gateway.errors import UnsupportedFeatureError
from services.gateway.service import Gateway


def get_gateway(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def get_control(request: Request) -> Control:
    """The control plane the control routes change (``build_app(control=...)``)."""
    control = getattr(request.app.state, "control", None)
    if control is None:
        raise UnsupportedFeatureError("this gateway has no control API configured")
    return cast(Control, control)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
ControlDep = Annotated[Control, Depends(get_control)]
