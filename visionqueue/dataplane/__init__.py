"""The data plane: "classify these crops with model X and learn which version answered".

One room for the classifier path, used by the front (``/predict``), every protocol route
(v2, TorchServe), the web page and the job workers; docs/dataplane.md draws it.
"""
