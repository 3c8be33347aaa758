"""A Hugging Face Hub look-alike on 127.0.0.1 for push/pull tests: the endpoints ``huggingface_hub`` calls to create
a repository, commit files uploaded inline (``uploadMode: regular``), show a revision, list its tree and resolve a
file. Repositories live in memory, one commit list each; nothing leaves the machine."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from urllib.parse import unquote, urlparse


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}  # repo -> [(sha, files)]
        self.requests: list[str] = []
        self.cards: list[str] = []  # README.md contents sent for validation

    def head(self, repo: str) -> tuple[str, dict[str, bytes]] | None:
        commits = self.repos.get(repo)
        return commits[-1] if commits else None

    def at(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        for sha, files in reversed(self.repos.get(repo, [])):
            if revision in ("main", sha):
                return sha, files
        return None


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubHandler(http.server.BaseHTTPRequestHandler):
    state: HubState

    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args) -> None:
        pass

    # ---- writes -------------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.state.requests.append(f"POST {path}")
        if path == "/api/repos/create":
            body = json.loads(self._body())
            repo = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if repo in self.state.repos:
                return self._error(409, "You already created this model repo")
            self.state.repos[repo] = []
            return self._json(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if path == "/api/validate-yaml":  # the model card's front matter must be a YAML mapping
            import yaml

            content = json.loads(self._body())["content"]
            self.state.cards.append(content)
            front = content.split("---")[1] if content.startswith("---") else ""
            try:
                ok = isinstance(yaml.safe_load(front), dict)
            except yaml.YAMLError:
                ok = False
            return self._json(200 if ok else 400, {"warnings": []} if ok else {"error": "invalid YAML metadata"})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
        if match:
            body = json.loads(self._body())
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in body["files"]]})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
        if match:
            repo = match.group(1)
            if repo not in self.state.repos:
                return self._error(404, "Repository not found")
            head = self.state.head(repo)
            files = dict(head[1]) if head else {}
            for line in self._body().decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                elif entry["key"] == "deletedFile":
                    files.pop(entry["value"]["path"], None)
                elif entry["key"] in ("lfsFile", "copyFile"):
                    return self._error(400, "this test hub takes inline uploads only")
            sha = hashlib.sha1(json.dumps(sorted((k, _git_blob_sha(v)) for k, v in files.items())).encode()
                               + str(len(self.state.repos[repo])).encode()).hexdigest()
            self.state.repos[repo].append((sha, files))
            return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}",
                                    "commitOid": sha, "success": True})
        self._error(404, f"no such endpoint {path}")

    # ---- reads --------------------------------------------------------------------------------------------
    def _resolve(self, send_body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.state.requests.append(f"{self.command} {path}")
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
        if match:
            found = self.state.at(match.group(1), match.group(2))
            if found is None:
                return self._error(404, "Repository not found")
            sha, files = found
            return self._json(200, {"id": match.group(1), "modelId": match.group(1), "sha": sha, "private": False,
                                    "siblings": [{"rfilename": name} for name in sorted(files)]})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if match:
            found = self.state.at(match.group(1), match.group(2))
            if found is None:
                return self._error(404, "Repository not found")
            entries = [{"type": "file", "path": name, "size": len(data), "oid": _git_blob_sha(data)}
                       for name, data in sorted(found[1].items())]
            return self._json(200, entries)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            found = self.state.at(match.group(1), match.group(2))
            if found is None or match.group(3) not in found[1]:
                return self._error(404, "Entry not found")
            data = found[1][match.group(3)]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{_git_blob_sha(data)}"')
            self.send_header("X-Repo-Commit", found[0])
            self.end_headers()
            if send_body:
                self.wfile.write(data)
            return None
        self._error(404, f"no such endpoint {path}")

    def do_GET(self) -> None:
        self._resolve(True)

    def do_HEAD(self) -> None:
        self._resolve(False)


def start_hub() -> tuple[http.server.ThreadingHTTPServer, HubState, str]:
    state = HubState()
    handler = type("BoundHubHandler", (HubHandler,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}"
