"""What the Bento services need from BentoML's side: patches of its internals, and metrics."""
