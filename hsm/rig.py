"""SoftHSM2 test rigs: one folder holding a SoftHSM config, its tokens and their PINs.

    DIR/softhsm2.conf   tokendir = DIR/tokens, file backend, log level ERROR
    DIR/tokens/         SoftHSM token store (mode 0700)
    DIR/pins.json       {label: {"user_pin", "so_pin"}}, random PINs, mode 0600
    DIR/pubkeys/        <label>.der: each token's signing public key (SPKI DER; public)

A rig is test and demo infrastructure, not a key-management system: its PINs sit in a file
next to the tokens. Production devices take the PIN from `pin_from_env_or_file`.

One config per process: SoftHSM reads SOFTHSM2_CONF when the module is first initialised
(see hsm._module). The rig therefore does all its PKCS#11 work in child processes
(hsm._rigchild) and never loads the module itself, so a parent may manage several rigs.
To SIGN in a process, put `rig.env()` into its environment before the first PKCS#11 use
and call `open_signer(rig, label)`; use a subprocess per rig for several rigs.

The module path defaults to DEFAULT_MODULE_PATH; entry points may read the override from
TRUSTFLEET_PKCS11_MODULE with `module_path_from_env()` and pass it in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import secrets
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hsm import errors
from hsm._module import bound_config
from hsm.errors import HsmError, ModuleNotFound, TokenNotFound
from hsm.signer import Pkcs11Signer, pin_from_env_or_file
from hsm.verify import kid_for

DEFAULT_MODULE_PATH: Final = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV: Final = "TRUSTFLEET_PKCS11_MODULE"
KEY_LABEL: Final = "signing"
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")  # PKCS#11 labels: 32 bytes
_PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent
_TIMEOUT_S: Final = 60.0


def module_path_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The PKCS#11 module path: TRUSTFLEET_PKCS11_MODULE if set, else the SoftHSM2 default.

    Call at entry points only; library code takes the path as a parameter.
    """
    env = os.environ if environ is None else environ
    return env.get(MODULE_ENV) or DEFAULT_MODULE_PATH


@dataclass(frozen=True)
class TokenInfo:
    """A token in a rig. `kid` is the hex SHA-256 of the signing key's SPKI (None: no key)."""

    label: str
    serial: str
    has_key: bool
    kid: str | None
    key_label: str = KEY_LABEL


