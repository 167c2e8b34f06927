"""The core every other package builds on: settings, the error tree, logging, image intake.

It imports nothing else of ours (``make check`` enforces the layering with import-linter).
"""
