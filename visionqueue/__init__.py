"""VisionQueue core: settings, errors, image intake and the HTTP front (``visionqueue.api``)."""
