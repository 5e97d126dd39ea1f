"""Image references, validated against the distribution reference grammar.

The grammar is the one of ``distribution/reference`` (``reference.go``); an
image name is checked here before it reaches Docker, so that nothing a client
sends can be read as a flag, a path or another registry's syntax.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass

from tarea.errors import InvalidImageReference

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$",
    re.ASCII,  # the grammar is ASCII: \w must not match other scripts' letters
)
_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed image reference: ``[domain/]path[:tag][@digest]``."""

    name: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def registry(self) -> str:
        """The registry host the name points at (``docker.io`` when it names none)."""
        first, sep, _ = self.name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            return first
        return "docker.io"

    @property
    def pull_tag(self) -> str:
        """What to ask a registry for: the digest, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"


@functools.lru_cache(maxsize=1024)
def parse_reference(text: str) -> ImageReference:
    """Parse and validate an image reference.

    Raises:
        InvalidImageReference: ``text`` is not a valid reference; the message
            quotes it and says what is wrong.
    """
    if not text:
        raise InvalidImageReference("the image reference is empty", field="image")
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise InvalidImageReference(f"image reference {text!r} contains white space", field="image")
    if text.startswith("-"):
        raise InvalidImageReference(f"image reference {text!r} starts with '-'", field="image")
    match = _REFERENCE.match(text)
    if match is None:
        hint = " (repository names must be lower case)" if text != text.lower() else ""
        raise InvalidImageReference(f"{text!r} is not a valid image reference{hint}", field="image")
    name = match["name"]
    if len(name) > _NAME_MAX:
        raise InvalidImageReference(
            f"image name {name[:40]!r}... is longer than {_NAME_MAX} characters",
            field="image",
        )
    return ImageReference(name=name, tag=match["tag"], digest=match["digest"])


def matches_any(reference: ImageReference, patterns: list[str]) -> bool:
    """Whether ``reference`` (normalised: a tag, ``latest`` if none) matches a glob pattern."""
    name = f"{reference.name}:{reference.tag or 'latest'}"
    if reference.digest:
        name += f"@{reference.digest}"
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
