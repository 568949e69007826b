"""Signing keys per purpose: a bundle's signature never passes as a webhook's (nor the reverse), a webhook
signature expires, and evidence bundles carry an Ed25519 signature that the exported public key alone verifies.
"""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import stat
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi.testclient import TestClient

from tests.test_review_escalation import Receiver, receiver_factory  # noqa: F401
from tests.test_review_support import (  # noqa: F401
    SECRET,
    make_item,
    review_ctx,
    review_db_url,
    review_settings,
    tokens,
)

pytestmark = pytest.mark.services

BUNDLE_PURPOSE = "deepscreen-evidence-bundle/1"


def _client(ctx: Any, **settings: Any) -> TestClient:
    from review.api import create_app

    new = review_settings(ctx.settings.database_url, ctx.settings.s3_endpoint_url, **settings)
    return TestClient(create_app(dataclasses.replace(ctx, settings=new)))


def _escalated_bundle(http: TestClient, ctx: Any, tokens: Any) -> bytes:
    item = make_item(ctx, faces=1, source="signing").review_item_id
    headers = tokens.header("moderator")
    assert http.post(f"/v1/review/items/{item}/claim", headers=headers).status_code == 200
    decided = http.post(f"/v1/review/items/{item}/decision", headers=headers, json={"decision": "escalate"})
    assert decided.status_code == 200 and decided.json()["bundle_id"], decided.text
    download = http.get(f"/v1/bundles/{decided.json()['bundle_id']}", headers=headers)
    assert download.status_code == 200
    return download.content


def _entries(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def _pack(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name, data in entries.items():
            out.writestr(name, data)
    return buffer.getvalue()


def _fields(signature_file: bytes) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in signature_file.decode().splitlines() if "=" in line)


def test_purpose_keys_are_hkdf_of_the_secret_and_differ_per_purpose() -> None:
    from review.signing import BUNDLE_PURPOSE, WEBHOOK_PURPOSE, derive_key

    for purpose in (BUNDLE_PURPOSE, WEBHOOK_PURPOSE):
        expected = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"deepscreen/1", info=purpose.encode()
        ).derive(SECRET.encode())
        assert derive_key(SECRET, purpose) == expected
    assert derive_key(SECRET, BUNDLE_PURPOSE) != derive_key(SECRET, WEBHOOK_PURPOSE)


def test_a_bundle_signature_never_passes_as_a_webhook_signature_nor_the_reverse(  # noqa: ANN001
    review_ctx, tokens, receiver_factory
) -> None:  # noqa: ANN001
    from review import relay, webhooks
    from review.bundles import BundleInvalid, verify_bundle

    receiver = receiver_factory([])
    http = _client(review_ctx, webhook_url=receiver.url, webhook_topics="escalation,decision.mark_real")
    entries = _entries(_escalated_bundle(http, review_ctx, tokens))
    manifest, sig = entries["manifest.json"], _fields(entries["manifest.sig"])
    # a receiver that checked HMAC(secret, body), as webhook receivers did, must not accept a bundle's signature
    assert sig["hmac-sha256"] != hmac.new(SECRET.encode(), manifest, hashlib.sha256).hexdigest()
    assert sig["purpose"] == BUNDLE_PURPOSE
    for header in (f"t={sig['t']},v1={sig['hmac-sha256']}", f"sha256={sig['hmac-sha256']}"):
        with pytest.raises(webhooks.WebhookSignatureInvalid):
            webhooks.verify_webhook(SECRET, manifest, header, now=int(sig["t"]))

    # the reverse: a real delivery's body and signature, dressed up as a bundle
    item = make_item(review_ctx, source="signing").review_item_id
    headers = tokens.header("moderator2")
    http.post(f"/v1/review/items/{item}/claim", headers=headers)
    assert (
        http.post(
            f"/v1/review/items/{item}/decision", headers=headers, json={"decision": "mark_real"}
        ).status_code
        == 200
    )
    before = time.time()
    relay.deliver_due(review_ctx, webhooks.config_from(http.app.state.ctx.settings))
    sent = next(r for r in receiver.requests if r["headers"]["x-deepscreen-topic"] == "decision.mark_real")
    body, header = sent["body"], sent["headers"]["x-deepscreen-signature"]
    stamped = webhooks.verify_webhook(SECRET, body, header)  # genuine: the receiver's check passes
    assert before - 1 <= stamped <= time.time() + 1  # stamped when sent
    t, v1 = (part.partition("=")[2] for part in header.split(","))
    forged = _pack(
        {
            "manifest.json": body,
            "manifest.sig": f"purpose={BUNDLE_PURPOSE}\nt={t}\nhmac-sha256={v1}\n".encode(),
        }
    )
    with pytest.raises(BundleInvalid, match="bad_signature"):
        verify_bundle(forged, SECRET)
    legacy = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    with pytest.raises(BundleInvalid, match="legacy_signature"):
        verify_bundle(
            _pack({"manifest.json": body, "manifest.sig": f"hmac-sha256={legacy}\n".encode()}), SECRET
        )


