"""The one registry of error codes: complete, and what the API and the docs read."""

from __future__ import annotations

from pathlib import Path

from tarea import codes, errors
from tarea.api import errors as api_errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _subclasses(cls: type[errors.TareaError]) -> list[type[errors.TareaError]]:
    found: list[type[errors.TareaError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_exception_code_is_registered() -> None:
    """Each code tarea's exceptions carry is in the registry (task failures as such)."""
    for cls in _subclasses(errors.TareaError):
        code = getattr(cls, "code", None)
        if code is None or code == "refused":  # Refused is abstract: its subclasses name one
            continue
        assert code in codes.BY_NAME, f"{cls.__name__}.code {code!r} is not in tarea.codes"
        if issubclass(cls, errors.TaskFailure):
            assert code in codes.TASK_FAILURES, code


def test_the_api_answers_the_registrys_statuses() -> None:
    """A problem document of each code has the registry's HTTP status."""
    for name, status in codes.STATUS_OF_CODE.items():
        assert api_errors.ProblemError(name, "detail").status == status


def test_codes_are_unique() -> None:
    """No code is registered twice."""
    assert len(codes.BY_NAME) == len(codes.CODES)


def test_the_docs_page_is_rendered_from_the_registry() -> None:
    """docs/errors.md is what `python -m tarea.codes` renders (regenerate it if this fails)."""
    assert DOC.read_text() == codes.render_markdown()
