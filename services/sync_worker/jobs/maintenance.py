"""A second, small job: proves the job API is generic."""
from __future__ import annotations

from typing import Any

from services.sync_worker.jobs.api import RunContext, registry

PURGE_CLOSED = """
DELETE FROM open_orders WHERE closed_at IS NOT NULL AND closed_at < now() - make_interval(days => $1)
"""


@registry.job(
    "purge_closed_orders", title="PurgeClosedOrdersJob",
    description="Delete orders closed in the source more than 30 days ago.",
)
async def purge_closed_orders(ctx: RunContext) -> dict[str, Any]:
    """Delete orders that have been closed for more than 30 days."""
    await ctx.log("Deleting orders closed more than 30 days ago", key="purge")
    async with ctx.transaction() as conn:
        status = await conn.execute(PURGE_CLOSED, 30)
        deleted = int(status.split()[-1])
        await ctx.log(f"Deleted {deleted:,} closed orders", key="purge", deleted=deleted)
    return {"deleted": deleted}
