"""`make demo`: serve the example lm bundle, send it one request, keep serving.

Starts `rscore serve` on 127.0.0.1, waits until it is ready, prints one request and
its answer, then serves until Ctrl-C. The server's JSON logs go to a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "examples" / "build" / "mtcars-lm"
REQUEST = ROOT / "examples" / "requests" / "mtcars-lm.json"
LOG = ROOT / ".venv" / "demo-server.log"


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    metrics_port = int(os.environ.get("METRICS_PORT", "9090"))
    base = f"http://127.0.0.1:{port}"
    command = [
        str(ROOT / ".venv" / "bin" / "rscore"), "serve", str(BUNDLE),
        "--port", str(port), "--metrics-port", str(metrics_port), "--auth", "none",
    ]  # fmt: skip
    with LOG.open("wb") as log:
        server = subprocess.Popen(command, stderr=log)
        try:
            if not wait_ready(base, server):
                print(f"the server did not become ready; see {LOG}", file=sys.stderr)
                return 1
            body = REQUEST.read_bytes()
            print(f"POST {base}/score\n{body.decode().strip()}\n")
            request = urllib.request.Request(
                f"{base}/score", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.load(response)
                request_id = response.headers["x-request-id"]
            print(f"HTTP 200, x-request-id {request_id}\n{json.dumps(answer)}\n")
            print(
                f"Serving on {base} (metrics: http://127.0.0.1:{metrics_port}/metrics, "
                f"logs: {LOG}). Try:\n"
                f"  curl -s {base}/score -H 'Content-Type: application/json' "
                f"-d @{REQUEST.relative_to(ROOT)}\n"
                f"  curl -s {base}/swagger.json\n"
                "Ctrl-C to stop."
            )
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                server.wait(30)
    return 0


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float = 120) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
