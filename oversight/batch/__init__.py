"""The batch engine: specs, pre-flight, the runner and its workers, the response cache."""
