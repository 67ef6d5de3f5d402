"""The one error hierarchy; each class carries its HTTP status and CLI exit code."""

from __future__ import annotations


class MetasrvError(Exception):
    """Base of every error metasrv reports to a user."""

    http_status = 400
    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line on a terminal and in a JSON body; callers put the useful part first.
        message = message.splitlines()[0] if message else message
        super().__init__(message)
        self.message = message


class InvalidInput(MetasrvError):
    """A name, version, ref, path or option that is malformed."""


class NotFound(MetasrvError):
    """A project, version, ref or route that does not exist."""

    http_status = 404


class UnknownProject(NotFound):
    """A project the data at a commit does not hold (pull-through may still find it)."""


class MetadataPending(NotFound):
    """A file whose metadata pull-through has not read yet; ``version_text`` names its release."""

    def __init__(self, message: str, version_text: str) -> None:
        super().__init__(message)
        self.version_text = version_text


class InvalidData(MetasrvError):
    """A file in a repository that does not follow its documented format."""

    http_status = 422


class SourceError(MetasrvError):
    """A source repository that failed or answered with something unusable."""

    http_status = 502


class SourceUnavailable(SourceError):
    """A source that is down or failing right now, asked for something we do not hold."""

    http_status = 503


class Conflict(MetasrvError):
    """A write that lost a race with another writer."""

    http_status = 409


class InvalidArchive(MetasrvError):
    """An archive or metadata file that is corrupt, truncated, oversized or lies about itself."""

    http_status = 422


class NotAcceptable(MetasrvError):
    """An Accept header or ?format= that names no representation we serve."""

    http_status = 406


class Unverified(MetasrvError):
    """A commit that an understanding's allowed signers did not sign, asked for by a client."""

    http_status = 403


class NotAllowed(MetasrvError):
    """A registration whose repository the operator's allow list does not admit."""

    http_status = 403


class Unavailable(MetasrvError):
    """Something that is being prepared or whose last refresh failed: retry later."""

    http_status = 503
