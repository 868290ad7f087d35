"""Route dependencies: the app's one ``Gateway``, declared with ``Annotated``."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from services.gateway.service import Gateway


def get_gateway(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
