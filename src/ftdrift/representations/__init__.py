"""Layer representations of the probe set: extraction, base-model stores, training snapshots."""
