"""GET /api/commands/<id>: the run a trigger command started ("Run now" and the API's trigger point here)."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from services.web import monitoring, params
from services.web.errors import NotFound


class CommandStatus(BaseModel):
    """The run a trigger command started: null until a worker has created it."""

    model_config = ConfigDict(extra="forbid")

    command_id: str
    run: str | None
    url: str | None


async def command_status(request: web.Request) -> web.Response:
    """The run a trigger command started, or null while no worker has taken it yet."""
    command_id = request.match_info["command_id"]
    if not params.COMMAND_PATTERN.match(command_id):
        raise NotFound("No such command.")
    name = await monitoring.run_of_command(request.app, command_id)
    status = CommandStatus(command_id=command_id, run=name, url=f"/runs/{name}" if name else None)
    return web.json_response(text=status.model_dump_json())
