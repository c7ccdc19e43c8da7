"""In-field telemetry: batch validation, rollups, drift, evidence and dashboards."""
