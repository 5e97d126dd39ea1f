"""Does an image speak tarea's protocol? The checks behind ``tarea check-image``.

For a JSON-RPC image (docs/protocol.md) one hardened container is started
(as tarea starts them, over stdio; its stdin closes when the checker closes
its side) and asked, in order:

=================  =============================================================
check              passes when
=================  =============================================================
``protocol``       the image carries the label (or is a label-less seed image)
``ready``          the first stdout line, within the bound, is ``ready`` with
                   ``protocol: "tarea/1"`` and a list of function names
``unknown_method`` a function it does not have is answered -32601, same id
``discovery``      ``rpc.discover`` answers an OpenRPC document naming exactly
                   the functions of ``ready`` (skipped when it answers -32601)
``bad_params``     a call that cannot fit is answered -32602: a required
                   parameter left out (from the description), else params
                   sent by position
``large_message``  a 1 MiB request line is answered intact (its 1 MiB id echoed)
``call``           the call named with ``--call`` answers a result
``progress``       the progress notifications of that call are well formed
                   (skipped when there is no call, or it sent none)
``log_marks``      when ``ready`` says ``log_mark``, every mark announced so far
                   (``logged``) came on stderr (skipped when it does not say so)
``eof``            on stdin's EOF the process exits 0, within the bound
=================  =============================================================

Every stdout line must be a JSON-RPC 2.0 message: anything else fails the
check it came in and ends the session. A seed-HTTP image (no label, port
5000) is checked against the seed's contract instead: ``/status/`` answers
200 within the bound, an unknown ``calculo`` is answered
``{"error": "Operación no soportada"}``, and a call is answered a JSON object
with ``resultado`` or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from tarea.domain.functions import Method, parse_openrpc
from tarea.domain.task import Limits, Protocol
from tarea.errors import TareaError, TaskFailure
from tarea.execution import images
from tarea.execution.containers import SeedHttpContainer
from tarea.execution.executor import Executor
from tarea.execution.protocols.attach import STDERR, LogBuffer, read_frame
from tarea.execution.sandbox import container_config
from tarea.runtime.jsonrpc import LOG_MARK

#: The label of every container the checker starts (removed when it is done).
CHECK_LABEL = "io.tarea.check"
#: The default limits of the checked container.
LIMITS = Limits(timeout_s=30.0, memory_mb=512, cpus=1.0, pids=256, output_kb=64 * 1024)
#: How long one answer may take, besides ``ready``.
ANSWER_S = 10.0
_LARGE = 1024 * 1024
#: The longest stdout line read (a 1 MiB answer fits many times over).
_MAX_LINE = 16 * 1024 * 1024
_NO_SUCH = "tarea.check/no_such_function"


class Status(enum.StrEnum):
    """How a check went."""

    #: The image did what the protocol says.
    PASS = "pass"  # noqa: S105 - a status, not a password
    #: It did not; the reason says what came instead.
    FAIL = "fail"
    #: Not checked (nothing to check it with, or an earlier check ended the session).
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: its name, how it went and why."""

    name: str
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class SampleCall:
    """A real call to make (``--call``), to see a result and its progress."""

    function: str
    params: dict[str, Any]


class _Broken(Exception):
    """The session cannot go on: the stream ended, or spoke outside the protocol."""


async def check_image(
    executor: Executor,
    image: str,
    *,
    ready_s: float = 10.0,
    call: SampleCall | None = None,
    limits: Limits = LIMITS,
) -> list[CheckResult]:
    """Run every check against ``image`` (local: never pulled); the results, in order."""
    try:
        resolved = await images.inspect_local(executor.docker, image)
    except TareaError as exc:
        return [CheckResult("protocol", Status.FAIL, getattr(exc, "message", str(exc)))]
    if resolved is None:
        return [
            CheckResult("protocol", Status.FAIL, f"{image} is not a local image: build it first")
        ]
    if resolved.protocol is Protocol.SEED_HTTP:
        first = CheckResult("protocol", Status.PASS, "seed-http: no tarea label, exposes 5000/tcp")
        return [first, *await _check_seed(executor, resolved, ready_s, call, limits)]
    first = CheckResult("protocol", Status.PASS, "jsonrpc-stdio/1 (label io.tarea.protocol)")
    return [first, *await _check_jsonrpc(executor, resolved, ready_s, call, limits)]


