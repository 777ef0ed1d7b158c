"""Operations: Prometheus metrics (metrics.py) and structured JSON logs carrying call_id (logs.py)."""
