"""The inference engine: models behind micro-batching queues (no HTTP here)."""
