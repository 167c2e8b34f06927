"""ResNet18 in the BentoML model store: import, labels, preprocessing, batched inference."""
