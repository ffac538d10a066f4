"""Fixtures of the Python package's tests: the emulator (kinesis-mock, at
KCPY_KINESIS_ENDPOINT, started by scripts/python-test), fresh streams on it,
and scripts run as separate Python processes."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import boto3
import pytest

REGION = "us-east-1"
OPTIONS: Dict[str, Any] = dict(region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture(scope="session")
def endpoint() -> str:
    value = os.environ.get("KCPY_KINESIS_ENDPOINT")
    if not value:
        pytest.fail("KCPY_KINESIS_ENDPOINT is not set: run scripts/python-test")
    return value


@pytest.fixture(scope="session")
def kinesis(endpoint: str) -> Any:
    return boto3.client("kinesis", endpoint_url=endpoint, **OPTIONS)


@pytest.fixture(scope="session")
def aws_env(endpoint: str) -> Dict[str, str]:
    """The environment a boto3 user has: endpoint, credentials and region
    from the usual variables, nothing passed in code."""
    env = dict(os.environ)
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_active(kinesis: Any, name: str) -> None:
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig=dict(Delay=0.2, MaxAttempts=150))


@pytest.fixture
def make_stream(kinesis: Any) -> Callable[[int], str]:
    def make(shards: int = 1) -> str:
        name = f"py-{uuid.uuid4().hex[:12]}"
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        wait_active(kinesis, name)
        return name

    return make


def put(kinesis: Any, stream: str, values: List[str], keys: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Puts `values` (as the data and, unless `keys` are given, the partition
    key) in order, and returns what Kinesis answered for each."""
    answers = []
    for i, value in enumerate(values):
        key = keys[i] if keys else value
        answers.append(kinesis.put_record(StreamName=stream, PartitionKey=key, Data=value.encode()))
    return answers


class Script:
    """A Python program run as its own process, whose printed lines are read
    as they come."""

    def __init__(self, source: str, env: Dict[str, str], cwd: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", source], env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stderr: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def read(self, count: int, timeout: float = 60.0) -> List[str]:
        """The next `count` lines; fails if the program ends or stays silent."""
        deadline = time.monotonic() + timeout
        got: List[str] = []
        while len(got) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"got {len(got)} of {count} lines in {timeout} s; stderr: {''.join(self.stderr)}")
            if line is None:
                pytest.fail(f"the program ended after {len(got)} of {count} lines "
                            f"(exit {self.process.wait()}); stderr: {''.join(self.stderr)}")
            got.append(line)
        return got

    def interrupt(self) -> int:
        """Ctrl-C, then its exit status once it has ended."""
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(timeout=60)
        self._stderr_reader.join(timeout=10)
        return status

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=60)

    def rest(self) -> List[str]:
        """The lines printed after those read, once it has ended."""
        self.process.wait(timeout=60)
        lines: List[str] = []
        while True:
            line = self.lines.get(timeout=10)
            if line is None:
                return lines
            lines.append(line)


@pytest.fixture
def run_script(aws_env: Dict[str, str], tmp_path: Any) -> Iterator[Callable[..., Script]]:
    scripts: List[Script] = []

    def run(source: str, **extra_env: str) -> Script:
        env = dict(aws_env)
        env.update(extra_env)
        script = Script(source, env, str(tmp_path))
        scripts.append(script)
        return script

    yield run
    for script in scripts:
        if script.process.poll() is None:
            script.kill()
