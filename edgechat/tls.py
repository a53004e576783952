"""HTTPS in one flag (`--tls`): the certificate Streamlit serves, and its fingerprint.

Browsers give the clipboard, install-as-app and more only to secure origins, and the owner cookie
and every chat travel in clear over plain HTTP. Streamlit serves TLS itself from its
`server.sslCertFile`/`server.sslKeyFile` options, but reads them before it imports the page
(uvicorn makes its SSL context first), so a flag after `--` comes too late for this process:
`serve_tls` sets them in the environment and restarts the same command line once (exec, same
pid). The certificate is the operator's (`--tls-cert/--tls-key`) or a self-signed one for this
box's names and addresses, made with `cryptography` once and kept in the data folder (0600); its
SHA-256 fingerprint is printed at start and shown in the server panel, so people can check the
browser's warning against it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgechat.config import Settings
from edgechat.errors import ConfigError
from edgechat.server import box_names
from edgechat.store import default_data_dir

CERT_ENV, KEY_ENV = "STREAMLIT_SERVER_SSL_CERT_FILE", "STREAMLIT_SERVER_SSL_KEY_FILE"
VALID_DAYS = 397  # Apple accepts at most 398 days for a TLS server certificate
RENEW_DAYS = 30  # a kept certificate this close to its end is made anew
FOLDER = "tls"


def serving_certificate() -> Path | None:
    """The certificate Streamlit serves (its server.sslCertFile), or None over plain HTTP."""
    from streamlit import config

    cert = config.get_option("server.sslCertFile")
    return Path(cert) if cert else None


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the certificate (DER) as browsers show it: AB:CD:…"""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certificate_files(settings: Settings) -> tuple[Path, Path]:
    """(certificate, key) to serve: the operator's, or this box's self-signed pair, made when
    missing, near its end, or no longer naming every name and address the box has now."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        for path in (settings.tls_cert, settings.tls_key):
            if not path.is_file():
                raise ConfigError(f"--tls-cert/--tls-key: {path} is not a readable file")
        return settings.tls_cert.resolve(), settings.tls_key.resolve()
    folder = (settings.data_dir or default_data_dir()) / FOLDER
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    names = sorted(set(box_names()) | _allowed_names(settings))
    if not (cert_path.is_file() and key_path.is_file() and _still_good(cert_path, names)):
        make_self_signed(names, cert_path, key_path)
    return cert_path, key_path


def make_self_signed(names: list[str], cert_path: Path, key_path: Path) -> None:
    """A P-256 server certificate for `names` (DNS names and IP addresses), signed by its own key;
    both files 0600 in a 0700 folder."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgechat on {socket.gethostname()}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    for path, data in ((key_path, key_pem), (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def serve_tls(settings: Settings) -> None:
    """Called where `streamlit run` imports web_demo.py. With `--tls` and Streamlit not yet serving
    a certificate: set its options in the environment and restart this command line (never
    returns). Once serving one: print its fingerprint."""
    if not settings.tls and serving_certificate() is None:
        return
    served = serving_certificate()
    if served is None:
        cert_path, key_path = certificate_files(settings)
        os.environ[CERT_ENV], os.environ[KEY_ENV] = str(cert_path), str(key_path)
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"  --tls: restarting with HTTPS, certificate {cert_path}", flush=True)
        _close_on_exec()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    print(f"  HTTPS certificate {served}\n  SHA-256 fingerprint {fingerprint(served)}\n", flush=True)


def _close_on_exec() -> None:
    """Streamlit made its listening socket inheritable: the restarted process binds the port anew."""
    fds = [int(n) for n in os.listdir("/proc/self/fd")] if os.path.isdir("/proc/self/fd") else range(3, 1024)
    for fd in fds:
        try:
            if fd > 2 and os.get_inheritable(fd):
                os.set_inheritable(fd, False)
        except OSError:
            pass  # closed meanwhile, or the listing's own descriptor


def _allowed_names(settings: Settings) -> set[str]:
    return {h.strip() for h in settings.allowed_hosts.split(",") if h.strip() and h.strip() != "*"}


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _still_good(cert_path: Path, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left > datetime.timedelta(days=RENEW_DAYS) and set(_general_names(names)) <= set(san)