def test_a_webhook_signature_outside_its_time_window_is_refused() -> None:
    from review.webhooks import WebhookSignatureInvalid, sign_webhook, verify_webhook

    body = b'{"delivery_id":"d-1","topic":"escalation"}'
    t0 = 1_800_000_000
    header = sign_webhook(SECRET, body, t0)
    assert verify_webhook(SECRET, body, header, now=t0 + 299) == t0
    assert verify_webhook(SECRET, body, header, tolerance_s=30, now=t0 - 29) == t0
    for now in (t0 + 301, t0 - 301, t0 + 86_400):
        with pytest.raises(WebhookSignatureInvalid, match="outside_window"):
            verify_webhook(SECRET, body, header, now=now)
    v1 = header.partition(",v1=")[2]
    with pytest.raises(
        WebhookSignatureInvalid, match="bad_signature"
    ):  # a fresh timestamp breaks the signature
        verify_webhook(SECRET, body, f"t={t0 + 3600},v1={v1}", now=t0 + 3600)
    with pytest.raises(WebhookSignatureInvalid, match="bad_signature"):
        verify_webhook(SECRET, body + b" ", header, now=t0)
    with pytest.raises(WebhookSignatureInvalid, match="bad_signature"):
        verify_webhook("another-secret-0123456789abcdef0123", body, header, now=t0)
    for malformed in ("", "sha256=" + "0" * 64, f"t=soon,v1={v1}", f"t={t0}", f"t={t0},v1=abc"):
        with pytest.raises(WebhookSignatureInvalid, match="malformed"):
            verify_webhook(SECRET, body, malformed, now=t0)


