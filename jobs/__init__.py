"""Celery app, job tasks and webhook delivery."""
