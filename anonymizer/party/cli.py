"""The party command line (`anonymizer-party`, or `python -m anonymizer.party`).

Run `anonymizer-party --help`. Each command is one call on the SDK's PartyClient (client.py).
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import requests

from .client import PartyClient, ProtocolError, readable_fingerprint
from .transport import say as _say


def _values(text: str):
    """JSON (object or list), or a path to a one-row CSV with a header."""
    if text.lstrip().startswith(("{", "[")):
        return json.loads(text)
    with open(text, newline="") as file:
        return {k: float(v) for k, v in next(csv.DictReader(file)).items()}


def _inputs(pairs: list[str]) -> dict:
    inputs = {}
    for pair in pairs or []:
        party, _, values = pair.partition("=")
        inputs[party] = _values(values)
    return inputs


def _say_fingerprint(party: PartyClient) -> None:
    """Under Paillier: the key id and fingerprint the applicant reads out to its co-parties."""
    fingerprint = party.key_fingerprint()
    if fingerprint is None:
        return
    key_id = party.known_key_id() or "(not uploaded yet)"
    _say(f"key id {key_id}\nfingerprint {readable_fingerprint(fingerprint)}")
    _say(
        "give both to the co-parties yourself, not through the server "
        "(they pass them as --key-id and --fingerprint)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="anonymizer-party",
        description="Party client of the encrypted scorer: keys, encryption, staging, decisions.",
    )
    parser.add_argument("--server", default=os.environ.get("ANONYMIZER_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("PARTY_WORKDIR", Path.home() / ".anomed-party"))
    )
    parser.add_argument(
        "--keys-dir", type=Path, help="the secret keys the parties share (default WORKDIR/keys)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ANONYMIZER_PARTY_TOKEN"),
        help="this party's bearer token, if the server requires one",
    )
    parser.add_argument(
        "--key-id",
        help="ANONYMIZER_ENCRYPTION=paillier, a co-party: encrypt under the applicant's public key of this id",
    )
    parser.add_argument(
        "--fingerprint",
        help="with --key-id (required): the applicant's key fingerprint, from the applicant itself; "
        "a served key with another one is refused",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print the served model's parties and version")
    commands.add_parser("keygen", help="generate the shared keys for the served model (once)")
    commands.add_parser(
        "upload-key", help="upload the evaluation key, print its id (Paillier: and its fingerprint)"
    )
    commands.add_parser(
        "fingerprint", help="Paillier: print the fingerprint of the public key held (the applicant's)"
    )
    encrypt = commands.add_parser("encrypt", help="encrypt one party's values to a file")
    stage = commands.add_parser("stage", help="encrypt one party's values and stage them on the server")
    for sub in (encrypt, stage):
        sub.add_argument("--party", required=True)
        sub.add_argument("--values", required=True, help="JSON object/list or a one-row CSV path")
    encrypt.add_argument("--out", type=Path, required=True)
    stage.add_argument(
        "--uses", type=int, default=1, help="predictions it may serve (more: the applicant may explain)"
    )
    predict = commands.add_parser("predict", help="predict with these inputs plus the staged ones")
    predict.add_argument("--input", action="append", metavar="PARTY=VALUES", help="repeatable")
    predict.add_argument("--ciphertext", action="append", metavar="PARTY=FILE", help="repeatable")
    reasons = commands.add_parser("reasons", help="the decision and the top reasons it lost points on")
    reasons.add_argument("--input", action="append", metavar="PARTY=VALUES", help="repeatable")
    reasons.add_argument("--top", type=int, default=4, help="how many reasons (default 4)")
    console = commands.add_parser("console", help="serve this party's console page on 127.0.0.1")
    console.add_argument("--party", required=True, help="the party whose columns the page asks for")
    console.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    explain = commands.add_parser("explain", help="smallest change of one feature that gets approval")
    explain.add_argument("--input", action="append", metavar="PARTY=VALUES", required=True)
    explain.add_argument("--party", help="the party that owns the feature (default: its owner)")
    explain.add_argument(
        "--feature", help="a feature name (/fhe/info) or column index (default: the top reason's)"
    )
    args = parser.parse_args(argv)
    if args.key_id and not args.fingerprint:
        parser.error("--key-id needs --fingerprint: the applicant's key fingerprint, given by the applicant")

    party = PartyClient(args.server, args.workdir, args.keys_dir, token=args.token)
    try:
        if args.key_id:
            party.join(args.key_id, args.fingerprint)
        if args.command == "info":
            print(json.dumps(party.info().to_document(), indent=2))
        elif args.command == "keygen":
            party.keygen()
            _say_fingerprint(party)
        elif args.command == "upload-key":
            print(party.key_id())
            _say_fingerprint(party)
        elif args.command == "fingerprint":
            fingerprint = party.key_fingerprint()
            if fingerprint is None:
                raise ValueError("No Paillier public key here (TFHE, or no key made or joined yet).")
            print(fingerprint)
            _say_fingerprint(party)
        elif args.command == "encrypt":
            args.out.write_bytes(party.encrypt(args.party, _values(args.values)))
            _say(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
        elif args.command == "stage":
            party.stage(args.party, party.encrypt(args.party, _values(args.values)), args.uses)
            _say(f"staged {args.party}'s ciphertext for key {party.key_id()}")
        elif args.command == "predict":
            ciphertexts = {p: party.encrypt(p, v) for p, v in _inputs(args.input).items()}
            for pair in args.ciphertext or []:
                name, _, path = pair.partition("=")
                ciphertexts[name] = Path(path).read_bytes()
            label, probability = party.decrypt(party.predict(ciphertexts)[0])
            print(json.dumps({"decision": label, "probability": probability}))
        elif args.command == "reasons":
            print(json.dumps(party.reasons(_inputs(args.input), args.top)))
        elif args.command == "console":
            from .console import serve  # falcon is imported only for the console

            serve(party, args.party, args.port)
        elif args.command == "explain":
            print(json.dumps(party.explain(_inputs(args.input), args.party, args.feature)))
    except (ProtocolError, ValueError, requests.RequestException) as error:
        _say(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
