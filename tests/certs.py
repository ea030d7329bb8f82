"""Throwaway certificates for TLS tests (openssl CLI): a CA, a server and a client pair."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.services import EtcdTLS


def make_certs(directory: Path) -> EtcdTLS:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "2",
            "-subj", "/CN=routerctl test CA",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    usages = {
        # etcd's gateway dials etcd with the server certificate, so it needs clientAuth too.
        "server": "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, usage in usages.items():
        extfile = directory / f"{name}.ext"
        extfile.write_text(usage + "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        csr = directory / f"{name}.csr"
        openssl("req", *ec, "-keyout", directory / f"{name}.key", "-out", csr,
                "-subj", f"/CN=routerctl test {name}")  # fmt: skip
        openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
                "-out", directory / f"{name}.crt", "-days", "2", "-extfile", extfile)  # fmt: skip
    return EtcdTLS(
        ca_file=ca_crt, cert_file=directory / "server.crt", key_file=directory / "server.key",
        client_cert_file=directory / "client.crt", client_key_file=directory / "client.key",
    )  # fmt: skip
