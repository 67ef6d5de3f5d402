"""Pull-through's merges: what a refreshed page keeps of metadata read, and what reads fill in."""

from __future__ import annotations

from dataclasses import replace

from packaging.version import Version

from metasrv.index.pages import ProjectPage, SourceFile
from metasrv.index.projectmerge import adopt, fill, pending_files, pending_of
from metasrv.model import CoreMetadata, DistFile, MetadataStatus, Project, Release, SourceState
from tests.builders import make_file

WHEEL = "demo-1.0-py3-none-any.whl"
SDIST = "demo-1.0.tar.gz"
DOCUMENT_SHA = "cd" * 32


def listed(
    filename: str,
    digest: str = "aa",
    size: int | None = None,
    core_metadata: dict[str, str] | bool = False,
) -> SourceFile:
    """Return a file as a source page lists it."""
    url = f"https://files.test/{filename}"
    hashes = {"sha256": digest * 32}
    return SourceFile(filename, url, hashes, size=size, core_metadata=core_metadata)


def read_file(filename: str, digest: str = "aa") -> DistFile:
    """Return a file whose metadata was read, with every field a read records set."""
    return replace(
        make_file(filename, requires_dist=["click>=8"]),
        hashes={"sha256": digest * 32},
        size=555,
        metadata_status=MetadataStatus.BUILT,
        metadata_reason="built in the sandbox",
        metadata_built_on="2026-01-01T00:00:00Z",
        core_metadata_sha256=DOCUMENT_SHA,
        core_metadata_stored=True,
    )


def pending(filename: str, digest: str = "aa", size: int | None = 1234) -> DistFile:
    """Return a file listed by a page, its metadata not read yet."""
    return replace(make_file(filename, metadata=False), hashes={"sha256": digest * 32}, size=size)


FILELESS = Release(Version("2.0"), "2.0", (), CoreMetadata(metadata_version="2.1"))


def project(*files: DistFile, state: SourceState | None = None) -> Project:
    """Return a project with a release of ``files`` and one whose files are gone."""
    return Project.create("Demo", [Release.from_files("1.0", files), FILELESS], state)


def test_a_refreshed_page_keeps_what_was_read_of_its_unchanged_files() -> None:
    page = ProjectPage("demo", (listed(WHEEL, size=99), listed(SDIST)))
    known = {WHEEL: read_file(WHEEL), SDIST: read_file(SDIST)}
    wheel, sdist = pending_files(page, known)
    for kept, before in ((wheel, known[WHEEL]), (sdist, known[SDIST])):
        assert kept.metadata == before.metadata
        assert kept.metadata_status is MetadataStatus.BUILT
        assert (kept.metadata_reason, kept.metadata_built_on) == (
            "built in the sandbox",
            "2026-01-01T00:00:00Z",
        )
        assert (kept.core_metadata_sha256, kept.core_metadata_stored) == (DOCUMENT_SHA, True)
    assert (wheel.size, sdist.size) == (99, 555)  # the page's size, else what was known


def test_a_file_whose_bytes_changed_or_are_unhashed_is_read_again() -> None:
    changed = listed(WHEEL, digest="bb", core_metadata={"sha256": DOCUMENT_SHA.upper()})
    unhashed = listed(SDIST)._replace(hashes={})
    page = ProjectPage("demo", (changed, unhashed))
    known = {WHEEL: read_file(WHEEL), SDIST: read_file(SDIST)}
    wheel, sdist = pending_files(page, known)
    assert wheel.metadata is None
    assert wheel.metadata_pending
    assert sdist.metadata is None
    assert sdist.metadata_pending
    # Until it is read, clients are sent to the source's own document, by the page's hash.
    assert (wheel.core_metadata_sha256, sdist.core_metadata_sha256) == (DOCUMENT_SHA, None)


def test_metadata_still_pending_is_not_taken_for_read() -> None:
    page = ProjectPage("demo", (listed(WHEEL, core_metadata={"sha256": DOCUMENT_SHA}),))
    (wheel,) = pending_files(page, {WHEEL: pending(WHEEL)})
    assert wheel.metadata_pending
    assert wheel.core_metadata_sha256 == DOCUMENT_SHA  # the page's, not the pending file's none