def test_an_exported_public_key_alone_verifies_a_bundle_and_catches_tampering(  # noqa: ANN001
    review_ctx, tokens, tmp_path, capsys
) -> None:  # noqa: ANN001
    from cli.main import main
    from review.bundles import BundleInvalid, verify_bundle

    key_file = tmp_path / "secrets" / "bundle-key.pem"
    assert main(["bundles", "keygen", "--key", str(key_file)]) == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    made = key_file.read_bytes()
    assert main(["bundles", "keygen", "--key", str(key_file)]) == 0 and key_file.read_bytes() == made  # kept
    capsys.readouterr()
    assert main(["bundles", "public-key", "--key", str(key_file)]) == 0
    public_pem = capsys.readouterr().out.encode()
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----") and b"PRIVATE" not in public_pem

    archive = _escalated_bundle(_client(review_ctx, bundle_signing_key_file=key_file), review_ctx, tokens)
    entries = _entries(archive)
    public = serialization.load_pem_public_key(public_pem)

    def authority_accepts(files: dict[str, bytes]) -> bool:
        """What an outside authority does, with the public key and the `cryptography` package only."""
        sig = _fields(files["manifest.sig"])
        if sig.get("purpose") != BUNDLE_PURPOSE or "ed25519" not in sig:
            return False
        try:
            public.verify(
                base64.b64decode(sig["ed25519"]),
                f"{sig['purpose']}\n{sig['t']}\n".encode() + files["manifest.json"],
            )
        except InvalidSignature:
            return False
        listed = json.loads(files["manifest.json"])["files"]
        return all(hashlib.sha256(files[f["name"]]).hexdigest() == f["sha256"] for f in listed)

    assert authority_accepts(entries)
    forged = json.loads(entries["manifest.json"])
    forged["review_item"]["decided_by"] = "someone-else"
    assert not authority_accepts({**entries, "manifest.json": json.dumps(forged).encode()})
    original = entries["original.jpg"]
    assert not authority_accepts({**entries, "original.jpg": original[:-1] + bytes([original[-1] ^ 1])})
    sig = _fields(entries["manifest.sig"])
    other_sig = base64.b64encode(bytes(64)).decode()
    assert not authority_accepts(
        {
            **entries,
            "manifest.sig": entries["manifest.sig"].replace(sig["ed25519"].encode(), other_sig.encode()),
        }
    )

    # the product's own check agrees; another key, or a tampered file, fails it
    assert verify_bundle(archive, public_key=public_pem)["review_item"]["state"] == "escalated"
    assert verify_bundle(archive, SECRET, public_key=public_pem)  # the HMAC is there as well
    with pytest.raises(BundleInvalid, match="bad_signature"):
        verify_bundle(archive, public_key=Ed25519PrivateKey.generate().public_key())
    tampered = _pack({**entries, "original.jpg": original[:-1] + bytes([original[-1] ^ 1])})
    with pytest.raises(BundleInvalid, match="file_altered:original.jpg"):
        verify_bundle(tampered, public_key=public_pem)
    pem_file, bundle_file, bad_file = tmp_path / "public.pem", tmp_path / "b.zip", tmp_path / "bad.zip"
    pem_file.write_bytes(public_pem)
    bundle_file.write_bytes(archive)
    bad_file.write_bytes(tampered)
    assert main(["bundles", "verify", str(bundle_file), "--public-key", str(pem_file)]) == 0
    assert main(["bundles", "verify", str(bad_file), "--public-key", str(pem_file)]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["reason"] == "file_altered:original.jpg"


def test_an_unusable_key_file_is_a_typed_error_and_the_escalation_still_stands(  # noqa: ANN001
    review_ctx, tokens, tmp_path: Path
) -> None:
    from review.signing import SigningKeyError, load_private_key

    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningKeyError, match="key_invalid"):
        load_private_key(not_a_key)
    with pytest.raises(SigningKeyError, match="key_unreadable"):
        load_private_key(tmp_path / "missing.pem")
    http = _client(review_ctx, bundle_signing_key_file=tmp_path / "missing.pem")
    item = make_item(review_ctx, source="signing").review_item_id
    headers = tokens.header("moderator")
    http.post(f"/v1/review/items/{item}/claim", headers=headers)
    decided = http.post(f"/v1/review/items/{item}/decision", headers=headers, json={"decision": "escalate"})
    assert decided.status_code == 200 and decided.json()["new_state"] == "escalated"
    assert decided.json()["bundle_id"] is None  # no bundle signed with a key that is not there


def test_serve_refuses_to_start_with_an_unusable_bundle_key(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    import secrets
    import threading

    from cli.main import main

    monkeypatch.setenv("DEEPSCREEN_BUNDLE_SIGNING_KEY_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("DEEPSCREEN_SIGNING_SECRET", secrets.token_hex(32))
    codes: list[int] = []
    # in a thread: were the check missing, serve would run until killed
    run = threading.Thread(
        target=lambda: codes.append(main(["serve", "--home", str(tmp_path / "home"), "--port", "0"])),
        daemon=True,
    )
    run.start()
    run.join(timeout=60)
    assert codes == [2]
    assert "bundles keygen" in capsys.readouterr().err
