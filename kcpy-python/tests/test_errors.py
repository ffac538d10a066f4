"""Bad input raises the documented exceptions, never a crash."""
import datetime
import inspect
import os
import sqlite3
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
    with pytest.raises(kcpy.StreamNotFound, match="no-such-stream") as raised:
        next(consumer)
    # Kinesis's answer once, not once per layer that carried it.
    assert str(raised.value).count("ResourceNotFoundException") == 1, str(raised.value)


def test_no_region_anywhere_raises_invalid_config_at_once(
    endpoint: str, make_stream: Callable[[int], str], monkeypatch: Any, tmp_path: Any
) -> None:
    stream = make_stream(1)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    consumer = kcpy.StreamConsumer(stream, endpoint_url=endpoint, aws_access_key_id="test",
                                   aws_secret_access_key="test")
    # Not retried as if Kinesis were down: every call would fail to sign.
    with pytest.raises(kcpy.InvalidConfig, match="region"):
        next(consumer)


def test_checkpoint_takes_any_truthy_value_as_the_old_package_did(
    kinesis: Any, endpoint: str, make_stream: Callable[[int], str], monkeypatch: Any, tmp_path: Any
) -> None:
    stream = make_stream(1)
    kinesis.put_record(StreamName=stream, PartitionKey="k", Data=b"a")
    kinesis.put_record(StreamName=stream, PartitionKey="k", Data=b"b")
    monkeypatch.chdir(tmp_path)
    # The stubs say bool, as new code should; old code may pass 1.
    with kcpy.StreamConsumer(stream, "app", 1, endpoint_url=endpoint, **OPTIONS) as consumer:  # type: ignore[arg-type]
        assert [next(consumer)["Data"], next(consumer)["Data"]] == [b"a", b"b"]
    # "a" was processed (the next record was asked for): its checkpoint is in the default file.
    with sqlite3.connect(tmp_path / "kcpy_checkpoint.db") as db:
        assert db.execute("SELECT count(*) FROM kcpy WHERE consumer_name = 'app'").fetchone() == (1,)


def test_the_signature_shows_the_defaults() -> None:
    text = str(inspect.signature(kcpy.StreamConsumer))
    assert "checkpoint_db_file_path='kcpy_checkpoint.db'" in text and "checkpoint=False" in text, text


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
    (dict(checkpoint_store="not a url"), "not a URL"),
    (dict(endpoint_url="localhost:4567"), "http"),
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
