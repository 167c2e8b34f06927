"""Protocol adapters: the APIs clients already speak, on the native path's rules.

- ``v2``: the Open Inference Protocol v2 over REST (KServe, Triton, MLServer), with Triton's
  binary tensor data and classification extensions (tensors in ``v2_tensors``);
- ``torchserve``: TorchServe's inference API (``/predictions/{name}``, ``/ping``);
- ``legacy``: the original VisionQueue's routes (``/api/upload-image``, ``/api/task-status``,
  ``/health``).

Each route receives the front worker's ``DataPlane`` (``visionqueue.api.state``), as ``/predict``
does, or calls job submission; the front's
middleware applies the same body cap, API keys and tenancy, and ``error_shapes`` rewrites the
error envelope into each protocol's own error body.
"""
