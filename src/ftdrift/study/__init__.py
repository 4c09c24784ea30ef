"""The study's definition: configuration and its schema, task catalog, model families, the run
grid and its naming, code versions, cluster resources. Imports only ftdrift.core."""
