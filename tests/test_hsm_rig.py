"""SoftHSM2 rigs, Pkcs11Signer and error translation, against a real SoftHSM2.

SoftHSM reads SOFTHSM2_CONF once per process, so this test process never loads the
PKCS#11 module for a rig: the rig works through its own child processes, and every
PKCS#11 check here runs in a child (`in_rig`) whose environment holds the rig's config.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pkcs11.exceptions as p11
import pytest

from hsm import Pkcs11Signer, SoftHsmRig, open_signer, verify_es256
from hsm.cli import main as cli_main
from hsm.errors import (
    HsmError,
    KeyNotFound,
    ModuleNotFound,
    PinIncorrect,
    PinSourceError,
    SessionLost,
    TokenNotFound,
    translate,
)
from hsm.rig import DEFAULT_MODULE_PATH
from hsm.signer import pin_from_env_or_file

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (os.path.isfile(DEFAULT_MODULE_PATH) and shutil.which("softhsm2-util")),
    reason="needs SoftHSM2 (apt-get install softhsm2)",
)

PRELUDE = """
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from hsm import SoftHsmRig, open_signer, Pkcs11Signer, verify_es256
from hsm.errors import HsmError
params = json.load(sys.stdin)
rig = SoftHsmRig(params["dir"])
def emit(obj):
    print(json.dumps(obj))
def error_name(fn):
    try:
        fn()
    except HsmError as exc:
        return type(exc).__name__
    return None
