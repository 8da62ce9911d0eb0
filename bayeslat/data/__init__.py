"""The data layer: trace ingestion, the bundled real runs, lifecycle reconstruction, workloads and
the ObsTable the model is fitted to. The bundled data files (Parquet, JSON) live beside these modules."""
