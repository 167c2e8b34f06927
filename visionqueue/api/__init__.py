"""The HTTP front: predict handling, job routes, health, backlog gauges; ``middleware/`` wraps it."""
