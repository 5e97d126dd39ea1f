"""Making sure an image is there, and knowing which protocol it speaks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tarea.domain.images import parse_reference
from tarea.domain.task import PROTOCOL_LABEL, SEED_PORT, Protocol, RegistryAuth
from tarea.errors import ImageNotFound, ImagePullFailed, UnsupportedImage
from tarea.execution.docker import DockerEngine, ImageInfo


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """A local image, ready to start containers from."""

    reference: str
    info: ImageInfo
    protocol: Protocol
    #: Whether this resolve pulled it (it was not local).
    pulled: bool = False


def detect_protocol(reference: str, info: ImageInfo) -> Protocol:
    """The protocol an image speaks: tarea's label first, then the seed's port.

    Raises:
        UnsupportedImage: the image has neither.
    """
    label = info.labels.get(PROTOCOL_LABEL)
    if label == Protocol.JSONRPC_STDIO.value:
        return Protocol.JSONRPC_STDIO
    if label is None and SEED_PORT in info.exposed_ports:
        return Protocol.SEED_HTTP
    raise UnsupportedImage(
        f"image {reference!r} speaks no protocol tarea knows: it carries no "
        f"{PROTOCOL_LABEL}={Protocol.JSONRPC_STDIO.value} label and exposes no {SEED_PORT}",
        data={"image": reference, "label": label},
    )


async def resolve(
    docker: DockerEngine,
    text: str,
    auth: RegistryAuth | None,
    logins: dict[str, RegistryAuth] | None = None,
    *,
    pull_timeout_s: float = 300.0,
) -> ResolvedImage:
    """Validate ``text``, pull it if it is not local, and detect its protocol.

    The pull uses ``auth`` (the request's credentials), else the server's
    login for the reference's registry in ``logins``, else none.

    Raises:
        InvalidImageReference: ``text`` is not a valid reference.
        ImageNotFound, ImagePullFailed: not local, and the pull failed (or
            took longer than ``pull_timeout_s``).
        UnsupportedImage: see :func:`detect_protocol`.
        EngineUnavailable: the engine does not answer.
    """
    ref = parse_reference(text)
    info = await docker.inspect_image(str(ref))
    pulled = info is None
    if info is None:
        try:
            await asyncio.wait_for(
                docker.pull(ref, auth or (logins or {}).get(ref.registry)), pull_timeout_s
            )
        except TimeoutError:
            raise ImagePullFailed(
                f"image {text!r} is not present locally and its pull took longer than "
                f"{pull_timeout_s:g} s",
                data={"image": text, "pull_timeout_s": pull_timeout_s},
            ) from None
        info = await docker.inspect_image(str(ref))
        if info is None:  # pulled something else than asked (a registry quirk)
            raise ImageNotFound(f"image {text!r} is still missing after a pull")
    return ResolvedImage(
        reference=str(ref), info=info, protocol=detect_protocol(text, info), pulled=pulled
    )


async def inspect_local(docker: DockerEngine, text: str) -> ResolvedImage | None:
    """The image ``text`` names if it is local, with its protocol; None if it is not.

    Never pulls. Raises InvalidImageReference, UnsupportedImage (see
    :func:`detect_protocol`) and EngineUnavailable like :func:`resolve`.
    """
    ref = parse_reference(text)
    info = await docker.inspect_image(str(ref))
    if info is None:
        return None
    return ResolvedImage(reference=str(ref), info=info, protocol=detect_protocol(text, info))
