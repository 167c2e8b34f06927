"""Deliver signed webhooks (Standard Webhooks) to user URLs behind an SSRF guard.

Plain functions; the Celery task that retries deliveries lives with the other job tasks.
"""
