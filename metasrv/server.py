"""The Starlette application: routes that translate HTTP into catalog calls and back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from metasrv import api, tomlcodec
from metasrv.bytecache import ByteCache
from metasrv.catalog import Catalog
from metasrv.errors import InvalidInput, MetasrvError, NotFound
from metasrv.model import MetaConfig
from metasrv.names import parse_version
from metasrv.storage import CommitId, Storage

MIME_JSON = "application/json"
CONFIG_PATH = "metasrv.toml"
BODY_CACHE_BYTES = 64 * 1024 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
# A moving ref may gain a commit at any moment; a short max-age bounds how stale a cache can be.
MOVING = "public, max-age=10"
_FULL_SHA_LENGTH = 40


@dataclass(frozen=True, slots=True)
class _Pin:
    commit_id: CommitId
    immutable: bool


class ReadApi:
    """The read API's endpoints over one catalog, with encoded bodies cached by object id."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.bodies = ByteCache(BODY_CACHE_BYTES)

    def pin(self, request: Request) -> _Pin:
        """Resolve ``?at=`` (or the served branch now) to a commit."""
        at = request.query_params.get("at")
        if at is None:
            return _Pin(self.catalog.storage.resolve(None), immutable=False)
        if not at:
            raise InvalidInput("'at' is empty: expected a commit sha, a branch or a tag")
        commit_id = self.catalog.storage.resolve(at)
        return _Pin(commit_id, immutable=len(at) == _FULL_SHA_LENGTH and at == commit_id)

    async def root(self, request: Request) -> Response:
        pin = self.pin(request)
        config_bytes = self.catalog.storage.read(pin.commit_id, CONFIG_PATH)
        config = (
            MetaConfig.from_toml(tomlcodec.loads(config_bytes, where=CONFIG_PATH), CONFIG_PATH)
            if config_bytes is not None
            else MetaConfig()
        )
        body = {
            "api-version": api.API_VERSION,
            "source": config.source_url,
            "branch": request.query_params.get("at") or self.catalog.storage.head_branch(),
            "endpoints": {
                "projects": "/v1/projects",
                "project": "/v1/projects/{name}",
                "release": "/v1/projects/{name}/{version}",
            },
        }
        return _respond(request, pin, _encode(body), etag=f"root-{pin.commit_id}")

    async def projects(self, request: Request) -> Response:
        pin = self.pin(request)
        since = request.query_params.get("since")
        if since is None:
            names = self.catalog.list_projects(pin.commit_id)
            return _respond(request, pin, _encode(api.render_listing(names)), f"list-{pin.commit_id}")
        if not since:
            raise InvalidInput("'since' is empty: expected a commit sha")
        since_id = self.catalog.storage.resolve(since)
        changes = self.catalog.changed_since(since_id, pin.commit_id)
        body = _encode(api.render_changes(since_id, changes))
        return _respond(request, pin, body, f"since-{since_id}-{pin.commit_id}")

    async def project(self, request: Request) -> Response:
        pin = self.pin(request)
        normalized_name, blob_id = self.catalog.project_blob(pin.commit_id, request.path_params["name"])
        key = ("project", blob_id)
        body = self.bodies.get(key)
        if body is None:
            project = self.catalog.parse_project(blob_id, normalized_name)
            body = _encode(api.render_project(project))
            self.bodies.put(key, body)
        return _respond(request, pin, body, f"{pin.commit_id}-{blob_id}")

    async def release(self, request: Request) -> Response:
        pin = self.pin(request)
        normalized_name, blob_id = self.catalog.project_blob(pin.commit_id, request.path_params["name"])
        version_text = request.path_params["version"]
        key = ("release", blob_id, version_text)
        body = self.bodies.get(key)
        if body is None:
            project = self.catalog.parse_project(blob_id, normalized_name)
            release = project.find_release(parse_version(version_text))
            if release is None:
                raise NotFound(f"unknown version {version_text!r} of {project.name!r}")
            body = _encode(api.render_release(project, release))
            self.bodies.put(key, body)
        return _respond(request, pin, body, f"{pin.commit_id}-{blob_id}")


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _respond(request: Request, pin: _Pin, body: bytes, etag: str) -> Response:
    """Answer with ``at`` spliced into the cached body, an ETag, and the pin's cache policy."""
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": IMMUTABLE if pin.immutable else MOVING,
        "X-Metasrv-At": pin.commit_id,
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    # Bodies are cached without the commit so one entry serves every commit holding the same blob.
    content = b'{"at":"' + pin.commit_id.encode() + b'",' + body[1:]
    return Response(content, media_type=MIME_JSON, headers=headers)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


async def _metasrv_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MetasrvError)
    return _error_response(exc.http_status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "unknown path" if exc.status_code == 404 else str(exc.detail)
    return _error_response(exc.status_code, message)


def _error_response(status: int, message: str) -> Response:
    body = _encode({"error": message, "status": status})
    return Response(body, status_code=status, media_type=MIME_JSON)


def create_app(repo_path: Path | str) -> Starlette:
    """Build the application serving the meta repository at ``repo_path``."""
    read_api = ReadApi(Catalog(Storage(repo_path)))
    routes = [
        Route("/", read_api.root),
        Route("/v1/projects", read_api.projects),
        Route("/v1/projects/{name}", read_api.project),
        Route("/v1/projects/{name}/{version}", read_api.release),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={MetasrvError: _metasrv_error, HTTPException: _http_error},
    )
