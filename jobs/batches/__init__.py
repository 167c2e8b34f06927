"""Dataset batches on the worker: plan a source into chunks, run leased chunks, notify."""