# -- JSON-RPC over stdio ---------------------------------------------------------------


class _Session:
    """A raw conversation with one container: lines out, lines in, stderr kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self.writer = writer
        self.stderr = LogBuffer(64 * 1024)
        #: Log marks seen on stderr, and announced on stdout (docs/protocol.md).
        self.marks = 0
        self.announced = 0
        self._mark_carry = b""  # stderr's last bytes: a mark may be cut across frames
        self.marked = asyncio.Event()  # set at each mark
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        #: Whether stdout sent a line longer than _MAX_LINE (the session then ends).
        self.overflow = False
        self._pump_task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        pending = bytearray()
        try:
            while True:
                stream, payload = await read_frame(self._reader)
                if stream == STDERR:
                    self._stderr(payload)
                    continue
                pending += payload
                if len(pending) > _MAX_LINE and b"\n" not in pending:
                    self.overflow = True
                    pending.clear()
                    return
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[: end + 1]
                    if line.strip():
                        self._lines.put_nowait(line)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if pending.strip():
                self._lines.put_nowait(bytes(pending))
            self._lines.put_nowait(None)

    def _stderr(self, payload: bytes) -> None:
        data = self._mark_carry + payload
        if found := data.count(LOG_MARK):
            self.marks += found
            self.marked.set()
        self._mark_carry = data[-(len(LOG_MARK) - 1) :]
        self.stderr.write(payload)

    def stderr_tail(self) -> str:
        """The last of stderr, for a message (marks taken out)."""
        return self.stderr.take().replace(LOG_MARK.decode(), "")[-300:].strip()

    async def message(self, timeout_s: float, waiting_for: str) -> dict[str, Any]:
        """The next message on stdout.

        Raises:
            _Broken: none came within ``timeout_s``, the stream ended, or the line is
                not a JSON-RPC 2.0 message.
        """
        try:
            line = await asyncio.wait_for(self._lines.get(), timeout_s)
        except TimeoutError:
            raise _Broken(f"no {waiting_for} within {timeout_s:g} s") from None
        if line is None and self.overflow:
            raise _Broken(f"a stdout line is longer than {_MAX_LINE // 2**20} MiB")
        if line is None:
            tail = self.stderr_tail()
            raise _Broken(
                f"stdout ended before {waiting_for}" + (f"; stderr: {tail}" if tail else "")
            )
        try:
            message = json.loads(line)
        except ValueError:
            raise _Broken(
                f"a line on stdout is not JSON: {line[:80]!r} (stdout carries only protocol "
                "messages; log to stderr)"
            ) from None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise _Broken(f"a line on stdout is not a JSON-RPC 2.0 message: {line[:80]!r}")
        return message

    async def request(
        self, request_id: Any, method: str, params: Any, timeout_s: float = ANSWER_S
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send a request; its response, and the notifications that came before it."""
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()
        notes: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            answer = await self.message(left, f"answer to {method}")
            if "method" in answer and "id" not in answer:
                if answer["method"] == "logged":
                    self.announced += 1
                else:
                    notes.append(answer)
                continue
            if answer.get("id") != request_id:
                shown = repr(answer.get("id"))[:40]
                raise _Broken(f"answered id {shown} to a request whose id was another")
            if ("result" in answer) == ("error" in answer):
                raise _Broken("a response needs exactly one of result and error")
            return answer, notes

    def close(self) -> None:
        self._pump_task.cancel()
        self.writer.close()


