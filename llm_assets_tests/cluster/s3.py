"""A throwaway S3-compatible object store on loopback: moto's server mode, with faults on demand.

``running_s3()`` starts ``python -m llm_assets_tests.cluster.s3 PORT`` (moto's S3 app behind
a fault-injecting WSGI middleware) and yields an :class:`S3`: its endpoint URL, a bucket,
and the environment with which s3fs, UPath and LanceDB reach it as users configure MinIO or
S3 (``AWS_ENDPOINT_URL`` and keys). :meth:`S3.refuse` makes the server answer the next
writes ``503 SlowDown`` (as S3 does when throttling) without passing them to moto; the
server counts what it refused and what it served.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from upath import UPath

from llm_assets_tests.cluster.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)
WRITES = ("PUT", "POST", "DELETE")


@dataclass(frozen=True)
class S3:
    url: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the store: s3fs and UPath read ``AWS_ENDPOINT_URL``;
        LanceDB reads it too, with ``AWS_ALLOW_HTTP`` for a plain-HTTP endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def _control(self, action: str, **query: object) -> dict:
        data = json.dumps(query).encode()
        request = urllib.request.Request(f"{self.url}/__faults__/{action}", data=data, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def refuse(self, writes: int, *, prefix: str = "", methods: tuple[str, ...] = WRITES) -> None:
        """Answer the next ``writes`` requests (``methods``, keys under ``prefix``) ``503 SlowDown``."""
        self._control("refuse", writes=writes, prefix=prefix, methods=list(methods))

    def stats(self) -> dict:
        """``refused`` and ``served`` requests by method, and the refusals still to come."""
        return self._control("stats")

    def path(self, uri: str) -> UPath:
        """``uri`` (``s3://…``) on this store, for this process: its endpoint and keys given
        explicitly, so neither the environment nor s3fs's cache of another test's store
        (instances are cached by their arguments) decides where it goes."""
        return UPath(uri, endpoint_url=self.url, key="testing", secret="testing")

    def read_frame(self, uri: str) -> pd.DataFrame:
        """The pickled frame at ``uri``, as the I/O manager stored it."""
        with self.path(uri).open("rb") as file:
            return pd.read_pickle(file)

    def keys(self, prefix: str = "") -> list[str]:
        """The keys of the bucket under ``prefix`` (moto's own listing)."""
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.url, key="testing", secret="testing", skip_instance_cache=True)
        root = f"{self.bucket}/{prefix}".rstrip("/")
        return sorted(p.removeprefix(f"{self.bucket}/") for p in fs.find(root)) if fs.exists(root) else []


@contextlib.contextmanager
def running_s3(bucket: str = "llm-assets") -> Iterator[S3]:
    """A fresh S3 server with ``bucket`` for the duration of the block."""
    pytest.importorskip("moto", reason="moto is not installed: pip install 'moto[server]' (the dev group has it)")
    pytest.importorskip("s3fs", reason="s3fs is not installed: pip install s3fs (the dev group has it)")
    port = free_port()
    command = [sys.executable, "-m", "llm_assets_tests.cluster.s3", str(port)]
    # moto logs every request: to DEVNULL, since a pipe nobody reads stops the server when full
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = S3(f"http://127.0.0.1:{port}", bucket)
    try:
        while True:  # waits on no clock: a busy machine only makes it slower
            with contextlib.suppress(OSError):
                store.stats()
                break
            assert process.poll() is None, f"the S3 server exited ({process.returncode})"
            time.sleep(0.05)
        request = urllib.request.Request(f"{store.url}/{bucket}", method="PUT")
        urllib.request.urlopen(request, timeout=30).close()  # the bucket (moto checks no signature)
        yield store
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _faulty(app):
    """``app`` behind the ``/__faults__/`` controls: refused writes, and counts."""
    from werkzeug.wsgi import get_input_stream

    state = {"writes": 0, "prefix": "", "methods": set(WRITES), "refused": {}, "served": {}}

    def wrapped(environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path.startswith("/__faults__/"):
            query = json.loads(get_input_stream(environ).read() or b"{}")
            if path.endswith("/refuse"):
                state.update(writes=int(query["writes"]), prefix=query.get("prefix", ""))
                state["methods"] = set(query.get("methods", WRITES))
            body = json.dumps({k: v for k, v in state.items() if k != "methods"}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        key = path.lstrip("/").partition("/")[2]
        if state["writes"] and method in state["methods"] and key.startswith(state["prefix"]):
            state["writes"] -= 1
            state["refused"][method] = state["refused"].get(method, 0) + 1
            get_input_stream(environ).read()  # drain the body: the connection stays usable
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(SLOW_DOWN)))]
            start_response("503 Slow Down", headers)
            return [SLOW_DOWN]
        state["served"][method] = state["served"].get(method, 0) + 1
        return app(environ, start_response)

    return wrapped


def main(port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = _faulty(DomainDispatcherApplication(create_backend_app))
    run_simple("127.0.0.1", port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main(int(sys.argv[1]))
