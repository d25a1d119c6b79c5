"""Signed C2PA manifests (Content Credentials) with `c2pa-python`, offline: the signer is the user's
certificate and key, configured in the workspace (`labels/signing.json`); without one no manifest is made.

C2PA readers reject a self-signed leaf certificate (c2pa-python issue 199), so for local use
`make_dev_ca` makes a development CA and a leaf it signs; a reader trusts the leaf only when the CA is
given to it as a trust anchor (`trust.user_anchors`). Nothing here reaches the network: no timestamp
authority, no OCSP, no remote manifests.
Not handled: a manifest survives only byte-exact copies (it sits in a PNG chunk and binds the file's
hash); any re-encode drops it, which is what the watermark is for.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genforge.errors import ConfigError
from genforge.workspace import atomic_write_bytes, atomic_write_json, home

SIGNING_FORMAT = "genforge-signing/1"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}, "builder": {"thumbnail": {"enabled": False}}}


@dataclass(frozen=True)
class Signing:
    cert: Path  # PEM chain: the leaf first, then its issuers
    key: Path  # PEM private key of the leaf
    trust_anchors: Path | None = None  # PEM roots a reader here should trust (the dev CA)
    alg: str = "es256"


def signing_path() -> Path:
    return home() / "labels" / "signing.json"


def load_signing() -> Signing | None:
    """The workspace's signer, or None (the default: watermark and PNG metadata only)."""
    path = signing_path()
    if not path.exists():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("format") != SIGNING_FORMAT:
        raise ConfigError(f"{path} is not a {SIGNING_FORMAT} file; recreate it with `genforge labels use-cert`")
    anchors = raw.get("trust_anchors")
    return Signing(Path(raw["cert"]), Path(raw["key"]), Path(anchors) if anchors else None, raw.get("alg", "es256"))


def save_signing(signing: Signing) -> Path:
    for what, p in (("cert", signing.cert), ("key", signing.key), ("trust anchors", signing.trust_anchors)):
        if p is not None and not p.is_file():
            raise ConfigError(f"{what} file not found: {p}")
    return atomic_write_json(signing_path(), {"format": SIGNING_FORMAT, "cert": str(signing.cert.resolve()),
                                              "key": str(signing.key.resolve()), "alg": signing.alg,
                                              "trust_anchors": str(signing.trust_anchors.resolve())
                                              if signing.trust_anchors else None})


def _context(trust_anchors: Path | None) -> Any:
    import c2pa

    settings: dict[str, Any] = json.loads(json.dumps(OFFLINE))
    if trust_anchors is not None:
        settings["trust"] = {"user_anchors": trust_anchors.read_text(encoding="utf-8")}
    return c2pa.Context.from_dict(settings)


def sign_png(png: bytes, signing: Signing, fields: dict[str, str]) -> bytes:
    """The PNG with a signed manifest: a `c2pa.created` action of trained algorithmic media, and the
    generation's fields as a genforge assertion."""
    import c2pa

    from genforge import __version__

    manifest = {
        "claim_generator_info": [{"name": "genforge", "version": __version__}],
        "title": f"generation {fields.get('generation_id', '')}",
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": "genforge", "version": __version__}}]}},
            {"label": "org.genforge.generation", "data": dict(fields)},
        ],
    }
    info = c2pa.C2paSignerInfo(signing.alg, signing.cert.read_bytes(), signing.key.read_bytes(), None)
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest, context=_context(signing.trust_anchors)) as b:
        b.sign(signer, "image/png", io.BytesIO(png), out)
    return out.getvalue()


def read_manifest(data: bytes, mime: str = "image/png", trust_anchors: Path | None = None) -> dict[str, Any] | None:
    """{validation_state: Valid | Trusted | Invalid, codes of failures, the genforge assertion, signer}, or None
    when the file carries no manifest."""
    import c2pa

    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, _context(trust_anchors))
    except c2pa.C2paError as e:  # a manifest store too damaged to parse is a failed validation, not a crash
        return {"validation_state": "Invalid", "failures": [f"unreadable: {e}"], "generation": {}, "signer": None}
    if reader is None:
        return None
    with reader:
        store = json.loads(reader.json())
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    generation = next((a["data"] for a in active.get("assertions", []) if a.get("label") == "org.genforge.generation"), {})
    failures = [s.get("code") for s in store.get("validation_status", []) or []]
    return {"validation_state": store.get("validation_state"), "failures": failures, "generation": generation,
            "signer": (active.get("signature_info") or {}).get("common_name") or (active.get("signature_info") or {}).get("issuer")}


def make_dev_ca(folder: Path, days: int = 365) -> Signing:
    """A development CA and a leaf for C2PA signing (ES256), in `folder`; keys are owner-only. For local use:
    no public reader trusts this CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genforge (development, untrusted)"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("genforge development CA")).issuer_name(name("genforge development CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days * 5))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("genforge development signer")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    pem = serialization.Encoding.PEM
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # the keys are briefly group-readable while atomic_write_bytes publishes them
    atomic_write_bytes(folder / "ca.pem", ca.public_bytes(pem))
    atomic_write_bytes(folder / "signer-chain.pem", leaf.public_bytes(pem) + ca.public_bytes(pem))
    for fname, k in (("ca.key", ca_key), ("signer.key", leaf_key)):
        atomic_write_bytes(folder / fname, pem_key(k))
        (folder / fname).chmod(0o600)
    return Signing(folder / "signer-chain.pem", folder / "signer.key", folder / "ca.pem")
