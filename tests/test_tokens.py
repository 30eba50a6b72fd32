"""API tokens (ledger_node.auth.TokenBook) and `trustfleet token` (ledger_node.token_cli), over
a real SQLite token store in a temporary folder."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node.auth import (
    AUDITOR,
    OPERATOR,
    PARTNER,
    BadTokenSpec,
    NoSuchToken,
    Principal,
    TokenBook,
    TokenExists,
    TokenStoreError,
    hash_token,
    new_token,
    parse_bearer,
    redact_query,
    tokens_path,
)

NOW = 1_763_700_000_000


@pytest.fixture
def book(tmp_path: Path) -> TokenBook:
    return TokenBook(tokens_path(tmp_path / "ledger.sqlite"))


def test_a_token_is_tf_and_32_random_bytes_in_base64url() -> None:
    import base64

    a, b = new_token(), new_token()
    assert a != b and a.startswith("tf_") and len(a) == 46
    assert len(base64.urlsafe_b64decode(a[3:] + "=")) == 32


def test_the_store_is_0600_beside_the_ledger_and_keeps_only_hashes(book: TokenBook,
                                                                   tmp_path: Path) -> None:
    token = book.create("alice", PARTNER, "acme", now_ms=NOW)
    assert book.path == tmp_path / "tokens.db"
    assert stat.S_IMODE(book.path.stat().st_mode) == 0o600
    raw = book.path.read_bytes()
    assert token.encode() not in raw and token[3:].encode() not in raw
    with sqlite3.connect(book.path) as conn:
        (stored,) = conn.execute("SELECT hash FROM tokens WHERE name = 'alice'").fetchone()
    assert bytes(stored) == hash_token(token)


def test_a_store_created_with_other_permissions_is_made_0600(book: TokenBook) -> None:
    book.path.touch(mode=0o644)
    book.path.chmod(0o644)
    book.create("ops", OPERATOR, now_ms=NOW)
    assert stat.S_IMODE(book.path.stat().st_mode) == 0o600


def test_each_kind_authenticates_as_its_principal(book: TokenBook) -> None:
    op = book.create("ops", OPERATOR, now_ms=NOW)
    au = book.create("audit-1", AUDITOR, now_ms=NOW)
    pa = book.create("alice@acme", PARTNER, "acme", now_ms=NOW)
    assert book.authenticate(op) == Principal("ops", OPERATOR, None)
    assert book.authenticate(au) == Principal("audit-1", AUDITOR, None)
    got = book.authenticate(pa)
    assert got == Principal("alice@acme", PARTNER, "acme")
    assert got is not None and got.audited and not got.sees_everything


def test_a_revoked_token_authenticates_nothing_and_stays_listed(book: TokenBook) -> None:
    token = book.create("alice", PARTNER, "acme", now_ms=NOW)
    info = book.revoke("alice", now_ms=NOW + 5)
    assert info.revoked == NOW + 5
    assert book.authenticate(token) is None and not book.active("alice")
    assert book.revoke("alice", now_ms=NOW + 99).revoked == NOW + 5  # the first time stays
    assert [(t.name, t.revoked) for t in book.list()] == [("alice", NOW + 5)]
    with pytest.raises(TokenExists):  # names are never reused
        book.create("alice", PARTNER, "acme", now_ms=NOW)


def test_unknown_names_and_bad_specs_are_refused(book: TokenBook) -> None:
    with pytest.raises(NoSuchToken):
        book.revoke("nobody", now_ms=NOW)
    for name, kind, org in [("alice", PARTNER, None), ("ops", OPERATOR, "acme"),
                            ("x", "admin", None), ("", OPERATOR, None),
                            ("-dash", OPERATOR, None), ("a" * 65, OPERATOR, None),
                            ("sp ace", OPERATOR, None), ("nul\x00", OPERATOR, None),
                            ("alice", PARTNER, "acme corp"), ("alice", PARTNER, "")]:
        with pytest.raises(BadTokenSpec):
            book.create(name, kind, org, now_ms=NOW)
    assert book.list() == []


def test_a_book_with_no_file_authenticates_nothing_and_lists_nothing(book: TokenBook) -> None:
    assert book.authenticate(new_token()) is None
    assert book.list() == [] and not book.active("ops")
    assert not book.path.exists()  # reading never creates the store


@pytest.mark.parametrize("presented", [
    "", "tf_", "Bearer", "tf_" + "A" * 42, "tf_" + "A" * 44, "TF_" + "A" * 43,
    "tf_" + "A" * 42 + "=", "tf_" + "A" * 42 + "\x00", "tf_" + "é" * 43, "x" * 100_000,
    "' OR 1=1 --", "tf_" + "A" * 43 + "\n",
])
def test_malformed_tokens_authenticate_nothing(book: TokenBook, presented: str) -> None:
    book.create("ops", OPERATOR, now_ms=NOW)
    assert book.authenticate(presented) is None


def test_a_token_differing_in_one_character_is_refused(book: TokenBook) -> None:
    token = book.create("ops", OPERATOR, now_ms=NOW)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert book.authenticate(flipped) is None
    assert book.authenticate(token) is not None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_no_string_but_the_token_authenticates(tmp_path_factory: pytest.TempPathFactory,
                                               presented: str) -> None:
    book = TokenBook(tmp_path_factory.mktemp("tok") / "tokens.db")
    token = book.create("ops", OPERATOR, now_ms=NOW)
    assert (book.authenticate(presented) is not None) == (presented == token)


def test_a_damaged_store_is_a_token_store_error(book: TokenBook) -> None:
    book.path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TokenStoreError):
        book.authenticate(new_token())
    with pytest.raises(TokenStoreError):
        book.create("ops", OPERATOR, now_ms=NOW)


def test_bearer_header_parsing_and_query_redaction() -> None:
    assert parse_bearer(None) is None
    assert parse_bearer("Bearer tf_abc") == "tf_abc"
    assert parse_bearer("bearer   tf_abc  ") == "tf_abc"
    assert parse_bearer("Basic dXNlcjpwYXNz") == ""
    assert redact_query("a=1&access_token=tf_secret&b=2") == "a=1&access_token=REDACTED&b=2"
    assert redact_query("access%5Ftoken=tf_s&access_token=tf_t") == \
        "access_token=REDACTED&access_token=REDACTED"
    assert redact_query("") == ""


# -- the command line ---------------------------------------------------------------------------

def token_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledger_node.token_cli", "token", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    data = tmp_path / "node-1"
    made = token_cli("create", "--data", str(data), "--kind", "partner", "--org", "acme",
                     "--name", "alice@acme")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n"  # the token alone on stdout, shown once
    assert "only time the token is shown" in made.stderr
    book = TokenBook(data / "tokens.db")
    assert book.authenticate(token) == Principal("alice@acme", PARTNER, "acme")

    listed = token_cli("list", "--data", str(data))
    assert listed.returncode == 0 and "alice@acme" in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout and token[3:] not in listed.stdout
    as_json = token_cli("list", "--data", str(data), "--json")
    assert '"org": "acme"' in as_json.stdout and '"revoked": null' in as_json.stdout

    gone = token_cli("revoke", "alice@acme", "--data", str(data))
    assert gone.returncode == 0 and "revoked 'alice@acme'" in gone.stdout
    assert book.authenticate(token) is None
    assert "revoked 20" in token_cli("list", "--data", str(data)).stdout


@pytest.mark.parametrize("args, code, message", [
    (("create", "--kind", "partner", "--name", "bob"), 1, "a partner token needs --org"),
    (("create", "--kind", "auditor", "--org", "acme", "--name", "eve"), 1,
     "not bound to an organisation"),
    (("create", "--kind", "root", "--name", "eve"), 2, "invalid choice: 'root'"),
    (("revoke", "nobody"), 1, "no token named 'nobody'"),
])
def test_cli_refusals(tmp_path: Path, args: tuple[str, ...], code: int, message: str) -> None:
    got = token_cli(*args, "--data", str(tmp_path))
    assert got.returncode == code and message in got.stderr, got.stderr
    assert got.stdout == ""


def test_cli_name_taken_and_damaged_store(tmp_path: Path) -> None:
    assert token_cli("create", "--data", str(tmp_path), "--kind", "operator",
                     "--name", "ops").returncode == 0
    again = token_cli("create", "--data", str(tmp_path), "--kind", "operator", "--name", "ops")
    assert again.returncode == 1 and "names are not reused" in again.stderr
    (tmp_path / "tokens.db").write_bytes(b"\x00garbage" * 200)
    broken = token_cli("list", "--data", str(tmp_path))
    assert broken.returncode == 2 and "cannot read token store" in broken.stderr