"""


def in_rig(rig: SoftHsmRig, body: str, **params: Any) -> Any:
    """Run `body` in a fresh interpreter configured for `rig`; return what it emit()s."""
    env = {**os.environ, **rig.env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        input=json.dumps({"dir": str(rig.directory), **params}),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmRig:
    rig = SoftHsmRig(tmp_path_factory.mktemp("rig"))
    rig.ensure_tokens(["truck-1", "node-1"])
    return rig


def test_rig_folder_holds_config_and_owner_only_pins(rig: SoftHsmRig) -> None:
    assert stat.S_IMODE(rig.pins_path.stat().st_mode) == 0o600
    pins = json.loads(rig.pins_path.read_text())
    assert set(pins) == {"truck-1", "node-1"}
    assert pins["truck-1"]["user_pin"] != pins["node-1"]["user_pin"]
    assert len(pins["truck-1"]["so_pin"]) == 32
    conf = rig.conf_path.read_text()
    assert f"directories.tokendir = {rig.tokens_dir}" in conf
    assert "objectstore.backend = file" in conf
    assert rig.env() == {"SOFTHSM2_CONF": str(rig.conf_path)}


def test_ensure_token_twice_creates_no_second_token_or_key(rig: SoftHsmRig) -> None:
    before = rig.tokens()
    again = rig.ensure_token("truck-1")
    assert rig.tokens() == before
    assert again == next(t for t in before if t.label == "truck-1")
    assert [t.label for t in before] == ["node-1", "truck-1"]
    counts = in_rig(
        rig,
        """
        token = pkcs11.lib(params["module"]).get_token(token_label="truck-1")
        with token.open(user_pin=rig.user_pin("truck-1")) as s:
            emit([len(list(s.get_objects({Attribute.CLASS: c})))
                  for c in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)])
        """,
        module=rig.module_path,
    )
    assert counts == [1, 1]


def test_private_key_is_sensitive_unextractable_and_its_value_cannot_be_read(
    rig: SoftHsmRig,
) -> None:
    attrs = in_rig(
        rig,
        """
        token = pkcs11.lib(params["module"]).get_token(token_label="truck-1")
        with token.open(user_pin=rig.user_pin("truck-1")) as s:
            key = s.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label="signing")
            out = {a.name: bool(key[a]) for a in (
                Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.ALWAYS_SENSITIVE,
                Attribute.NEVER_EXTRACTABLE, Attribute.SIGN, Attribute.TOKEN, Attribute.PRIVATE)}
            try:
                key[Attribute.VALUE]
                out["value"] = "readable"
            except pkcs11.exceptions.AttributeSensitive:
                out["value"] = "sensitive"
            emit(out)
        """,
        module=rig.module_path,
    )
    assert attrs == {
        "SENSITIVE": True,
        "EXTRACTABLE": False,
        "ALWAYS_SENSITIVE": True,
        "NEVER_EXTRACTABLE": True,
        "SIGN": True,
        "TOKEN": True,
        "PRIVATE": True,
        "value": "sensitive",
    }


def test_pkcs11_signature_is_raw_r_s_and_verifies_against_rig_public_key(
    rig: SoftHsmRig,
) -> None:
    out = in_rig(
        rig,
        """
        with open_signer(rig, "truck-1") as signer:
            emit({"spki": signer.public_key_der().hex(), "kid": signer.kid.hex(),
                  "sigs": [signer.sign(m.encode()).hex() for m in params["messages"]]})
        """,
        messages=["a", "b", ""],
    )
    spki = rig.public_key_der("truck-1")
    assert bytes.fromhex(out["spki"]) == spki
    info = next(t for t in rig.tokens() if t.label == "truck-1")
    assert out["kid"] == info.kid
    for message, sig in zip(["a", "b", ""], out["sigs"], strict=True):
        assert len(bytes.fromhex(sig)) == 64
        assert verify_es256(spki, message.encode(), bytes.fromhex(sig))
    assert not verify_es256(rig.public_key_der("node-1"), b"a", bytes.fromhex(out["sigs"][0]))


def test_one_signer_shared_by_threads_signs_correctly(rig: SoftHsmRig) -> None:
    ok = in_rig(
        rig,
        """
        from concurrent.futures import ThreadPoolExecutor
        with open_signer(rig, "truck-1") as signer:
            spki = signer.public_key_der()
            def job(i):
                m = b"m%d" % i
                return verify_es256(spki, m, signer.sign(m))
            with ThreadPoolExecutor(8) as pool:
                emit(all(pool.map(job, range(400))))
        """,
    )
    assert ok is True


def test_signer_reopens_a_lost_session_once_and_keeps_signing(rig: SoftHsmRig) -> None:
    ok = in_rig(
        rig,
        """
        with open_signer(rig, "truck-1") as signer:
            signer._session.close()  # the module drops our session under us
            emit(verify_es256(signer.public_key_der(), b"x", signer.sign(b"x")))
        """,
    )
    assert ok is True


def test_signer_raises_retryable_session_lost_when_its_token_is_deleted(rig: SoftHsmRig) -> None:
    rig.ensure_token("doomed")
    out = in_rig(
        rig,
        """
        import subprocess
        signer = open_signer(rig, "doomed")
        signer.sign(b"before")
        subprocess.run(["softhsm2-util", "--delete-token", "--token", "doomed"],
                       check=True, capture_output=True)
        try:
            signer.sign(b"after")
            emit("signed")
        except HsmError as exc:
            emit([type(exc).__name__, exc.retryable])
        """,
    )
    assert out == ["SessionLost", True]
    assert "doomed" not in [t.label for t in rig.tokens()]


def test_wrong_pin_unknown_token_and_unknown_key_have_their_own_errors(rig: SoftHsmRig) -> None:
    names = in_rig(
        rig,
        """
        m = params["module"]
        emit([
            error_name(lambda: Pkcs11Signer(m, "truck-1", "0000-wrong")),
            error_name(lambda: Pkcs11Signer(m, "no-such-token", "1234")),
            error_name(lambda: Pkcs11Signer(m, "truck-1", rig.user_pin("truck-1"), "nope")),
        ])
        """,
        module=rig.module_path,
    )
    assert names == [PinIncorrect.__name__, TokenNotFound.__name__, KeyNotFound.__name__]


def test_one_process_refuses_a_second_signer_on_the_same_token_and_a_second_rig(
    rig: SoftHsmRig, tmp_path: Path
) -> None:
    other = SoftHsmRig(tmp_path / "other")
    names = in_rig(
        rig,
        """
        import os
        first = open_signer(rig, "truck-1")
        same_token = error_name(lambda: open_signer(rig, "truck-1"))
        other = SoftHsmRig(params["other"])
        os.environ.update(other.env())
        try:
            open_signer(other, "truck-1")
            second_rig = None
        except HsmError as exc:
            second_rig = str(exc)
        emit([same_token, second_rig])
        """,
        other=str(other.directory),
    )
    assert names[0] == HsmError.__name__
    assert "ONE rig config" in names[1]


def test_open_signer_refuses_when_softhsm2_conf_points_elsewhere(
    rig: SoftHsmRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", "/elsewhere/softhsm2.conf")
    with pytest.raises(HsmError, match="SOFTHSM2_CONF"):
        open_signer(rig, "truck-1")
    monkeypatch.delenv("SOFTHSM2_CONF")
    with pytest.raises(HsmError, match="SOFTHSM2_CONF"):
        open_signer(rig, "truck-1")


def test_missing_or_unloadable_module_is_module_not_found(tmp_path: Path) -> None:
    missing = str(tmp_path / "libnothing.so")
    with pytest.raises(ModuleNotFound, match=r"libnothing\.so"):
        Pkcs11Signer(missing, "truck-1", "1234")
    with pytest.raises(ModuleNotFound, match="apt-get install softhsm2"):
        SoftHsmRig(tmp_path / "rig", module_path=missing).ensure_token("truck-1")
    not_a_library = tmp_path / "fake.so"
    not_a_library.write_text("not an ELF file")
    with pytest.raises(ModuleNotFound, match=r"fake\.so"):
        Pkcs11Signer(str(not_a_library), "truck-1", "1234")


def test_rig_rejects_unknown_pin_lookups_and_unsafe_labels(rig: SoftHsmRig) -> None:
    with pytest.raises(TokenNotFound):
        rig.user_pin("truck-99")
    with pytest.raises(ValueError, match="label"):
        rig.ensure_token("../escape")
    with pytest.raises(ValueError, match="label"):
        rig.ensure_token("x" * 33)


def test_cli_init_rig_is_idempotent_and_list_shows_each_kid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["hsm", "init-rig", "--devices", "2", "--dir", str(tmp_path), "--node", "node-1"]
    assert cli_main(args) == 0
    first = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in first] == ["truck-1", "truck-2", "node-1"]
    assert cli_main(args) == 0
    assert capsys.readouterr().out.splitlines() == first
    assert cli_main(["hsm", "list", "--dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for line in first:
        label, kid = line.split("\t")
        assert any(row.split()[0] == label and row.split()[-1] == kid for row in table.splitlines())
    assert cli_main(["hsm", "list", "--dir", str(tmp_path / "none")]) == 1


def test_every_pkcs11_exception_maps_to_an_hsm_error() -> None:
    types = [
        c for _, c in inspect.getmembers(p11, inspect.isclass) if issubclass(c, p11.PKCS11Error)
    ]
    assert len(types) > 70
    for exc_type in types:
        err = translate(exc_type())
        assert isinstance(err, HsmError)
        assert exc_type.__name__ in str(err)
    for gone in (
        p11.SessionHandleInvalid,
        p11.SessionClosed,
        p11.DeviceRemoved,
        p11.TokenNotPresent,
        p11.DeviceError,
    ):
        assert isinstance(translate(gone()), SessionLost) and translate(gone()).retryable
    assert isinstance(translate(p11.PinIncorrect()), PinIncorrect)
    unknown = translate(KeyError("x"), context="token 't'")
    assert type(unknown) is HsmError and "KeyError" in str(unknown)
    assert str(unknown).startswith("token 't': ")
    same = PinIncorrect("x")
    assert translate(same) is same


def test_pin_comes_from_env_var_then_file_and_missing_sources_are_named(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("5678\n")
    assert pin_from_env_or_file("TF_PIN", "TF_PIN_FILE", environ={"TF_PIN": "1234"}) == "1234"
    env = {"TF_PIN_FILE": str(pin_file)}
    assert pin_from_env_or_file("TF_PIN", "TF_PIN_FILE", environ=env) == "5678"
    with pytest.raises(PinSourceError, match="TF_PIN"):
        pin_from_env_or_file("TF_PIN", environ={})
    with pytest.raises(PinSourceError, match="TF_PIN_FILE"):
        pin_from_env_or_file("TF_PIN", "TF_PIN_FILE", environ={})
    missing = {"TF_PIN_FILE": str(tmp_path / "absent")}
    with pytest.raises(PinSourceError, match=r"absent.*TF_PIN_FILE"):
        pin_from_env_or_file("TF_PIN", "TF_PIN_FILE", environ=missing)
