"""Bad input raises the documented exceptions, never a crash."""
import datetime
import os
from typing import Any, Callable

import pytest

import kcpy
from conftest import OPTIONS


def test_every_error_of_the_package_is_a_kcpy_error() -> None:
    for name in ["InvalidConfig", "StreamNotFound", "AccessDenied", "CredentialsError", "KinesisError",
                 "Unavailable", "CheckpointError", "ShutdownTimedOut"]:
        assert issubclass(getattr(kcpy, name), kcpy.Error)
    assert issubclass(kcpy.Error, Exception)


def test_reading_a_stream_that_does_not_exist_raises_stream_not_found(endpoint: str) -> None:
    consumer = kcpy.StreamConsumer("no-such-stream", endpoint_url=endpoint, **OPTIONS)
    with pytest.raises(kcpy.StreamNotFound, match="no-such-stream"):
        next(consumer)


def test_a_store_url_of_no_known_kind_raises_checkpoint_error(endpoint: str, make_stream: Callable[[int], str]) -> None:
    stream = make_stream(1)
    consumer = kcpy.StreamConsumer(stream, checkpoint_store="nosuch://where", endpoint_url=endpoint, **OPTIONS)
    with pytest.raises(kcpy.CheckpointError, match="nosuch"):
        next(consumer)


def test_a_database_that_cannot_be_reached_raises_checkpoint_error(
    endpoint: str, make_stream: Callable[[int], str]
) -> None:
    stream = make_stream(1)
    consumer = kcpy.StreamConsumer(stream, checkpoint_store="sqlite:///no/such/folder/x.db",
                                   endpoint_url=endpoint, **OPTIONS)
    with pytest.raises(kcpy.CheckpointError):
        next(consumer)


@pytest.mark.parametrize("args, kwargs", [
    ((123,), {}),
    (("s",), dict(consumer_name=5)),
    (("s",), dict(checkpoint="yes")),
    (("s",), dict(start_position=5)),
    (("s",), dict(region_name=["us-east-1"])),
])
def test_arguments_of_the_wrong_type_raise_type_error(args: Any, kwargs: Any) -> None:
    with pytest.raises(TypeError):
        kcpy.StreamConsumer(*args, **kwargs)


def test_an_unknown_keyword_raises_type_error() -> None:
    with pytest.raises(TypeError, match="verify"):
        kcpy.StreamConsumer("s", verify=False)  # type: ignore[call-arg]


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_position="EARLIEST"), "EARLIEST"),
    (dict(start_position=datetime.datetime(1960, 1, 1, tzinfo=datetime.timezone.utc)), "1970"),
    (dict(group=True), "leases"),
    (dict(group=True, checkpoint=True), "leases"),
    (dict(aws_access_key_id="only-the-key"), "aws_secret_access_key"),
    (dict(consumer_name=""), "consumer_name"),
])
def test_unusable_options_raise_invalid_config_before_anything_is_opened(
    kwargs: Any, message: str, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(kcpy.InvalidConfig, match=message):
        kcpy.StreamConsumer("s", **kwargs)
    assert not os.path.exists(tmp_path / "kcpy_checkpoint.db")


def test_a_group_on_a_store_without_leases_raises_invalid_config(endpoint: str, make_stream: Callable[[int], str],
                                                                  tmp_path: Any) -> None:
    stream = make_stream(1)
    consumer = kcpy.StreamConsumer(stream, checkpoint_store=f"sqlite://{tmp_path}/c.db", group=True,
                                   endpoint_url=endpoint, **OPTIONS)
    with pytest.raises(kcpy.InvalidConfig, match="leases"):
        next(consumer)
