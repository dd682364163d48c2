"""Our wire messages inside Flower messages: one uint8 array per wire message, in a record named ``payload``.

Flower serialises an ``Array`` with ``np.save(allow_pickle=False)`` and chunks it at 5 MiB, so a large
masked vector travels like any model update; nothing else of ours is in a Flower message.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from protocols.errors import MalformedMessageError
from secure_afl.deploy.messages import PAYLOAD


def content(*parts: bytes) -> RecordDict:
    return RecordDict({PAYLOAD: ArrayRecord({str(i): Array(np.frombuffer(part, dtype=np.uint8))
                                              for i, part in enumerate(parts)})})


def parts(message: Message) -> list[bytes]:
    """The wire messages a Flower message carries, in order; anything else is refused."""
    record = message.content.array_records.get(PAYLOAD)
    if record is None or sorted(record) != sorted(str(i) for i in range(len(record))):
        raise MalformedMessageError("a Flower message without our payload record")
    arrays = [record[str(i)].numpy() for i in range(len(record))]
    if any(a.dtype != np.uint8 or a.ndim != 1 for a in arrays):
        raise MalformedMessageError("a payload entry is not a flat uint8 array")
    return [a.tobytes() for a in arrays]
