"""Factories shared by the test suites: images, server processes, HTTP helpers."""
