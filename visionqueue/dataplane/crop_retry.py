"""Crop for the version that runs: the one loop the front and the workers share.

An image is cropped with the current version's preprocessing before its batch runs. If a
promotion swapped in a version that crops differently meanwhile, the answer names that
version: the image is cropped again for it and classified again, at most ``ATTEMPTS`` times
in all (the last answer stands). Works in sync and async code alike::

    attempts = CropForVersion(prep)
    for prep in attempts:
        crops = crop_all(prep)
        answer = classify(crops)
        attempts.ran(answer.version)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from model_store.preprocess import Preprocessing

ATTEMPTS = 3


class CropForVersion:
    """Hand out the preprocessing to crop with until a version ran on crops made for it."""

    def __init__(self, prep: Preprocessing, attempts: int = ATTEMPTS) -> None:
        self.prep = prep
        self._left = attempts
        self._settled = False

    def __iter__(self) -> Iterator[Preprocessing]:
        while self._left and not self._settled:
            self._left -= 1
            yield self.prep

    def ran(self, version: dict[str, Any]) -> bool:
        """Record the version that answered; True when the crops were made for it."""
        used = Preprocessing.from_spec(version["preprocessing"])
        self._settled = used.front_key == self.prep.front_key
        self.prep = used
        return self._settled
