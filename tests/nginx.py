"""Real nginx with TLS in front of a real bixweb, configured by the shipped template.

The site config is ``deploy/nginx/bixweb.conf.template`` rendered by the real
``envsubst`` with :data:`ENVSUBST_VARIABLES`, the list the README's "Deploy
behind nginx" shows (a test checks that it does). The certificate comes from
a throwaway ``trustme`` CA. The main ``nginx.conf`` around the site keeps the
pid, logs and temp files in a directory of the test's own. Locally a missing
``nginx``, ``envsubst`` or ``trustme`` skips the test; under ``CI=true`` it fails it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bixweb import assets
from tests.browser import require
from tests.support import ROOT, free_port

TEMPLATE = ROOT / "deploy" / "nginx" / "bixweb.conf.template"
ENVSUBST_VARIABLES = (
    "${BIXWEB_UPSTREAM} ${BIXWEB_SERVER_NAME} ${BIXWEB_LISTEN} ${BIXWEB_TLS_CERTIFICATE} "
    "${BIXWEB_TLS_CERTIFICATE_KEY} ${BIXWEB_PACKAGE} ${BIXWEB_PROXY_READ_TIMEOUT}"
)
"""Only these are substituted; nginx's own ``$variables`` in the template stay as they are."""
RENDER_COMMAND = f"envsubst '{ENVSUBST_VARIABLES}' < deploy/nginx/bixweb.conf.template > /etc/nginx/conf.d/bixweb.conf"
"""The README's command, word for word."""
NGINX = os.environ.get("BIXWEB_NGINX", "nginx")


def variable_names() -> list[str]:
    return [word.removeprefix("${").removesuffix("}") for word in ENVSUBST_VARIABLES.split()]


@dataclass(frozen=True)
class Certificates:
    """A server certificate for ``localhost`` and ``127.0.0.1`` and how to trust it."""

    chain: Path
    key: Path
    ssl_context: ssl.SSLContext
    """A client context that trusts the CA (and nothing else)."""
    spki_sha256: str
    """Base64 SHA-256 of the server key's SubjectPublicKeyInfo, for Chromium's
    ``--ignore-certificate-errors-spki-list``."""


def make_certificates(folder: Path) -> Certificates:
    try:
        import trustme
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        require(False, "trustme is not installed: pip install trustme")
        raise
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = folder / "server-chain.pem", folder / "server-key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its name; trusts no system CA
    ca.configure_trust(context)
    leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Certificates(chain, key, context, base64.b64encode(hashlib.sha256(spki).digest()).decode())


def render_site(values: dict[str, str]) -> str:
    """The template through the real ``envsubst``, with exactly ``values`` in its environment."""
    envsubst = shutil.which("envsubst")
    require(envsubst is not None, "no envsubst: apt-get install gettext-base (make test does)")
    assert envsubst is not None
    assert sorted(values) == sorted(variable_names()), "give every template variable a value"
    result = subprocess.run(
        [envsubst, ENVSUBST_VARIABLES],
        input=TEMPLATE.read_text(),
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values},
        check=True,
    )
    return result.stdout


def main_config(folder: Path) -> str:
    """What a distribution's nginx.conf does for the site, with every path inside ``folder``."""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx would run its workers as "nobody", who cannot enter pytest's private tmp directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {folder / "access.log"};
{temp}
    include {folder / "bixweb.conf"};
}}
"""


class NginxProxy:
    """``nginx -g 'daemon off;'`` on a free loopback port, proxying to bixweb on ``upstream_port``."""

    def __init__(self, folder: Path, upstream_port: int, *, proxy_read_timeout: str = "60s") -> None:
        self.folder = folder
        self.upstream_port = upstream_port
        self.proxy_read_timeout = proxy_read_timeout
        self.port = 0
        self.certificates: Certificates | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    @property
    def ssl_context(self) -> ssl.SSLContext:
        assert self.certificates is not None, "start() first"
        return self.certificates.ssl_context

    @property
    def spki_sha256(self) -> str:
        assert self.certificates is not None, "start() first"
        return self.certificates.spki_sha256

    def command(self, *extra: str) -> list[str]:
        return [
            NGINX,
            "-p",
            str(self.folder),
            "-c",
            str(self.folder / "nginx.conf"),
            "-e",
            str(self.folder / "error.log"),
            *extra,
        ]

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10.0) -> NginxProxy:
        require(shutil.which(NGINX) is not None, f"no {NGINX}: apt-get install nginx (make test does)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.certificates = make_certificates(self.folder)
        self.port = free_port()
        site = render_site(
            {
                "BIXWEB_UPSTREAM": f"127.0.0.1:{self.upstream_port}",
                "BIXWEB_SERVER_NAME": "localhost",
                "BIXWEB_LISTEN": f"127.0.0.1:{self.port}",
                "BIXWEB_TLS_CERTIFICATE": str(self.certificates.chain),
                "BIXWEB_TLS_CERTIFICATE_KEY": str(self.certificates.key),
                "BIXWEB_PACKAGE": str(assets.package_dir()),
                "BIXWEB_PROXY_READ_TIMEOUT": self.proxy_read_timeout,
            }
        )
        (self.folder / "bixweb.conf").write_text(site)
        (self.folder / "nginx.conf").write_text(main_config(self.folder))
        check = subprocess.run(self.command("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the rendered template:\n{check.stderr}{self.log()}")
        with (self.folder / "stderr.log").open("wb") as stderr:
            self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stdout=stderr, stderr=stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        stderr_text = (self.folder / "stderr.log").read_text(errors="replace")
        raise RuntimeError(f"nginx did not start on port {self.port}:\n{stderr_text}{self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: open sockets are cut, not waited for
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
