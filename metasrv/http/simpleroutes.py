"""Routes of the simple repository API: translate installer requests into SimpleApi calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from packaging.utils import NormalizedName
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from metasrv.errors import MetadataPending, NotFound
from metasrv.http import readapi
from metasrv.http.bytecache import ByteCache, cached_when_short
from metasrv.http.hotpath import etag_matches, file_etag
from metasrv.http.listings import Listings
from metasrv.http.pulling import PulledReads
from metasrv.http.simplepages import negotiate, render_json, render_project_html
from metasrv.http.views import METADATA_SUFFIX, Mount, SimpleApi
from metasrv.index.pages import MIME_HTML, MIME_SIMPLE_JSON
from metasrv.names import parse_version
from metasrv.repo.storage import BlobId

PAGE_CACHE_BYTES = 64 * 1024 * 1024  # numpy's page is ~2.4 MB in JSON
IMMUTABLE = readapi.IMMUTABLE.decode()
MOVING = readapi.MOVING.decode()
# Each view is reachable plainly, with understandings, pinned, or both; and each with a cooldown,
# spelled in the path because installers drop an index URL's query string.
PREFIXES = tuple(
    f"{base}{cooldown}"
    for base in ("", "/u/{understandings}", "/at/{commit}", "/at/{commit}/u/{understandings}")
    for cooldown in ("", "/cooldown/{cooldown}")
)


# Installers send the same few Accept headers: each is negotiated once (a refused one raises
# again each time).
_negotiate = cached_when_short(negotiate)


def _media_type(content_type: str) -> str:
    return f"{content_type}; charset=utf-8" if content_type == MIME_HTML else content_type


class SimpleRoutes:
    """The simple API's endpoints over one SimpleApi."""

    def __init__(
        self, simple_api: SimpleApi, listings: Listings, pulled: PulledReads | None = None
    ) -> None:
        self.api = simple_api
        # The root page at PyPI scale is ~40 MB: built once per data tree, off the loop.
        self.listings = listings
        self.pulled = pulled or PulledReads(None)
        self._pages = ByteCache(PAGE_CACHE_BYTES)  # project pages of views without understandings

    def routes(self) -> list[Route]:
        """Return the route table: index, project page and files under every prefix."""
        table = []
        for prefix in PREFIXES:
            table += [
                Route(f"{prefix}/simple/", self.index),
                Route(f"{prefix}/simple/{{project}}/", self.project),
                Route(f"{prefix}/files/{{project}}/{{filename}}", self.file),
            ]
        return table

    async def _mount(self, request: Request) -> Mount:
        spec = request.path_params.get("understandings")
        if spec is not None:
            await self.api.prepare(request.path_params.get("commit"), spec)
        return self._view(request)

    def _view(self, request: Request) -> Mount:
        """Return the request's view at the served head now (its mirrors already prepared)."""
        return self.api.mount(
            request.path_params.get("commit"),
            request.path_params.get("understandings"),
            request.scope.get("root_path", ""),
            request.path_params.get("cooldown"),
        )

    def _headers(self, mount: Mount, etag: str, content_type: str | None = None) -> dict[str, str]:
        headers = {
            "Cache-Control": IMMUTABLE if mount.immutable else MOVING,
            "ETag": f'"{etag}"',
            "X-Metasrv-At": mount.commit_id,
        }
        if content_type is not None:
            headers["Vary"] = "Accept"
        return headers

    async def index(self, request: Request) -> Response:
        """Answer the root page listing every project."""
        mount = await self._mount(request)
        content_type = _negotiate(request.headers.get("accept"), request.query_params.get("format"))
        # The page lists names only: it is the data tree's, whichever commit holds that tree.
        tree_id = self.api.catalog.data_tree(mount.commit_id)
        headers = self._headers(mount, f"root-{tree_id}-{content_type}", content_type)
        if etag_matches(request.headers.get("if-none-match", ""), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        body = await self.listings.index_page(mount.commit_id, tree_id, content_type)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1 << 20):
                yield body[start : start + (1 << 20)]

        return StreamingResponse(chunks(), media_type=_media_type(content_type), headers=headers)

    async def project(self, request: Request) -> Response:
        """Answer a project's page, redirecting other spellings to the normalized one."""
        mount = await self._mount(request)
        content_type = _negotiate(request.headers.get("accept"), request.query_params.get("format"))
        name, at = request.path_params["project"], request.path_params.get("commit")

        def locate() -> tuple[Mount, NormalizedName, BlobId]:
            mount = self._view(request)
            return mount, *self.api.catalog.project_blob(mount.commit_id, name)

        mount, normalized_name, blob_id = await self.pulled.read(at, name, locate)
        if self.pulled.active(at) and self.api.needs_metadata(mount, name):
            await self.pulled.complete(at, name, None)
            mount, normalized_name, blob_id = locate()
        if name != normalized_name:
            # PEP 503: the canonical URL uses the normalized name.
            target = request.url.path.replace(f"/simple/{name}/", f"/simple/{normalized_name}/")
            if request.url.query:
                target += f"?{request.url.query}"  # ?format= must survive the redirect
            return RedirectResponse(target, status_code=301)
        if self.api.commit_free(mount, name, blob_id):
            etag = file_etag(blob_id, content_type)  # later commits keep it, and its 304s
        else:
            etag = f"{mount.key}-{blob_id}-{content_type}"
        # A view without understandings rewrites no wheel: its page is a function of the ETag.
        body = self._pages.get(etag) if not mount.pinned else None
        page, left_out = ({}, 0) if body is not None else await self.api.project(mount, name)
        if left_out:
            # Files waiting for their rewritten wheel: a page that will change, never immutable.
            mount = replace(mount, immutable=False)
            etag += f"-without-{left_out}"
        headers = self._headers(mount, etag, content_type)
        headers.update(self.pulled.headers(at, name))
        if etag_matches(request.headers.get("if-none-match", ""), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        if body is None:
            render = render_json if content_type == MIME_SIMPLE_JSON else render_project_html
            body = render(page)
            if not mount.pinned:
                self._pages.put(etag, body)
        return Response(body, media_type=_media_type(content_type), headers=headers)

    def _located_mount(self, request: Request, name: str) -> Mount:
        mount = self._view(request)
        self.api.catalog.project_blob(mount.commit_id, name)  # an unknown project is pulled
        return mount

    async def file(self, request: Request) -> Response:
        """Answer a file: its .metadata, a rewritten wheel, or a redirect to the source."""
        name, filename = request.path_params["project"], request.path_params["filename"]
        at = request.path_params.get("commit")
        await self._mount(request)  # prepares the mirrors its understandings need
        mount = await self.pulled.read(at, name, lambda: self._located_mount(request, name))
        if filename.endswith(METADATA_SUFFIX):
            filename = filename[: -len(METADATA_SUFFIX)]
            try:
                content = await self.api.metadata_file(mount, name, filename)
            except MetadataPending as pending:
                version = parse_version(pending.version_text)
                if not await self.pulled.complete(at, name, version, filename):
                    raise
                mount = self._view(request)
                content = await self.api.metadata_file(mount, name, filename)
            at_header = {"X-Metasrv-At": mount.commit_id}  # what the fast path keeps it by
            if isinstance(content, str):
                return RedirectResponse(content, status_code=302, headers=at_header)
            return Response(
                content,
                media_type="text/plain; charset=utf-8",
                headers={"Cache-Control": IMMUTABLE, **at_header},
            )
        target = await self.api.file(mount, name, filename)
        if isinstance(target, Path):
            return FileResponse(target, media_type="application/octet-stream", filename=filename)
        if not target:
            raise NotFound(f"no URL for {filename!r}")
        return RedirectResponse(target, status_code=302)
