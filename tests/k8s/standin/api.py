"""The HTTP face: routes of the REST subset, RBAC by bearer token, list/watch (chunked JSON
lines), pod logs; and :func:`rbac_rules_from`, which reads a Role's rules from a manifest."""

from __future__ import annotations

import json
import os
import re
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from tests.k8s.standin.common import ApiError, status_error
from tests.k8s.standin.selectors import field_selector, label_selector

if TYPE_CHECKING:
    from tests.k8s.standin.server import StandIn


_ROUTES = [
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs$"), "batch", "jobs", "collection"),
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)$"), "batch", "jobs", "item"),
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)/status$"), "batch", "jobs/status", "item"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods$"), "", "pods", "collection"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$"), "", "pods", "item"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$"), "", "pods/log", "item"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/eviction$"), "", "pods/eviction", "item"),
]
_LIST_KIND = {"jobs": ("JobList", "batch/v1"), "pods": ("PodList", "v1")}


def public_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as served: without the stand-in's private bookkeeping (``_`` keys)."""
    if isinstance(obj, dict):
        return {k: public_view(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [public_view(v) for v in obj]
    return obj


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not JSON") from None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        s = self.standin
        url = urlsplit(self.path)
        path = unquote(url.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        s.requests.append((method, path, url.query))
        try:
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                body = self._body()
            else:
                body = {}
            if path == "/version":
                major, minor = s.kube_version.split(".")[:2]
                return self._send_json(200, {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-standin",
                                             "platform": "linux/amd64"})
            for rx, group, resource, shape in _ROUTES:
                m = rx.match(path)
                if m:
                    break
            else:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            ns = m.group(1)
            name = m.group(2) if shape == "item" else None
            watching = q.get("watch") in ("true", "1")
            verb = {"GET": ("watch" if watching else "get" if shape == "item" else "list"), "POST": "create",
                    "DELETE": "delete", "PUT": "update", "PATCH": "patch"}[method]
            self._authorize(group, resource, verb, ns, name)
            if resource == "jobs" and shape == "collection":
                if method == "POST":
                    return self._send_json(201, public_view(s.create_job(ns, body)))
                if method == "GET":
                    return self._list_or_watch("jobs", ns, q, watching)
            elif resource == "jobs" and method == "GET":
                return self._send_json(200, public_view(self._must("jobs", ns, name)))
            elif resource == "jobs/status" and method == "GET":
                return self._send_json(200, public_view(self._must("jobs", ns, name)))
            elif resource == "jobs" and method == "DELETE":
                policy = body.get("propagationPolicy") or q.get("propagationPolicy")
                if body.get("orphanDependents") is True or q.get("orphanDependents") == "true":
                    policy = "Orphan"
                return self._send_json(200, s.delete_job(ns, name, policy))
            elif resource == "pods" and shape == "collection" and method == "GET":
                return self._list_or_watch("pods", ns, q, watching)
            elif resource == "pods" and method == "GET":
                return self._send_json(200, public_view(self._must("pods", ns, name)))
            elif resource == "pods/log" and method == "GET":
                return self._log(ns, name, q)
            elif resource == "pods/eviction" and method == "POST":
                self._must("pods", ns, name)
                s.evict(name, ns)
                return self._send_json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                             "status": "Success", "code": 201})
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({method} {resource})")
        except ApiError as e:
            self._send_json(e.code, e.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _authorize(self, group: str, resource: str, verb: str, ns: str, name: str | None) -> None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None or token not in self.standin.tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        rules = self.standin.tokens[token]
        if rules is None:
            return
        for r in rules:
            if ((group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
                    and (resource in r.get("resources", []) or "*" in r.get("resources", []))
                    and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
                    and (not r.get("resourceNames") or name in r["resourceNames"])):
                return
        res, _, sub = resource.partition("/")
        what = f'{res}{"." + group if group else ""}' + (f'/{sub}' if sub else "")
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "system:serviceaccount:{ns}:preproc-coordinator" '
                                         f'cannot {verb} resource "{res}" in API group "{group}" in the namespace "{ns}"',
                       {"kind": res, "group": group, "name": name} if name else {"kind": res, "group": group})

    def _must(self, resource: str, ns: str, name: str) -> dict[str, Any]:
        obj = self.standin.job(name, ns) if resource == "jobs" else next(
            (p for p in self.standin.pods(ns) if p["metadata"]["name"] == name), None)
        if obj is None:
            group = "batch" if resource == "jobs" else ""
            raise ApiError(404, "NotFound", f'{resource}{".batch" if group else ""} "{name}" not found',
                           {"name": name, "group": group, "kind": resource})
        return obj

    def _log(self, ns: str, name: str, q: dict[str, str]) -> None:
        pod = self._must("pods", ns, name)
        c = q.get("container")
        names = [x["name"] for x in pod["spec"]["containers"]]
        if c is not None and c not in names:
            raise ApiError(400, "BadRequest", f"container {c} is not valid for pod {name}")
        if pod["status"].get("phase") == "Pending":
            raise ApiError(400, "BadRequest", f'container "{names[0]}" in pod "{name}" is waiting to start: ContainerCreating')
        path = self.standin._log_path(pod)
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in q:
            n = int(q["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"])]
        self._send_text(200, data)

    def _list_or_watch(self, resource: str, ns: str, q: dict[str, str], watching: bool) -> None:
        s = self.standin
        lsel = label_selector(q.get("labelSelector"))
        fsel = field_selector(q.get("fieldSelector"))

        def match(obj: dict[str, Any]) -> bool:
            return (obj["metadata"]["namespace"] == ns and lsel(obj["metadata"].get("labels") or {}) and fsel(obj))

        if not watching:
            with s.lock:
                items = [public_view(o) for o in s.list(resource, ns) if match(o)]
                rv = s.rv
            kind, api = _LIST_KIND[resource]
            return self._send_json(200, {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": str(rv)},
                                         "items": items})
        self._watch(resource, q, match)

    def _watch(self, resource: str, q: dict[str, str], match: Callable[[dict[str, Any]], bool]) -> None:
        s = self.standin
        timeout_s = min(float(q.get("timeoutSeconds") or 1800), 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        since = q.get("resourceVersion")
        kind, api = _LIST_KIND[resource]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        deadline = time.monotonic() + timeout_s
        with s.cond:
            generation = s.watch_generation
            if since in (None, "", "0"):
                initial = [o for o in s.list(resource) if match(o)]
                cursor = s.rv
                pending = [{"type": "ADDED", "object": public_view(o)} for o in initial]
            else:
                cursor = int(since)
                if cursor < s.oldest_rv:
                    pending = [{"type": "ERROR", "object": status_error(
                        410, "Expired", f"too old resource version: {cursor} ({s.oldest_rv + 1})")}]
                    cursor = None
                else:
                    pending = []
        try:
            for ev in pending:
                send(ev)
            if cursor is None:
                return self._end_chunks()
            while True:
                with s.cond:
                    while True:
                        if s.watch_generation != generation or s._stopping:
                            self.close_connection = True
                            return  # cut without the last chunk: the client sees a broken stream
                        if cursor < s.oldest_rv:
                            batch = [{"type": "ERROR", "object": status_error(
                                410, "Expired", f"too old resource version: {cursor} ({s.oldest_rv + 1})")}]
                            cursor = None
                            break
                        batch = []
                        for rv, res, typ, obj in s.events:
                            if rv > cursor and res == resource:
                                if match(obj):
                                    batch.append({"type": typ, "object": public_view(obj)})
                        new_cursor = s.rv
                        if batch:
                            cursor = new_cursor
                            break
                        cursor = new_cursor
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        s.cond.wait(min(left, 0.5))
                for ev in batch:
                    send(ev)
                if cursor is None:
                    return self._end_chunks()
                if time.monotonic() >= deadline:
                    if bookmarks:
                        send({"type": "BOOKMARK", "object": {"kind": kind.removesuffix("List"), "apiVersion": api,
                                                             "metadata": {"resourceVersion": str(cursor)}}})
                    return self._end_chunks()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def rbac_rules_from(path: str | os.PathLike, role_name: str | None = None) -> list[dict[str, Any]]:
    """The ``rules`` of the (first or named) Role in a YAML file or kustomize output."""
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if doc and doc.get("kind") == "Role" and (role_name is None or doc["metadata"]["name"] == role_name):
            return doc["rules"]
    raise LookupError(f"no Role in {path}")
