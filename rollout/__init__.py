"""rollout: a progressive-delivery controller for Databricks Model Serving endpoints.

A rollout plan (canary, A/B or blue/green) is validated, stored, and driven step by step:
the endpoint's ``traffic_config`` is moved, its export-metrics are scraped and judged, and the
candidate is promoted or rolled back. See ``DESIGN.md`` in the repository for the whole path.
"""

__version__ = "0.1.0"