def test_files_without_a_version_are_left_out_and_the_rest_listed() -> None:
    page = ProjectPage("demo", (listed("README.txt"), listed(WHEEL), listed(SDIST)))
    assert [f.filename for f in pending_files(page, {})] == [WHEEL, SDIST]


def test_adopting_a_new_page_keeps_metadata_read_meanwhile_for_unchanged_files() -> None:
    state = SourceState(etag='"v2"', serial=7)
    incoming = project(pending(WHEEL), pending(SDIST, digest="bb"), state=state)
    current = project(read_file(WHEEL), read_file(SDIST))
    adopted = adopt(incoming)(current)
    assert adopted is not None
    wheel, sdist = adopted.releases[0].files
    assert wheel.metadata == current.releases[0].files[0].metadata
    assert wheel.size == 1234  # the incoming page's size
    assert sdist.metadata_pending  # its bytes changed: read again
    assert adopted.source_state == state  # the new page's, for the next conditional request
    assert adopted.releases[1] == FILELESS  # a release without files is kept as it is


def test_adopting_keeps_what_the_incoming_page_says_of_files_it_read() -> None:
    incoming = project(read_file(WHEEL, digest="aa"))
    current = project(replace(read_file(WHEEL), metadata=CoreMetadata(metadata_version="2.1")))
    adopted = adopt(incoming)(current)
    assert adopted is not None
    assert adopted.releases[0].files[0].metadata == incoming.releases[0].files[0].metadata


def test_adopting_a_project_the_head_lacks_takes_it_whole() -> None:
    incoming = project(pending(WHEEL))
    assert adopt(incoming)(None) is incoming


def test_filling_gives_pending_files_what_was_read_and_leaves_the_rest() -> None:
    already = replace(read_file(SDIST), metadata=CoreMetadata(metadata_version="2.1"))
    current = project(pending(WHEEL), already, state=SourceState(serial=3))
    filled = fill({WHEEL: read_file(WHEEL), SDIST: read_file(SDIST)})(current)
    assert filled is not None
    wheel, sdist = filled.releases[0].files
    assert wheel.metadata == read_file(WHEEL).metadata
    assert sdist == already  # not pending: what a read brought does not replace it
    assert filled.source_state == SourceState(serial=3)


def test_filling_a_project_removed_meanwhile_writes_nothing() -> None:
    assert fill({WHEEL: read_file(WHEEL)})(None) is None


def test_filling_takes_the_registered_spelling_only_from_a_name_that_matches() -> None:
    normalized = Project.create("demo", [Release.from_files("1.0", (pending(WHEEL),))])
    read = {WHEEL: read_file(WHEEL)}
    spelled = {}
    for name in ("Demo", "Other", "not a name!", None):
        filled = fill(read, name)(normalized)
        assert filled is not None
        spelled[name] = filled.name
    assert spelled == {"Demo": "Demo", "Other": "demo", "not a name!": "demo", None: "demo"}
    registered = Project.create("DEMO", [Release.from_files("1.0", (pending(WHEEL),))])
    filled = fill(read, "Demo")(registered)
    assert filled is not None
    assert filled.name == "DEMO"  # spelled as registered already: kept


def test_the_releases_left_to_read_are_those_with_pending_files_newest_first() -> None:
    releases = [
        Release.from_files("1.0", (pending("demo-1.0.tar.gz"),)),
        Release.from_files("1.5", (read_file("demo-1.5.tar.gz"),)),
        Release.from_files(
            "2.0", (read_file("demo-2.0.tar.gz"), pending("demo-2.0-py3-none-any.whl"))
        ),
    ]
    demo = Project.create("Demo", releases)
    assert [r.version_text for r in pending_of(demo)] == ["2.0", "1.0"]
    assert [r.version_text for r in pending_of(demo, Version("1.0"))] == ["1.0"]
    assert pending_of(demo, Version("1.5")) == []
