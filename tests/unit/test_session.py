"""Dashboard sessions: cookies signed with the key they were traded for, CSRF tokens."""

from __future__ import annotations

import pytest

from tarea.api.session import SESSION_S, Sessions, cookie_of, same_origin

KEYS = {"acme-key": "acme", "other-key": "other"}


def flip(text: str) -> str:
    """``text`` with its last character changed."""
    return text[:-1] + ("B" if text[-1] == "A" else "A")


def sessions(at: float = 1_000_000.0, keys: dict[str, str] | None = None) -> Sessions:
    return Sessions.of(KEYS if keys is None else keys, {"ops-key": "ops"}, now=lambda: at)


def test_a_key_is_traded_for_a_cookie_naming_its_tenant() -> None:
    """The cookie checks back to the key's tenant, holds no key, and carries a CSRF token."""
    cookie = sessions().login("acme-key")
    assert cookie is not None
    assert "acme-key" not in cookie
    session = sessions().check(cookie)
    assert session is not None
    assert (session.tenant, session.admin) == ("acme", False)
    assert sessions().csrf_ok(session, session.csrf)
    assert not sessions().csrf_ok(session, "")
    assert not sessions().csrf_ok(session, flip(session.csrf))


def test_an_operator_key_gives_an_operator_session() -> None:
    """An operator key's session is the operator's."""
    session = sessions().check(sessions().login("ops-key") or "")
    assert session is not None
    assert session.admin
    assert session.tenant == "ops"


@pytest.mark.parametrize("key", ["", "nope", "acme-key-", " "])
def test_a_wrong_key_gets_no_cookie(key: str) -> None:
    """Only a configured key is traded."""
    assert sessions().login(key) is None


def test_a_cookie_expires() -> None:
    """A cookie is good until SESSION_S after its login, not after."""
    cookie = sessions(at=1000.0).login("acme-key") or ""
    assert sessions(at=1000.0 + SESSION_S - 1).check(cookie) is not None
    assert sessions(at=1000.0 + SESSION_S + 1).check(cookie) is None


def test_removing_a_key_ends_its_sessions() -> None:
    """A server whose keys no longer hold the cookie's key refuses it."""
    cookie = sessions().login("acme-key") or ""
    assert sessions(keys={"new-acme-key": "acme"}).check(cookie) is None


def test_a_tampered_cookie_is_refused() -> None:
    """Changing the tenant, the expiry or the signature makes it worthless."""
    cookie = sessions().login("acme-key") or ""
    tenant, kind, expires, nonce, mac = cookie.split(".")
    for forged in (
        ".".join(("b3RoZXI", kind, expires, nonce, mac)),
        ".".join((tenant, "a", expires, nonce, mac)),
        ".".join((tenant, kind, str(int(expires) + 3600), nonce, mac)),
        ".".join((tenant, kind, expires, nonce, flip(mac))),
        "garbage",
        "",
    ):
        assert sessions().check(forged) is None, forged


def test_cookie_and_origin_are_read_from_raw_headers() -> None:
    """The cookie is found among others; Origin must be the Host, when sent."""
    headers = [(b"cookie", b"a=1; tarea_session=abc.def; b=2"), (b"host", b"127.0.0.1:8000")]
    assert cookie_of(headers) == "abc.def"
    assert cookie_of([(b"cookie", b"a=1")]) is None
    assert same_origin(headers)
    assert same_origin([*headers, (b"origin", b"http://127.0.0.1:8000")])
    assert not same_origin([*headers, (b"origin", b"http://evil.example")])
    assert not same_origin([*headers, (b"origin", b"null")])