async def _check_jsonrpc(
    executor: Executor,
    resolved: images.ResolvedImage,
    ready_s: float,
    call: SampleCall | None,
    limits: Limits,
) -> list[CheckResult]:
    docker = executor.docker
    policy = replace(executor.policy, extra_labels={CHECK_LABEL: "true"})
    config = container_config(
        image=resolved.info.id,
        protocol=Protocol.JSONRPC_STDIO,
        image_user=resolved.info.user,
        limits=limits,
        policy=policy,
    )
    try:
        cid = await docker.create(config)  # stdin_open: docker-py sets StdinOnce too
    except TareaError as exc:
        return [CheckResult("ready", Status.FAIL, getattr(exc, "message", str(exc)))]
    session: _Session | None = None
    results: list[CheckResult] = []
    try:
        try:
            attached = await docker.attach_stdio(cid)
            attached.sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=attached.sock, limit=2**16)
            session = _Session(reader, writer)
            await docker.start(cid)
        except TareaError as exc:
            return [CheckResult("ready", Status.FAIL, getattr(exc, "message", str(exc)))]
        checks = _Checks(session, ready_s, call)
        for name, check in checks.steps():
            if checks.broken is not None:
                results.append(CheckResult(name, Status.SKIP, f"not reached: {checks.broken}"))
                continue
            try:
                status, reason = await check()
            except _Broken as exc:
                checks.broken = f"the session ended at {name}"
                status, reason = Status.FAIL, str(exc)
            results.append(CheckResult(name, status, reason))
        if checks.broken is not None:
            results.append(CheckResult("eof", Status.SKIP, f"not reached: {checks.broken}"))
        else:
            results.append(await _check_eof(executor, cid, session, ready_s))
        return results
    finally:
        if session is not None:
            session.close()
        await docker.remove(cid)


Step = Callable[[], Awaitable[tuple[Status, str]]]


