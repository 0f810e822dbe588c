"""A local Databricks serving workspace: the REST API, simulated traffic, faults.

The sandbox is the fake Databricks workspace behind the serving client. It is the embedded
default for the demo, the fake every integration test talks to over real HTTP, the backend of
the benchmarks (which also reuse ``traffic`` and ``realism`` directly) and a service in
docker-compose.

- ``traffic``: the pure traffic model and the export-metrics exposition;
- ``realism``: what varies by window beyond the profiles (hiccups, cold start, overdispersion,
  incidents, the daily cycle) and how export-metrics delivers a window (late, missing,
  duplicated, revised, counters that reset); pure, like ``traffic``;
- ``models``: request bodies and the config validation Databricks applies;
- ``workspace``: the state, derived lazily from an injected clock;
- ``app``: the FastAPI application (serving-endpoints API + admin API, see README.md);
- ``server``: ``SandboxServer`` (a background-thread server for tests) and ``run`` (the CLI).

Nothing is imported here, so that ``rollout.sandbox.traffic`` and ``realism`` stay cheap to
import for the benchmark (no web framework).
"""
