"""Build a front worker's data plane: its registry, its transport to the classifier, its limits."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np

from visionqueue.bento.remote import send_token
from visionqueue.core.settings import Settings
from visionqueue.dataplane.crop_socket import CropSocketClient, socket_paths
from visionqueue.dataplane.plane import CropLimits, DataPlane
from visionqueue.dataplane.registry import ServedModels, configured_specs
from visionqueue.dataplane.transports import front_transport


def crop_socket_client(settings: Settings, classifier_service: str) -> CropSocketClient | None:
    """The front's client of the classifier's crop sockets, or None to call over HTTP."""
    model = settings.model
    if model.classifier_url or model.classifier_transport != "socket":
        return None
    paths = socket_paths(classifier_service, model.classifier_workers)
    return CropSocketClient(paths) if paths else None


def build_dataplane(
    settings: Settings, classifier: Any, classifier_service: str, queue_wait: Any
) -> DataPlane:
    """The data plane of one front worker, over ``classifier`` (its ``bentoml.depends`` proxy).

    ``queue_wait`` is the front's histogram of the time a crop waited beyond its forward pass.
    """
    model = settings.model
    if model.classifier_token.get_secret_value():
        send_token(classifier, model.classifier_token.get_secret_value())
    socket = crop_socket_client(settings, classifier_service)
    transport = front_transport(classifier, remote=bool(model.classifier_url), socket=socket)
    # two calls outstanding per classifier process keep each one's next batch queued
    in_flight = model.calls_in_flight * model.classifier_workers
    models = ServedModels(configured_specs(model), transport, model.batch_max_size, in_flight)

    def observe(round_trip: float, forward_s: np.ndarray) -> None:
        for seconds in forward_s:
            queue_wait.observe(max(0.0, round_trip - float(seconds)))

    return DataPlane(
        models,
        CropLimits(settings.server.max_image_pixels, model.jpeg_draft),
        anyio.CapacityLimiter(model.preprocess_threads),
        on_round_trip=observe,
        deadline_ms=model.predict_deadline_ms,
        crop_sockets=tuple(socket.paths) if socket is not None else (),
    )