class _Checks:
    """The stdio checks, in order, over one session (see the module docstring)."""

    def __init__(self, session: _Session, ready_s: float, call: SampleCall | None) -> None:
        self.session = session
        self.ready_s = ready_s
        self.call = call
        self.functions: list[str] = []
        self.marking = False
        self.methods: dict[str, Method] | None = None
        self.broken: str | None = None
        self._call_notes: list[dict[str, Any]] | None = None
        self._ids = iter(range(1, 1_000_000))

    def steps(self) -> list[tuple[str, Step]]:
        return [
            ("ready", self.ready),
            ("unknown_method", self.unknown_method),
            ("discovery", self.discovery),
            ("bad_params", self.bad_params),
            ("large_message", self.large_message),
            ("call", self.sample_call),
            ("progress", self.progress),
            ("log_marks", self.log_marks),
        ]

    def _id(self) -> str:
        return f"check-{next(self._ids)}"

    async def ready(self) -> tuple[Status, str]:
        started = time.monotonic()
        message = await self.session.message(self.ready_s, "ready notification")
        took = time.monotonic() - started
        params = message.get("params")
        if message.get("method") != "ready" or not isinstance(params, dict):
            raise _Broken(f"the first message is not ready: {json.dumps(message)[:120]}")
        functions = params.get("functions")
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            raise _Broken("ready's functions is not a list of names")
        if params.get("protocol") != "tarea/1":
            return Status.FAIL, f"ready says protocol {params.get('protocol')!r}, not 'tarea/1'"
        self.functions = functions
        self.marking = params.get("log_mark") is True
        return Status.PASS, f"ready in {took:.2f} s, offering {len(functions)}: " + ", ".join(
            functions[:8]
        ) + (" ..." if len(functions) > 8 else "")

    async def unknown_method(self) -> tuple[Status, str]:
        answer, _ = await self.session.request(self._id(), _NO_SUCH, {})
        return _expect_error(answer, -32601, "an unknown function")

    async def discovery(self) -> tuple[Status, str]:
        answer, _ = await self.session.request(self._id(), "rpc.discover", {})
        if "error" in answer:
            code = answer["error"].get("code") if isinstance(answer["error"], dict) else None
            if code == -32601:
                return Status.SKIP, "not offered (rpc.discover is answered -32601)"
            return Status.FAIL, f"rpc.discover answered error {code}, not a document or -32601"
        try:
            methods = parse_openrpc(answer["result"])
        except ValueError as exc:
            return Status.FAIL, f"rpc.discover's answer is not an OpenRPC document: {exc}"
        if sorted(methods) != sorted(self.functions):
            return Status.FAIL, (
                f"the document describes {sorted(methods)}, ready names {sorted(self.functions)}"
            )
        self.methods = methods
        return Status.PASS, f"an OpenRPC document describing {len(methods)} functions"

    async def bad_params(self) -> tuple[Status, str]:
        chosen = _bad_call(self.functions, self.methods)
        if chosen is None:
            return Status.SKIP, "the image offers no function to call with bad params"
        function, params, what = chosen
        answer, _ = await self.session.request(self._id(), function, params)
        return _expect_error(answer, -32602, what)

    async def large_message(self) -> tuple[Status, str]:
        big_id = "x" * _LARGE
        answer, _ = await self.session.request(big_id, _NO_SUCH, {})
        status, reason = _expect_error(answer, -32601, "a 1 MiB request")
        if status is Status.PASS:
            reason = "a 1 MiB request line was answered intact (its 1 MiB id echoed)"
        return status, reason

    async def sample_call(self) -> tuple[Status, str]:
        if self.call is None:
            return Status.SKIP, "no call named (--call FUNCTION --params JSON)"
        request_id = self._id()
        started = time.monotonic()
        answer, notes = await self.session.request(
            request_id, self.call.function, self.call.params, timeout_s=LIMITS.timeout_s
        )
        took = time.monotonic() - started
        self._call_notes = [n for n in notes if n.get("method") == "progress"]
        if "error" in answer:
            return Status.FAIL, f"{self.call.function} failed: {json.dumps(answer['error'])[:200]}"
        size = len(json.dumps(answer["result"]))
        return Status.PASS, f"{self.call.function} answered in {took * 1000:.0f} ms ({size} bytes)"

    async def progress(self) -> tuple[Status, str]:
        if self._call_notes is None:
            return Status.SKIP, "no call made to watch (--call)"
        if not self._call_notes:
            return Status.SKIP, "the call sent no progress notification"
        for note in self._call_notes:
            params = note.get("params")
            if not isinstance(params, dict):
                return Status.FAIL, "a progress notification has no params object"
            value = params.get("progress")
            if isinstance(value, bool) or not isinstance(value, int | float):
                return Status.FAIL, f"progress is not a number: {value!r}"
            if not 0 <= value <= 1 or math.isnan(value):
                return Status.FAIL, f"progress {value!r} is not within 0..1"
            if "message" in params and not isinstance(params["message"], str):
                return Status.FAIL, "a progress message is not a string"
        return Status.PASS, f"{len(self._call_notes)} well-formed progress notifications"

    async def log_marks(self) -> tuple[Status, str]:
        if not self.marking:
            return Status.SKIP, (
                "ready does not say log_mark: tarea waits for a short silence on stderr "
                "instead, and may miss what was written just before an answer"
            )
        session = self.session
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANSWER_S):
                while session.marks < session.announced:
                    session.marked.clear()
                    await session.marked.wait()
        if session.marks < session.announced:
            return Status.FAIL, (
                f"ready says log_mark, but stderr brought {session.marks} of the "
                f"{session.announced} marks announced"
            )
        return Status.PASS, f"all {session.announced} marks announced came on stderr"


def _expect_error(answer: dict[str, Any], code: int, what: str) -> tuple[Status, str]:
    error = answer.get("error")
    if not isinstance(error, dict):
        return Status.FAIL, f"{what} was answered a result, not error {code}"
    if error.get("code") != code:
        return Status.FAIL, f"{what} was answered error {error.get('code')!r}, not {code}"
    if not isinstance(error.get("message"), str):
        return Status.FAIL, f"{what} was answered {code} without a message string"
    return Status.PASS, f"{what} was answered {code}: {error['message'][:80]}"


