"""A local server that speaks the part of the Hugging Face Hub HTTP API that `huggingface_hub` uses.

No installable package offers one (PyPI's hf-local-hub holds only a client; olah serves downloads only), so the tests
run the real `huggingface_hub` client, unpatched, against this: create repo, whoami, preupload, Git LFS batch upload
(basic transfer), commit (NDJSON), repo info and tree, resolve with HEAD and ranges, and validate-yaml. Everything is
kept in memory. A request with an unknown token gets 401; a private repo is invisible without its owner's token.

The client must be told before it is imported: `HF_ENDPOINT=<url>` and `HF_HUB_DISABLE_XET=1` (Xet uploads need a
CAS server; the LFS path does not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".png", ".npz")
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, owner: str, private: bool):
        self.repo_id, self.owner, self.private = repo_id, owner, private
        self.files: dict[str, dict] = {}  # path -> {"data": bytes, "lfs": oid or None}
        self.commits: list[str] = []
        self._commit({".gitattributes": {"data": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", "lfs": None}})

    @property
    def sha(self) -> str:
        return self.commits[-1]

    def _commit(self, changes: dict, deletions=()) -> str:
        self.files.update(changes)
        for path in deletions:
            for key in [k for k in self.files if k == path or k.startswith(path.rstrip("/") + "/")]:
                del self.files[key]
        state = json.dumps({p: f["lfs"] or _git_blob_sha(f["data"]) for p, f in sorted(self.files.items())})
        sha = hashlib.sha1(f"{len(self.commits)}:{state}:{time.time_ns()}".encode()).hexdigest()
        self.commits.append(sha)
        return sha


class LocalHub:
    """In-memory Hub state plus the HTTP server; `url` is what HF_ENDPOINT must be set to."""

    def __init__(self, tokens: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.tokens = tokens or {"hf_local_write_token": "alice"}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> LocalHub:
        if not self.thread.is_alive():
            self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # --- plumbing ---------------------------------------------------------------------------------------------------

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            raise _HubError(401, "Invalid credentials in Authorization header", "InvalidCredentials")
        return self.hub.tokens[token]

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, head)

    def _repo(self, repo_id: str, user: str | None, write: bool = False) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            # As the Hub: anonymous requests get 401, authenticated ones without access get 404.
            status = 401 if user is None else 404
            raise _HubError(status, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
        if write and user != repo.owner:
            raise _HubError(403, f"You don't have the rights to write to {repo_id}.")
        return repo

    def _dispatch(self, method: str) -> None:
        path = urlparse(self.path).path
        self.hub.requests.append((method, path))
        try:
            user = self._user()
            with self.hub.lock:
                for pattern, handler in _ROUTES:
                    if pattern[0] == method or (pattern[0] == "GET" and method == "HEAD"):
                        match = re.fullmatch(pattern[1], path)
                        if match:
                            return handler(
                                self,
                                user,
                                method == "HEAD",
                                **{k: unquote(v) for k, v in match.groupdict().items() if v is not None},
                            )
            raise _HubError(404, f"No route for {method} {path}")
        except _HubError as error:
            headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            body = json.dumps({"error": error.message}).encode()
            self._send(error.status, body, headers, head=method == "HEAD")

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    # --- API --------------------------------------------------------------------------------------------------------

    def whoami(self, user, head):
        if user is None:
            raise _HubError(401, "Invalid username or password.")
        self._json(
            200,
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            },
            head,
        )

    def create_repo(self, user, head):
        if user is None:
            raise _HubError(401, "You must be authenticated to create a repo.")
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if payload.get("organization") not in (None, user):
            raise _HubError(403, f"You don't have the rights to create a repo under {payload['organization']}.")
        if repo_id in self.hub.repos:
            raise _HubError(409, "You already created this model repo")
        private = payload.get("private", False) or payload.get("visibility") == "private"
        self.hub.repos[repo_id] = Repo(repo_id, user, bool(private))
        self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self, user, head):
        json.loads(self._body() or b"{}")
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, user, head, repo, revision):
        self._repo(repo, user, write=True)
        files = json.loads(self._body())["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] > 1_000_000 else "regular",
                "shouldIgnore": False,
            }
            for f in files
        ]
        self._json(200, {"files": modes, "commitOid": self.hub.repos[repo].sha})

    def lfs_batch(self, user, head, repo):
        self._repo(repo, user, write=True)
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def lfs_upload(self, user, head, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HubError(400, "LFS object does not match its oid")
        self.hub.lfs[oid] = data
        self._send(200)

    def commit(self, user, head, repo, revision):
        target = self._repo(repo, user, write=True)
        summary, changes, deletions = "", {}, []
        for line in self._body().decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                changes[value["path"]] = {"data": base64.b64decode(value["content"]), "lfs": None}
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs:
                    raise _HubError(422, f"LFS object {value['oid']} was never uploaded")
                changes[value["path"]] = {"data": self.hub.lfs[value["oid"]], "lfs": value["oid"]}
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append(value["path"])
        sha = target._commit(changes, deletions)
        self._json(
            200,
            {
                "commitUrl": f"{self.hub.url}/{repo}/commit/{sha}",
                "commitOid": sha,
                "commitMessage": summary,
                "success": True,
            },
        )

    def repo_info(self, user, head, repo, revision=None):
        target = self._repo(repo, user)
        self._check_revision(target, revision)
        siblings = [{"rfilename": p, "size": len(f["data"])} for p, f in sorted(target.files.items())]
        self._json(
            200,
            {
                "_id": repo,
                "id": repo,
                "modelId": repo,
                "author": target.owner,
                "sha": target.sha,
                "private": target.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
            },
            head,
        )

    def tree(self, user, head, repo, revision, path=""):
        target = self._repo(repo, user)
        self._check_revision(target, revision)
        query = parse_qs(urlparse(self.path).query)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries, folders = [], set()
        for file_path, f in sorted(target.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entry = {"type": "file", "path": file_path, "size": len(f["data"]), "oid": _git_blob_sha(f["data"])}
            if f["lfs"]:
                entry["lfs"] = {"oid": f["lfs"], "size": len(f["data"]), "pointerSize": 134}
            entries.append(entry)
        if recursive:
            for file_path in target.files:
                parts = file_path[len(prefix) :].split("/")[:-1] if file_path.startswith(prefix) else []
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        self._json(200, entries, head)

    def resolve(self, user, head, repo, revision, path):
        target = self._repo(repo, user)
        self._check_revision(target, revision)
        if path not in target.files:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        f = target.files[path]
        data = f["data"]
        headers = {
            "X-Repo-Commit": target.sha,
            "ETag": f'"{_git_blob_sha(data)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{f["lfs"]}"', "X-Linked-Size": len(data)})
        status, body = 200, data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        headers["Content-Length"] = len(body)
        self._send(status, body, headers, head)

    @staticmethod
    def _check_revision(repo: Repo, revision: str | None) -> None:
        if revision not in (None, "main") and unquote(revision) not in repo.commits:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


_ROUTES = [
    (("GET", r"/api/whoami-v2"), _Handler.whoami),
    (("POST", r"/api/repos/create"), _Handler.create_repo),
    (("POST", r"/api/validate-yaml"), _Handler.validate_yaml),
    (("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)"), _Handler.preupload),
    (("POST", rf"/{REPO}\.git/info/lfs/objects/batch"), _Handler.lfs_batch),
    (("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), _Handler.lfs_upload),
    (("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)"), _Handler.commit),
    (("GET", rf"/api/models/{REPO}/revision/(?P<revision>[^/]+)"), _Handler.repo_info),
    (("GET", rf"/api/models/{REPO}"), _Handler.repo_info),
    (("GET", rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?"), _Handler.tree),
    (("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)"), _Handler.resolve),
]
