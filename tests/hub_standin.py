"""A local stand-in for the few Hugging Face Hub endpoints an upload uses.

huggingface_hub talks to it unchanged (`HfApi(endpoint=...)`): repo creation, branches,
card metadata validation, preupload (every file "regular") and the commit, whose NDJSON
payload carries the files base64-encoded. It records the repos, branches and files.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.branches: list[tuple[str, str]] = []
        self.files: dict[tuple[str, str], bytes] = {}  # (repo, path) -> content
        self.headers_seen: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding") == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().strip(), 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                self._send({})

            def do_POST(self) -> None:
                hub.headers_seen.append(dict(self.headers))
                body = self._body()
                path = self.path
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request['organization']}/{request['name']}"
                    hub.repos[repo] = request
                    return self._send({"url": f"{hub.endpoint}/{repo}", "name": repo})
                repo = "/".join(path.split("/")[3:5])
                if "/branch/" in path:
                    hub.branches.append((repo, path.rsplit("/", 1)[1]))
                elif "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._send(
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        }
                    )
                elif "/commit/" in path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.files[repo, value["path"]] = base64.b64decode(value["content"])
                    url = f"{hub.endpoint}/{repo}/commit/{'0' * 40}"
                    return self._send({"commitUrl": url, "commitOid": "0" * 40})
                return self._send({})

        return Handler
