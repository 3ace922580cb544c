"""Data layer: raw recordings -> records -> ArrayRecord shards -> Grain batches."""
