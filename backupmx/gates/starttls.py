"""Gate G3's probe: STARTTLS on a backup MX, with certificate verification.

What ``openssl s_client -starttls smtp -connect mail.rollernet.us:25`` shows, as
data: connect on port 25, EHLO, STARTTLS with the certificate verified against the
system's CAs (or a given bundle) *and* the host's name, then report the issuer,
whether the name matches, and the days to expiry. When verification fails, the
certificate is fetched again without verification, only to say what is wrong with
it. The probe never raises: every problem is a field of the result.

A sandbox or a split horizon connects elsewhere (``connect_host:port``) while the
certificate is still checked against ``host``.
"""

from __future__ import annotations

import datetime
import smtplib
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

EXPIRY_WARNING_DAYS = 14
TIMEOUT = 10.0


@dataclass(frozen=True)
class TLSReport:
    host: str
    endpoint: str
    starttls: bool = False  # offered by the server
    verified: bool = False  # chain and name verified
    tls_version: str | None = None
    issuer: str | None = None
    names: tuple[str, ...] = ()
    hostname_match: bool | None = None
    not_after: datetime.datetime | None = None
    days_left: int | None = None
    problem: str | None = None  # why it is not a clean pass, one line

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if not self.starttls:
            return f"{self.host} ({self.endpoint}): {self.problem}"
        parts = [f"{self.tls_version or 'TLS'}", f"issuer {self.issuer or '?'}"]
        if self.hostname_match is not None:
            parts.append("hostname matches" if self.hostname_match else
                         f"hostname does NOT match (certificate names: {', '.join(self.names) or 'none'})")
        if self.days_left is not None:
            expiry = self.not_after.date().isoformat() if self.not_after else "?"
            parts.append(f"expires {expiry} ({self.days_left} days)" if self.days_left >= 0
                         else f"EXPIRED {expiry} ({-self.days_left} days ago)")
        parts.append("verified" if self.verified else f"NOT verified: {self.problem}")
        if self.verified and self.problem:
            parts.append(self.problem)
        return f"{self.host}: " + ", ".join(parts)


def probe(host: str, connect_host: str | None = None, port: int = 25, ca_bundle: str | None = None,
          timeout: float = TIMEOUT, now: datetime.datetime | None = None,
          helo: str = "backupmx-gate.invalid") -> TLSReport:
    """Connect, STARTTLS with verification, and describe the certificate."""
    connect_host = connect_host or host
    endpoint = f"{connect_host}:{port}"
    now = now or datetime.datetime.now(datetime.UTC)
    verifying = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
    try:
        der, version = _starttls(host, connect_host, port, verifying, timeout, helo)
        verified, problem = True, None
    except _NoStartTLS as error:
        return TLSReport(host, endpoint, problem=str(error))
    except ssl.SSLCertVerificationError as error:
        verified, problem = False, _verify_problem(error)
        try:
            der, version = _starttls(host, connect_host, port, _unverified(), timeout, helo)
        except (OSError, smtplib.SMTPException, _NoStartTLS) as again:
            return TLSReport(host, endpoint, starttls=True, problem=f"{problem}; certificate not readable: "
                             f"{_describe(again)}")
    except (OSError, smtplib.SMTPException) as error:
        return TLSReport(host, endpoint, problem=f"cannot talk SMTP to {endpoint}: {_describe(error)}")
    return _report(host, endpoint, der, version, verified, problem, now)


class _NoStartTLS(Exception):
    pass


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _starttls(host: str, connect_host: str, port: int, context: ssl.SSLContext, timeout: float,
              helo: str) -> tuple[bytes, str | None]:
    client = smtplib.SMTP(timeout=timeout, local_hostname=helo)
    try:
        code, message = client.connect(connect_host, port)
        if code != 220:
            raise _NoStartTLS(f"{connect_host}:{port} greeted with {code} {_text(message)}")
        client.ehlo()
        if not client.has_extn("starttls"):
            raise _NoStartTLS(f"{connect_host}:{port} does not offer STARTTLS")
        code, message = client.docmd("STARTTLS")
        if code != 220:
            raise _NoStartTLS(f"STARTTLS refused: {code} {_text(message)}")
        # The certificate is checked against the MX host's name, wherever we connected
        # (smtplib's starttls() would name the server by the address it connected to).
        with context.wrap_socket(client.sock, server_hostname=host) as tls:
            der, version = tls.getpeercert(binary_form=True), tls.version()
            try:
                tls.sendall(b"QUIT\r\n")
            except OSError:
                pass
        return der, version
    finally:
        client.close()


def _text(message: bytes | str) -> str:
    return (message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)).strip()


def _verify_problem(error: ssl.SSLCertVerificationError) -> str:
    reason = getattr(error, "verify_message", None) or str(error)
    return f"certificate verification failed: {reason}"


def _describe(error: Exception) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out (outbound port 25 may be blocked from here)"
    if isinstance(error, socket.gaierror):
        return f"name does not resolve ({error.strerror})"
    return f"{type(error).__name__}: {error}"


def _report(host: str, endpoint: str, der: bytes | None, version: str | None, verified: bool,
            problem: str | None, now: datetime.datetime) -> TLSReport:
    if not der:
        return TLSReport(host, endpoint, starttls=True, tls_version=version, problem=problem or "no certificate")
    cert = x509.load_der_x509_certificate(der)
    issuer = _name(cert.issuer)
    names = _dns_names(cert)
    match = hostname_matches(host, names)
    not_after = cert.not_valid_after_utc
    days_left = (not_after - now).days if not_after >= now else -((now - not_after).days + 1)
    if problem is None and days_left < EXPIRY_WARNING_DAYS:
        problem = f"expires in {days_left} days"
    return TLSReport(host, endpoint, starttls=True, verified=verified, tls_version=version, issuer=issuer,
                     names=tuple(names), hostname_match=match, not_after=not_after, days_left=days_left,
                     problem=problem)


def _name(name: x509.Name) -> str:
    parts = []
    for oid, label in ((NameOID.COMMON_NAME, "CN"), (NameOID.ORGANIZATION_NAME, "O")):
        for attribute in name.get_attributes_for_oid(oid):
            parts.append(f"{label}={attribute.value}")
    return ", ".join(parts) or name.rfc4514_string()


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        return [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        # No SAN: clients fall back to nothing today (RFC 6125); show the CN for the report.
        return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def hostname_matches(host: str, names: list[str] | tuple[str, ...]) -> bool:
    """RFC 6125 matching: exact, or ``*.`` standing for exactly one leftmost label."""
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        label, _, rest = host.partition(".")
        if name.startswith("*.") and label and rest and rest == name[2:]:
            return True
    return False
