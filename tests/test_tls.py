"""--tls's certificate: made once for this box's names, kept private, made anew only when needed;
the flags' checks. (Serving it is tests/e2e/test_tls.py.)"""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from edgechat.config import parse_settings
from edgechat.errors import ConfigError
from edgechat.server import box_names
from edgechat.tls import certificate_files, fingerprint, make_self_signed


def san(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names}


def test_self_signed_certificate_is_made_once_for_the_box_and_kept_private(tmp_path: Path) -> None:
    settings = parse_settings(["--tls", "--data-dir", str(tmp_path), "--allowed-hosts", "chat.lan,*"], env={})
    cert, key = certificate_files(settings)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (cert, key)} == {0o600}
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    assert {"chat.lan", "localhost", "127.0.0.1"} | set(box_names()) <= san(cert)
    assert "*" not in san(cert)
    first = fingerprint(cert)
    assert len(first) == 95 and certificate_files(settings) == (cert, key) and fingerprint(cert) == first


def test_a_new_name_for_the_box_makes_a_new_certificate(tmp_path: Path) -> None:
    settings = parse_settings(["--tls", "--data-dir", str(tmp_path)], env={})
    cert, _ = certificate_files(settings)
    first = fingerprint(cert)
    renamed = parse_settings(["--tls", "--data-dir", str(tmp_path), "--allowed-hosts", "10.9.8.7"], env={})
    certificate_files(renamed)
    assert fingerprint(cert) != first
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("10.9.8.7") in names.value.get_values_for_type(x509.IPAddress)  # an address entry


def test_operator_files_are_used_as_given(tmp_path: Path) -> None:
    make_self_signed(["chat.example"], tmp_path / "c.pem", tmp_path / "k.pem")
    settings = parse_settings(["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")], env={})
    assert settings.tls  # a certificate implies --tls
    assert certificate_files(settings) == ((tmp_path / "c.pem").resolve(), (tmp_path / "k.pem").resolve())
    missing = parse_settings(["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(tmp_path / "k.pem")], env={})
    with pytest.raises(ConfigError, match="nope.pem is not a readable file"):
        certificate_files(missing)


def test_certificate_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        parse_settings(["--tls-cert", "c.pem"], env={})
