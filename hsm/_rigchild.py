"""Child-process half of SoftHsmRig: the only rig code that loads the PKCS#11 module.

A process can use one SoftHSM config only (see hsm._module), so SoftHsmRig runs its
PKCS#11 work here, in a fresh interpreter whose environment carries the rig's
SOFTHSM2_CONF. That lets one parent manage many rigs without loading the module itself.

    python -m hsm._rigchild tokens|genkey  < request.json  > reply.json

The request arrives on stdin (PINs travel there, never on argv); the reply is one JSON
object on stdout: the command's result, or {"error": HsmError subclass name, "message": ...}
with exit status 1.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, cast

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass, TokenFlag
from pkcs11.exceptions import NoSuchKey, PKCS11Error
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from hsm._module import load_module
from hsm.errors import HsmError, translate

if TYPE_CHECKING:
    from pkcs11.types import PublicKey, Session


def _find_spki(session: Session, key_label: str, *, need_private: bool) -> str | None:
    """Hex SPKI of the key pair labelled `key_label`, or None if the pair is incomplete."""
    try:
        public = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, label=key_label)
        if need_private:
            session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label=key_label)
    except NoSuchKey:
        return None
    return encode_ec_public_key(cast("PublicKey", public)).hex()


def tokens(request: dict[str, Any]) -> dict[str, Any]:
    """Initialised tokens: label, serial, and the signing key's SPKI (hex) if present."""
    lib = load_module(request["module"])
    pins: dict[str, str] = request.get("pins", {})
    found = []
    for token in lib.get_tokens():
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            continue  # SoftHSM always offers one free slot
        pin = pins.get(token.label)
        with token.open(user_pin=pin) as session:
            spki = _find_spki(session, request["key_label"], need_private=pin is not None)
        serial = token.serial.decode("ascii", "replace").strip()
        found.append({"label": token.label, "serial": serial, "spki": spki})
    return {"tokens": found}


def genkey(request: dict[str, Any]) -> dict[str, Any]:
    """Generate the P-256 signing key pair inside the token (idempotent); return its SPKI."""
    lib = load_module(request["module"])
    token = lib.get_token(token_label=request["token_label"])
    label: str = request["key_label"]
    with token.open(rw=True, user_pin=request["pin"]) as session:
        spki = _find_spki(session, label, need_private=True)
        if spki is not None:
            return {"spki": spki, "created": False}
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        public, _private = params.generate_keypair(
            id=bytes.fromhex(request["key_id"]),
            label=label,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.DERIVE: False,
                Attribute.UNWRAP: False,
            },
        )
        return {"spki": encode_ec_public_key(public).hex(), "created": True}


COMMANDS = {"tokens": tokens, "genkey": genkey}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(
            f"usage: python -m hsm._rigchild {{{'|'.join(COMMANDS)}}} < request.json",
            file=sys.stderr,
        )
        return 2
    try:
        reply = COMMANDS[argv[0]](json.load(sys.stdin))
    except (HsmError, PKCS11Error) as exc:
        err = translate(exc)
        json.dump({"error": type(err).__name__, "message": str(err)}, sys.stdout)
        return 1
    json.dump(reply, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
