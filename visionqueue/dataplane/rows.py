"""The classifier's answer on the wire: one float32 row per crop, two columns after the classes.

A batch of ``N`` crops answers ``(N, C + 2)`` float32 rows, whatever the transport (BentoML's
pickle or JSON, the crop socket's frames, the workers' HTTP client)::

    [p_0 ... p_{C-1}, forward_s, tag_id]

``p_*`` are the softmax probabilities of the model's ``C`` classes, ``forward_s`` the
seconds the forward pass of the whole batch took (the caller derives its queue wait from
it), and ``tag_id`` the 24-bit id of the exact version that ran (``model_store.serving.tag_id``,
exact in float32), which the version book turns back into that version's description.
``pack`` (the classifier) and ``unpack`` (every caller) are the only code that knows the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_store.serving import tag_id

EXTRA_COLUMNS = 2  # forward_s, tag_id


@dataclass(frozen=True)
class AnswerRows:
    """A batch's answer, unpacked: ``(N, C)`` probabilities and per-row timing and version."""

    probs: np.ndarray  # (N, C) float32
    forward_s: np.ndarray  # (N,) seconds of the forward pass of the batch each row was in
    tag_ids: np.ndarray  # (N,) int: the version that computed each row

    def __len__(self) -> int:
        return len(self.probs)

    def one_version(self) -> int | None:
        """The tag id every row names, or None when a promotion split the rows across two."""
        ids = {int(v) for v in self.tag_ids}
        return ids.pop() if len(ids) == 1 else None


def pack(probs: np.ndarray, forward_s: float, tag: str) -> np.ndarray:
    """Return the wire rows of one batch that ``tag`` computed in ``forward_s`` seconds."""
    extra = np.empty((len(probs), EXTRA_COLUMNS), dtype=np.float32)
    extra[:, 0] = forward_s
    extra[:, 1] = tag_id(tag)
    return np.concatenate([np.asarray(probs, np.float32), extra], axis=1)


def unpack(rows: np.ndarray) -> AnswerRows:
    """Split wire rows into probabilities, forward seconds and tag ids (ValueError if malformed)."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] <= EXTRA_COLUMNS:
        raise ValueError(f"answer rows must be (N, C + {EXTRA_COLUMNS}), got {rows.shape}")
    return AnswerRows(rows[:, :-2], rows[:, -2], rows[:, -1].astype(np.int64))
