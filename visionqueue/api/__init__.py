"""The HTTP front: predict handling, job routes, health and the error envelope."""
