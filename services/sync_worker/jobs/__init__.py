"""Jobs the worker can run. Importing this package registers them."""
from services.sync_worker.jobs.api import JobRegistry, RunContext, registry
from services.sync_worker.jobs import maintenance, sync_open_orders  # noqa: F401  (registers the jobs)

__all__ = ["JobRegistry", "RunContext", "registry"]
