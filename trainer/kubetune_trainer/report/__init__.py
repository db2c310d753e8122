"""What a run tells while it trains: progress to its FineTuneJob (progress), progress for a person
without one (local_progress), and Prometheus metrics (training_metrics)."""
