"""Consume Amazon Kinesis Data Streams in one loop.

The Python kcpy package's API on kcpy's Rust consumer::

    from kcpy import StreamConsumer
    consumer = StreamConsumer('my_stream_name', consumer_name='my_consumer', checkpoint=True)
    for record in consumer:
        print(record)
"""
from typing import Any, Dict, Optional, Type, TypeVar
from types import TracebackType

from . import _kcpy
from ._kcpy import (
    AccessDenied,
    CheckpointError,
    CredentialsError,
    Error,
    InvalidConfig,
    KinesisError,
    ShutdownTimedOut,
    StreamNotFound,
    Unavailable,
    __version__,
)

__all__ = [
    "StreamConsumer",
    "Error",
    "InvalidConfig",
    "StreamNotFound",
    "AccessDenied",
    "CredentialsError",
    "KinesisError",
    "Unavailable",
    "CheckpointError",
    "ShutdownTimedOut",
    "__version__",
]


_Self = TypeVar("_Self", bound="StreamConsumer")


class StreamConsumer(_kcpy.StreamConsumer):
    """Reads every shard of a stream, following resharding, and yields its
    records as dicts; with ``for`` or ``async for``."""

    # Whether a task is in `__anext__`: a second one would take the next
    # record and so count the first one's as processed before it is.
    _reading = False

    def __aiter__(self: _Self) -> _Self:
        return self

    async def __anext__(self) -> Dict[str, Any]:
        if self._reading:
            raise RuntimeError("this StreamConsumer is already being read by another call")
        self._reading = True
        try:
            while True:
                # Taking is a step that cannot wait, done here with the GIL
                # held, so a cancelled task never drops a record that was
                # taken.
                record = self._take()
                if record is not None:
                    return record
                if not await self._ready():
                    raise StopAsyncIteration
        finally:
            self._reading = False

    async def aclose(self) -> None:
        """``close()`` for asyncio: stops reading and writes the checkpoints
        of the records processed, without blocking the event loop."""
        await self._aclose()

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.aclose()
