"""hetagent's Grafana dashboards as code (grafana-foundation-sdk). ``python -m deploy.grafana`` writes
them as JSON into the Helm chart (deploy/helm/hetagent/files/dashboards/), where
templates/grafana-dashboards.yaml ships them as ConfigMaps; ``--check`` fails when that JSON is stale."""
