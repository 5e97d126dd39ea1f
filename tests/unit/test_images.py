"""Image references: the distribution grammar that guards what reaches Docker."""

from __future__ import annotations

import pytest

from tarea.domain.images import ImageReference, parse_reference
from tarea.errors import InvalidImageReference, InvalidRequest

HEX = "0123456789abcdef" * 4  # 64 hex digits, the length of a sha256 digest
TAG_128 = "t" * 128


@pytest.mark.parametrize(
    ("text", "name", "tag", "digest", "pull_tag"),
    [
        pytest.param(
            "tasks_image:latest", "tasks_image", "latest", None, "latest", id="seed-tasks-image"
        ),
        pytest.param("task_service", "task_service", None, None, "latest", id="seed-no-tag"),
        pytest.param(
            "library/python:3.12-slim", "library/python", "3.12-slim", None, "3.12-slim", id="path"
        ),
        pytest.param(
            "localhost:5000/a/b:c", "localhost:5000/a/b", "c", None, "c", id="domain-with-port"
        ),
        pytest.param(
            f"registry.example.com:443/x/y@sha256:{HEX}",
            "registry.example.com:443/x/y",
            None,
            f"sha256:{HEX}",
            f"sha256:{HEX}",
            id="digest",
        ),
        pytest.param(
            f"a/b:1.0@sha256:{HEX}", "a/b", "1.0", f"sha256:{HEX}", f"sha256:{HEX}", id="tag+digest"
        ),
        pytest.param("a__b", "a__b", None, None, "latest", id="double-underscore"),
        pytest.param("a-b---c", "a-b---c", None, None, "latest", id="dash-runs"),
        pytest.param("a.b_c", "a.b_c", None, None, "latest", id="dot-and-underscore"),
        pytest.param("[::1]:5000/x", "[::1]:5000/x", None, None, "latest", id="ipv6-domain"),
        pytest.param(
            "Registry.Example.com/x", "Registry.Example.com/x", None, None, "latest", id="uc-domain"
        ),
        pytest.param(f"a:{TAG_128}", "a", TAG_128, None, TAG_128, id="tag-128-chars"),
        pytest.param("a" * 255, "a" * 255, None, None, "latest", id="name-255-chars"),
    ],
)
def test_valid_reference_is_parsed(
    text: str, name: str, tag: str | None, digest: str | None, pull_tag: str
) -> None:
    """A valid reference splits into name, tag and digest and prints back unchanged."""
    ref = parse_reference(text)

    assert ref == ImageReference(name=name, tag=tag, digest=digest)
    assert ref.pull_tag == pull_tag
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        pytest.param("", ("empty",), id="empty"),
        pytest.param("--privileged", ("'--privileged'", "'-'"), id="flag-privileged"),
        pytest.param("-v", ("'-v'", "'-'"), id="flag-v"),
        pytest.param(" tasks_image", ("' tasks_image'", "white space"), id="leading-space"),
        pytest.param("tasks_image ", ("'tasks_image '", "white space"), id="trailing-space"),
        pytest.param("tasks image", ("'tasks image'", "white space"), id="inner-space"),
        pytest.param("tasks\timage", ("'tasks\\timage'", "white space"), id="tab"),
        pytest.param("tasks_image\n", ("'tasks_image\\n'", "white space"), id="trailing-newline"),
        pytest.param("a\nb", ("'a\\nb'", "white space"), id="inner-newline"),
        pytest.param("Tasks_Image", ("'Tasks_Image'", "lower case"), id="upper-case-path"),
        pytest.param("a:", ("'a:'",), id="empty-tag"),
        pytest.param("a@sha256:short", ("'a@sha256:short'",), id="short-digest"),
        pytest.param("a//b", ("'a//b'",), id="empty-component"),
        pytest.param("a/", ("'a/'",), id="trailing-slash"),
        pytest.param("_a", ("'_a'",), id="leading-separator"),
        pytest.param(f"a:t{TAG_128}", (repr(f"a:t{TAG_128}"),), id="tag-129-chars"),
        pytest.param("a" * 256, (repr("a" * 40), "255"), id="name-256-chars"),
        pytest.param("../etc", ("'../etc'",), id="path-traversal"),
        pytest.param("a;rm -rf", ("'a;rm -rf'",), id="shell-with-space"),
        pytest.param("a;rm", ("'a;rm'",), id="shell-metachar"),
    ],
)
def test_invalid_reference_is_rejected(text: str, mentions: tuple[str, ...]) -> None:
    """An invalid reference raises InvalidImageReference on field "image", quoting the input."""
    with pytest.raises(InvalidImageReference) as caught:
        parse_reference(text)

    assert caught.value.field == "image"
    assert isinstance(caught.value, InvalidRequest)
    for fragment in mentions:
        assert fragment in caught.value.message


@pytest.mark.parametrize("text", ["a//b", "a:", "_a"])
def test_lower_case_hint_only_for_upper_case_input(text: str) -> None:
    """The "must be lower case" hint is not given when the input has no upper case."""
    with pytest.raises(InvalidImageReference) as caught:
        parse_reference(text)

    assert "lower case" not in caught.value.message


@pytest.mark.parametrize("text", ["a:tägé", "a:٣"], ids=["latin-accents", "arabic-digit"])
def test_non_ascii_tag_is_rejected(text: str) -> None:
    """A tag with non-ASCII letters or digits is not a valid reference."""
    with pytest.raises(InvalidImageReference):
        parse_reference(text)