class SoftHsmRig:
    """A SoftHSM2 test rig in `directory` (created, with its config, if missing)."""

    def __init__(self, directory: Path | str, module_path: str = DEFAULT_MODULE_PATH) -> None:
        self.directory = Path(directory).resolve()
        self.module_path = module_path
        self.conf_path = self.directory / "softhsm2.conf"
        self.tokens_dir = self.directory / "tokens"
        self.pins_path = self.directory / "pins.json"
        self.pubkeys_dir = self.directory / "pubkeys"
        for folder in (self.directory, self.tokens_dir, self.pubkeys_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = (
            f"directories.tokendir = {self.tokens_dir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
        )
        if not self.conf_path.exists() or self.conf_path.read_text() != conf:
            self.conf_path.write_text(conf)
        if not self.pins_path.exists():
            self._write_pins({})

    def __repr__(self) -> str:
        return f"SoftHsmRig({str(self.directory)!r})"

    def env(self) -> dict[str, str]:
        """Environment a process needs to use this rig's tokens."""
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    def user_pin(self, label: str) -> str:
        """The user PIN of token `label` (TokenNotFound if the rig never created it)."""
        entry = self._read_pins().get(_checked(label))
        if entry is None:
            raise TokenNotFound(f"rig {self.directory} has no token {label!r}; ensure_token first")
        return str(entry["user_pin"])

    def tokens(self) -> list[TokenInfo]:
        """Every initialised token in the rig, with its signing key's kid if it has one."""
        with self._locked():
            return self._tokens_locked()

    def ensure_token(self, label: str) -> TokenInfo:
        """Make sure token `label` exists and holds a P-256 signing key; idempotent."""
        return self.ensure_tokens([label])[0]

    def ensure_tokens(self, labels: Iterable[str]) -> list[TokenInfo]:
        """ensure_token for several labels, listing the rig's tokens only twice."""
        wanted = list(dict.fromkeys(_checked(label) for label in labels))
        with self._locked():
            found = {t.label: t for t in self._tokens_locked()}
            missing = [label for label in wanted if not (label in found and found[label].has_key)]
            for label in missing:
                self._create_locked(label, token_exists=label in found)
            if missing:
                found = {t.label: t for t in self._tokens_locked()}
        absent = [label for label in wanted if label not in found]
        if absent:
            raise TokenNotFound(f"tokens {absent} vanished right after they were created")
        return [found[label] for label in wanted]

    def _create_locked(self, label: str, *, token_exists: bool) -> None:
        """Initialise token `label` if needed, then generate its signing key inside it."""
        pins = self._read_pins()
        if not token_exists:
            if label not in pins:
                pins[label] = {"user_pin": secrets.token_hex(16), "so_pin": secrets.token_hex(16)}
                self._write_pins(pins)  # before init: a crash must not lose the PINs
            self._init_token(label, pins[label]["so_pin"], pins[label]["user_pin"])
        elif label not in pins:
            raise HsmError(
                f"token {label!r} exists but pins.json has no PIN for it; "
                f"delete the rig folder {self.directory} and run init-rig again"
            )
        request = {
            "module": self.module_path,
            "token_label": label,
            "pin": pins[label]["user_pin"],
            "key_label": KEY_LABEL,
            "key_id": secrets.token_hex(16),
        }
        self._cache_public_key(label, bytes.fromhex(self._child("genkey", request)["spki"]))

    def public_key_der(self, label: str) -> bytes:
        """The SPKI DER of token `label`'s signing key (cached in pubkeys/<label>.der)."""
        cached = self.pubkeys_dir / f"{_checked(label)}.der"
        if cached.exists():
            return cached.read_bytes()
        with self._locked():
            self._tokens_locked()  # refreshes the cache for every token with a key
        if not cached.exists():
            raise TokenNotFound(f"rig {self.directory} has no token {label!r} with a signing key")
        return cached.read_bytes()

    # --- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise rig changes across processes (several agents may start at once)."""
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _tokens_locked(self) -> list[TokenInfo]:
        pins = {label: entry["user_pin"] for label, entry in self._read_pins().items()}
        reply = self._child(
            "tokens", {"module": self.module_path, "pins": pins, "key_label": KEY_LABEL}
        )
        found = []
        for token in reply["tokens"]:
            spki = bytes.fromhex(token["spki"]) if token["spki"] else None
            if spki is not None and _LABEL_RE.fullmatch(token["label"]):
                self._cache_public_key(token["label"], spki)
            kid = kid_for(spki).hex() if spki is not None else None
            found.append(TokenInfo(token["label"], token["serial"], spki is not None, kid))
        return sorted(found, key=lambda t: _natural(t.label))

    def _cache_public_key(self, label: str, spki: bytes) -> None:
        path = self.pubkeys_dir / f"{label}.der"
        if not path.exists() or path.read_bytes() != spki:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(spki)
            tmp.replace(path)

    def _read_pins(self) -> dict[str, dict[str, str]]:
        if self.pins_path.stat().st_mode & 0o077:
            os.chmod(self.pins_path, 0o600)  # never leave PINs group/world readable
        pins: dict[str, dict[str, str]] = json.loads(self.pins_path.read_text())
        return pins

    def _write_pins(self, pins: Mapping[str, Mapping[str, str]]) -> None:
        tmp = self.pins_path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(pins, handle, indent=2, sort_keys=True)
        tmp.replace(self.pins_path)

    def _require_module(self) -> None:
        if not os.path.isfile(self.module_path):
            raise ModuleNotFound(
                f"PKCS#11 module {self.module_path} does not exist; install SoftHSM2 "
                f"(`apt-get install softhsm2`) or set {MODULE_ENV} to its path"
            )

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env()}
        paths = [str(_PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def _child(self, command: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run one hsm._rigchild command with this rig's SOFTHSM2_CONF; PINs go via stdin."""
        self._require_module()
        proc = subprocess.run(
            [sys.executable, "-m", "hsm._rigchild", command],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=self._child_env(),
            timeout=_TIMEOUT_S,
            check=False,
        )
        try:
            reply: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            raise HsmError(
                f"rig helper `{command}` failed (exit {proc.returncode}): {proc.stderr[-800:]}"
            ) from None
        if "error" in reply:
            cls = getattr(errors, reply["error"], HsmError)
            if not (isinstance(cls, type) and issubclass(cls, HsmError)):
                cls = HsmError
            raise cls(reply["message"])
        return reply

    def _init_token(self, label: str, so_pin: str, user_pin: str) -> None:
        """Initialise a free SoftHSM slot as token `label`.

        softhsm2-util refuses to read PINs from a pipe ("Could not get SO PIN" when stdin is
        not a terminal), so we answer its prompts through a pseudo-terminal. That keeps the
        PINs off the command line, where any local user could read them in /proc.
        """
        self._require_module()
        util = shutil.which("softhsm2-util")
        if util is None:
            raise ModuleNotFound("softhsm2-util is not on PATH; `apt-get install softhsm2`")
        cmd = [util, "--module", self.module_path, "--init-token", "--free", "--label", label]
        env = {**os.environ, **self.env()}
        answers = [so_pin, so_pin, user_pin, user_pin]
        returncode, output = _run_answering_pin_prompts(cmd, answers, env)
        if returncode != 0 or "has been initialized" not in output:
            raise HsmError(f"softhsm2-util could not create token {label!r}: {output.strip()}")


def _run_answering_pin_prompts(
    cmd: list[str], answers: list[str], env: Mapping[str, str]
) -> tuple[int, str]:
    """Run `cmd` on a pseudo-terminal, typing the next answer at each "...PIN:" prompt.

    Returns (exit status, terminal output). The program disables echo, so the output holds
    no PINs. Requires the prompts to end in "PIN:" (true for softhsm2-util 2.x).
    """
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=dict(env))
    finally:
        os.close(slave)
    pending = list(answers)
    output = bytearray()
    since_answer = bytearray()
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the program exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
            since_answer += chunk
            if pending and since_answer.rstrip().endswith(b"PIN:"):
                os.write(master, pending.pop(0).encode() + b"\n")
                since_answer.clear()
        else:
            raise HsmError(f"{cmd[0]} did not finish within {_TIMEOUT_S:.0f} s")
        returncode = proc.wait(timeout=_TIMEOUT_S)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return returncode, output.decode("utf-8", "replace")


def _natural(label: str) -> list[str | int]:
    """Sort key putting truck-2 before truck-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def _checked(label: str) -> str:
    if not _LABEL_RE.fullmatch(label):
        raise ValueError(
            f"token label {label!r} must be 1-32 characters of letters, digits, '.', '_' or '-'"
        )
    return label


def open_signer(rig: SoftHsmRig, label: str) -> Pkcs11Signer:
    """A Pkcs11Signer for token `label` of `rig`, in THIS process.

    Requires os.environ["SOFTHSM2_CONF"] to be the rig's config already (set it from
    rig.env() before the first PKCS#11 use); raises HsmError if it points elsewhere, or if
    this process already initialised the module with another config.
    """
    wanted = str(rig.conf_path)
    current = os.environ.get("SOFTHSM2_CONF")
    if current is None or os.path.realpath(current) != os.path.realpath(wanted):
        raise HsmError(
            f"SOFTHSM2_CONF is {current!r}, not this rig's {wanted!r}; set it (rig.env()) "
            "before the first PKCS#11 use; use one process per rig"
        )
    bound = bound_config(rig.module_path)
    if bound is not None and (not bound or os.path.realpath(bound) != os.path.realpath(wanted)):
        raise HsmError(
            f"this process already initialised {rig.module_path} with SOFTHSM2_CONF="
            f"{bound!r}; a process works with ONE rig config, so open this rig in a subprocess"
        )
    return Pkcs11Signer(rig.module_path, label, rig.user_pin(label), key_label=KEY_LABEL)


def signer_from_settings(module_path: str, token_label: str, *, rig_dir: Path | None,
                         pin_env: str, pin_file_env: str) -> Pkcs11Signer:
    """The signer an entry point asks for: from a SoftHSM test rig, or a token and a PIN.

    With `rig_dir`, the rig's config is put in os.environ and its pins.json gives the PIN.
    Otherwise the PIN comes from the environment variable `pin_env`, or from the file named
    by `pin_file_env`; never from the command line. Raises HsmError subclasses.
    """
    if rig_dir is not None:
        rig = SoftHsmRig(rig_dir)
        os.environ.update(rig.env())
        return open_signer(rig, token_label)
    pin = pin_from_env_or_file(pin_env, pin_file_env)
    return Pkcs11Signer(module_path, token_label, pin)
