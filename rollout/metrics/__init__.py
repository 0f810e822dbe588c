"""Export-metrics: parsing the endpoint's Prometheus text into per-entity windows and sums;
``prometheus``: the client that runs a policy's checks on own metrics (PromQL, web JSON)."""
