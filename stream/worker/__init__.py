"""`crm-kpi worker`: the Faust app (`app`), the batch consumer (`consumer`), one batch end to end
(`batch`), the dead-letter producer (`dead_letters`) and the worker's own metrics (`metrics`)."""

from stream.worker.app import create_app, run_worker

__all__ = ["create_app", "run_worker"]
