"""The HTTP front: predict, job routes, health, backlog gauges, ``protocols/``; ``middleware/`` wraps it."""
