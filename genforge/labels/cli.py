"""`genforge labels`: the C2PA signing certificate of the workspace (the watermark key needs no setup)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from genforge.labels.c2pa_manifest import Signing, make_dev_ca, save_signing
from genforge.workspace import home

labels_app = typer.Typer(help="AI-content labels: the certificate that signs C2PA manifests.", no_args_is_help=True)
out = Console(soft_wrap=True)  # a verdict line must not break where a script greps it


@labels_app.command("dev-ca")
def dev_ca_cmd(folder: Path = typer.Option(None, "--out", help="where to write it (default: WORKSPACE/labels/dev-ca)"),
               use: bool = typer.Option(True, "--use/--no-use", help="sign this workspace's images with it")) -> None:
    """Make a development CA and a signing certificate it issues, for local C2PA signing.

    Readers reject a self-signed signing certificate, hence a CA and a leaf; they trust the leaf only
    with ca.pem configured as a trust anchor (`genforge verify` does so from the workspace)."""
    signing = make_dev_ca(folder or home() / "labels" / "dev-ca")
    if use:
        save_signing(signing)
    out.print(f"development CA: {signing.trust_anchors}\nsigning chain: {signing.cert}\nsigning key: {signing.key}"
              + ("\nimages from this workspace are now signed with it" if use else ""), highlight=False)


@labels_app.command("use-cert")
def use_cert_cmd(cert: Path = typer.Option(..., "--cert", help="PEM chain: the signing certificate, then its issuers"),
                 key: Path = typer.Option(..., "--key", help="PEM private key of the signing certificate"),
                 trust_anchors: Path = typer.Option(None, "--trust-anchors", help="PEM roots to trust when verifying"),
                 alg: str = typer.Option("es256", "--alg", help="es256 | es384 | es512 | ps256 | ps384 | ps512 | ed25519")) -> None:
    """Sign this workspace's images with your certificate (a C2PA manifest on every PNG)."""
    path = save_signing(Signing(cert, key, trust_anchors, alg))
    out.print(f"signing configured: {path}", highlight=False)


def print_verification(result: dict[str, Any], as_json: bool = False) -> None:
    """`genforge verify`'s report: one line per label, then the verdict."""
    if as_json:
        print(json.dumps(result, indent=1))
        return
    mark, meta, manifest = result["watermark"], result["metadata"], result["c2pa"]
    if not mark["readable"]:
        line = f"not readable ({mark['reason']})"
    elif mark["detected"]:
        payload = (f"model hash {mark['model_hash']}, generation tag {mark['generation_tag']}"
                   + {True: ", matches the metadata", False: ", DIFFERS from the metadata"}.get(mark.get("matches_metadata"), "")
                   if mark["payload_valid"] else "payload unreadable (CRC fails): present, but too damaged to decode")
        line = f"present (p = {mark['p_value']:.1e}, z = {mark['z']}, read via {mark['equaliser']}); {payload}"
    else:
        line = f"not found (p = {mark['p_value']:.2f}): unmarked, made in another workspace, or too damaged"
    out.print(f"{result['file']}", highlight=False)
    out.print(f"  watermark: {line}", highlight=False, markup=False)
    out.print("  metadata:  " + (", ".join(f"{k}={v}" for k, v in meta.items()) if meta else "none"), highlight=False,
              markup=False)
    if manifest is None:
        out.print("  c2pa:      none", highlight=False)
    else:
        trust = {"Trusted": "signature valid and its CA trusted", "Valid": "signature valid, signer not trusted here"}
        out.print(f"  c2pa:      {manifest['validation_state']} ({trust.get(manifest['validation_state'], 'INVALID')}; "
                  f"signer {manifest['signer']}; {', '.join(manifest['failures']) or 'no failures'})",
                  highlight=False, markup=False)
    out.print("AI-generated: " + ("yes" if result["ai_generated"] else "no label found"), highlight=False)
