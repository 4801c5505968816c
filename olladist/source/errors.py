"""Errors of the spec source.

    OlladistError
     +-- SourceError            the source cannot give a usable commit (bad path in the tree, ...)
          +-- FetchError        remote unreachable, not a repository, ref missing or ambiguous
          +-- RollbackRefused   the tip does not descend from the accepted commit
          +-- SignatureError    the tip, or a commit it brings, is unsigned, badly signed, or
                                signed by an untrusted key

Messages never hold credentials: every URL passes through `redact_url` first.
"""

from __future__ import annotations

import re

from olladist.errors import OlladistError

# user[:password]@ in a URL authority; the password may hold anything but '@' and '/'.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """Return URL without its user:password part (also inside longer text)."""
    return _USERINFO.sub(r"\g<scheme>", url)


class SourceError(OlladistError):
    """The spec source could not give a usable commit."""

    refused_commit: str | None = None  # the commit it refused, when it refused one


class FetchError(SourceError):
    """The remote could not be read, or the ref is not there."""


class RollbackRefused(SourceError):
    """The new tip does not have the accepted commit as an ancestor."""

    def __init__(self, message: str, *, accepted: str, tip: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.accepted = accepted
        self.tip = tip
        self.refused_commit = tip


class SignatureError(SourceError):
    """A commit's signature is missing, invalid or from an untrusted key: the tip's, or that
    of a commit the tip brings (then ``commit`` is that one and ``tip`` the tip)."""

    def __init__(
        self,
        message: str,
        *,
        commit: str,
        signer: str | None = None,
        hint: str | None = None,
        tip: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.commit = commit
        self.signer = signer
        self.tip = tip or commit
        self.refused_commit = self.tip
