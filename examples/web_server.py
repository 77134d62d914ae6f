"""A tiny web server that offloads jobs to Tasker (stdlib http.server).

    POST /jobs  {"cmd": ["sh", "-c", "..."], "timeout": "5s"}  -> 202 {"id": 42}
    GET  /jobs/42                                             -> 200 {"state": ..., "stdout": ...}

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/web_server.py [--port 8080]
     python examples/web_server.py --selftest   (serve on a free port, make a few requests, exit)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from taskerctl import Client, InvalidTask, QueueFull, TaskerError, TaskNotFound

CLIENT = Client()  # one client, shared by all request threads


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if self.path != "/jobs":
            return self._reply(404, {"error": "not found"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            handle = CLIENT.submit(body["cmd"], timeout=body.get("timeout"), env={})
        except (ValueError, KeyError, InvalidTask) as err:
            return self._reply(400, {"error": str(err)})
        except QueueFull as err:
            return self._reply(503, {"error": str(err)})
        except TaskerError as err:
            return self._reply(502, {"error": str(err)})
        self._reply(202, {"id": handle.id})

    def do_GET(self) -> None:
        prefix = "/jobs/"
        if not self.path.startswith(prefix) or not self.path[len(prefix) :].isdigit():
            return self._reply(404, {"error": "not found"})
        try:
            result = CLIENT.get(int(self.path[len(prefix) :]), output=True)
        except TaskNotFound as err:
            return self._reply(404, {"error": str(err)})
        self._reply(200, result.to_json(output=True))

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def selftest(server: ThreadingHTTPServer) -> None:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    req = urllib.request.Request(
        base + "/jobs",
        data=json.dumps({"cmd": ["sh", "-c", "echo offloaded"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        job = json.loads(resp.read())
    print("POST /jobs ->", job)
    for _ in range(100):
        with urllib.request.urlopen(f"{base}/jobs/{job['id']}", timeout=10) as resp:
            state = json.loads(resp.read())
        if state["state"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    print(f"GET /jobs/{job['id']} ->", state["state"], repr(state["stdout"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--selftest", action="store_true")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0 if args.selftest else args.port), Handler)
    if not args.selftest:
        print(f"serving on http://127.0.0.1:{server.server_address[1]}")
        server.serve_forever()
        return
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        selftest(server)
    finally:
        server.shutdown()
        CLIENT.close()


if __name__ == "__main__":
    main()