def _bad_call(
    functions: list[str], methods: dict[str, Method] | None
) -> tuple[str, Any, str] | None:
    """A call the image must refuse -32602: which function, what params, and what it is."""
    if methods:
        for method in methods.values():
            for param in method.params:
                if param.required:
                    return method.name, {}, f"{method.name} without {param.name!r}"
        for method in methods.values():
            for param in method.params:
                wrong = _wrong_value(param.schema)
                if wrong is not None:
                    return method.name, {param.name: wrong}, f"{method.name} with a wrong type"
    if functions:
        return functions[0], [1, 2], f"{functions[0]} with params by position"
    return None


def _wrong_value(schema: Any) -> Any:
    """A value whose JSON type ``schema``'s type does not admit, or None."""
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    allowed = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    samples: list[tuple[str, Any]] = [
        ("object", {"tarea": "check"}),
        ("string", "tarea-check"),
        ("array", ["tarea-check"]),
    ]
    for kind, value in samples:
        if kind not in allowed:
            return value
    return None


async def _check_eof(
    executor: Executor, cid: str, session: _Session, bound_s: float
) -> CheckResult:
    session.writer.write_eof()
    code = await executor.docker.wait(cid, bound_s)
    if code is None:
        return CheckResult("eof", Status.FAIL, f"still running {bound_s:g} s after stdin's EOF")
    if code != 0:
        tail = session.stderr_tail()
        return CheckResult(
            "eof",
            Status.FAIL,
            f"exited {code} on stdin's EOF" + (f"; stderr: {tail}" if tail else ""),
        )
    return CheckResult("eof", Status.PASS, "exited 0 on stdin's EOF")


# -- the seed's HTTP contract ----------------------------------------------------------


async def _check_seed(
    executor: Executor,
    resolved: images.ResolvedImage,
    ready_s: float,
    call: SampleCall | None,
    limits: Limits,
) -> list[CheckResult]:
    started = time.monotonic()
    try:
        container = await executor.launch(resolved, limits)
    except TaskFailure as failure:
        return [CheckResult("status", Status.FAIL, failure.message)]
    took = time.monotonic() - started
    assert isinstance(container, SeedHttpContainer)
    results = [CheckResult("status", Status.PASS, f"GET /status/ answered 200 in {took:.2f} s")]
    try:
        results.append(
            await _seed_answer(
                container,
                "unknown_operation",
                {"calculo": "tarea_check_no_such_operation", "parametros": {}},
                expect_unsupported=True,
            )
        )
        sample = call or SampleCall("suma", {"a": 1, "b": 2})
        results.append(
            await _seed_answer(
                container,
                "call",
                {"calculo": sample.function, "parametros": sample.params},
                expect_unsupported=False,
            )
        )
    finally:
        container.close()
        await executor.docker.remove(container.id)
    return results


async def _seed_answer(
    container: SeedHttpContainer, name: str, body: dict[str, Any], *, expect_unsupported: bool
) -> CheckResult:
    try:
        response = await container.client.post(
            f"{container.base_url}/ejecutarTarea/", json=body, timeout=ANSWER_S
        )
    except httpx.HTTPError as exc:
        return CheckResult(name, Status.FAIL, f"POST /ejecutarTarea/ failed: {exc!r}")
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        return CheckResult(
            name,
            Status.FAIL,
            f"POST /ejecutarTarea/ answered {response.status_code} {response.text[:120]!r}, "
            "not 200 with a JSON object",
        )
    if expect_unsupported:
        error = answer.get("error")
        if isinstance(error, str) and "no soportada" in error.lower():
            return CheckResult(name, Status.PASS, f'an unknown calculo: {{"error": "{error}"}}')
        return CheckResult(
            name,
            Status.FAIL,
            f"an unknown calculo was answered {json.dumps(answer)[:120]}, "
            'not {"error": "Operación no soportada"}',
        )
    if ("resultado" in answer) == ("error" in answer):
        return CheckResult(
            name, Status.FAIL, f"the answer needs resultado or error: {json.dumps(answer)[:120]}"
        )
    key = "resultado" if "resultado" in answer else "error"
    return CheckResult(
        name, Status.PASS, f"{body['calculo']} answered {{{key!r}: ...}}: {json.dumps(answer)[:80]}"
    )


__all__ = ["CheckResult", "SampleCall", "Status", "check_image"]
