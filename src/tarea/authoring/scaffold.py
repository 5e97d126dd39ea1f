"""``tarea new``: write a task image directory from a template.

Each language's template (``templates/<lang>/``) is a working image with one
function: a Dockerfile taking ``ARG BASE_IMAGE``, the code, a README and a test
that runs without Docker. ``{{name}}`` in a template becomes the image's name.
The Python template gets a copy of ``tarea.runtime`` (standard library only) in
``vendor/tarea/``, so the image builds with no network and no other image.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import tarea.runtime

TEMPLATES = Path(__file__).resolve().parent / "templates"
LANGUAGES = ("python", "shell", "node")
#: An image name's last part: what ``tarea build`` tags the directory as.
_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The directory cannot be written; the message says why."""


def new(name: str, lang: str = "python", parent: Path = Path()) -> Path:
    """Write the image directory ``parent/name`` for ``lang``; its path.

    Raises:
        ScaffoldError: an unknown language, a name that cannot be an image's, or
            the directory exists already.
    """
    if lang not in LANGUAGES:
        raise ScaffoldError(f"--lang must be one of {', '.join(LANGUAGES)}, not {lang!r}")
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r} cannot name an image: lowercase letters and digits, "
            "separated by single '.', '_' or '-'"
        )
    target = parent / name
    if target.exists():
        raise ScaffoldError(f"{target} exists already")
    target.mkdir(parents=True)
    for source in sorted((TEMPLATES / lang).rglob("*")):
        if source.is_dir() or source.name.endswith((".pyc", ".pyo")):
            continue
        dest = target / source.relative_to(TEMPLATES / lang)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(source.read_text().replace("{{name}}", name))
        dest.chmod(source.stat().st_mode & 0o777)
    if lang == "python":
        vendor_runtime(target / "vendor")
    return target


def vendor_runtime(vendor: Path) -> None:
    """Copy ``tarea.runtime`` (and the package's ``__init__``) into ``vendor/tarea/``."""
    runtime = Path(tarea.runtime.__file__).resolve().parent
    package = vendor / "tarea"
    (package / "runtime").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runtime.parent / "__init__.py", package / "__init__.py")
    for module in sorted(runtime.glob("*.py")):
        shutil.copyfile(module, package / "runtime" / module.name)
