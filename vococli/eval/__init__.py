"""Benchmark scoring: annotation formats, resumable answering runs, their records, judges, scores."""
