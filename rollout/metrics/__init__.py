"""Export-metrics: parsing the endpoint's Prometheus text into per-entity windows and sums."""
